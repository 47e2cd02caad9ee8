package middleware

import (
	"context"
	"errors"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/poison"
)

// The watermill-kafka subscriber puts partition and offset in the message
// context under unexported keys, so these tests carry them in metadata and
// replace CrashLoopGuard.originOf, and call the guarded handler directly (one
// goroutine per delivery, so a handler can "crash" with runtime.Goexit).

const (
	guardPartitionKey = "test.partition"
	guardOffsetKey    = "test.offset"
)

func guardKafkaMsg(partition int32, offset int64) *message.Message {
	msg := message.NewMessage(watermill.NewUUID(), []byte(strconv.FormatInt(offset, 10)))
	msg.Metadata.Set(guardPartitionKey, strconv.FormatInt(int64(partition), 10))
	msg.Metadata.Set(guardOffsetKey, strconv.FormatInt(offset, 10))
	return msg
}

func guardKafkaOrigin(msg *message.Message) poison.Origin {
	p, _ := strconv.ParseInt(msg.Metadata.Get(guardPartitionKey), 10, 32)
	off, _ := strconv.ParseInt(msg.Metadata.Get(guardOffsetKey), 10, 64)
	return poison.Origin{Topic: guardTopic, Handler: guardHandler, Partition: int32(p), Offset: off, HasOffset: true}
}

func guardOffsetOf(msg *message.Message) int64 {
	off, _ := strconv.ParseInt(msg.Metadata.Get(guardOffsetKey), 10, 64)
	return off
}

// guardCountingTracker records what reaches the store.
type guardCountingTracker struct {
	poison.DeliveryTracker
	fail bool

	mu      sync.Mutex
	incrs   []string
	forgets int
}

func (c *guardCountingTracker) Incr(ctx context.Context, key string) (int, error) {
	c.mu.Lock()
	c.incrs = append(c.incrs, key)
	fail := c.fail
	c.mu.Unlock()
	if fail {
		return 0, errors.New("store down")
	}
	return c.DeliveryTracker.Incr(ctx, key)
}

func (c *guardCountingTracker) Forget(ctx context.Context, key string) error {
	c.mu.Lock()
	c.forgets++
	c.mu.Unlock()
	return c.DeliveryTracker.Forget(ctx, key)
}

// messageIncrs counts Incr calls for messages (not block leases), per
// offset.
func (c *guardCountingTracker) messageIncrs() map[int64]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[int64]int{}
	for _, k := range c.incrs {
		if !strings.HasPrefix(k, "kafka/") {
			continue
		}
		off, _ := strconv.ParseInt(strings.Split(k, "/")[3], 10, 64)
		out[off]++
	}
	return out
}

func (c *guardCountingTracker) leaseIncrs() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, k := range c.incrs {
		if strings.HasPrefix(k, "kafka-block/") {
			n++
		}
	}
	return n
}

func newGuardCountingTracker() *guardCountingTracker {
	return &guardCountingTracker{DeliveryTracker: poison.MustNewMemoryDeliveryTracker(poison.MemoryDeliveryTrackerConfig{})}
}

// guardProcess is one life of a Kafka consumer process.
type guardProcess struct {
	d  *CrashLoopGuard
	mu sync.Mutex
	// quarantined offsets, with the failure sent to the DLQ
	letters map[int64]poison.Failure
}

func newGuardProcess(t *testing.T, tracker poison.DeliveryTracker, cfg CrashLoopGuardConfig) *guardProcess {
	t.Helper()
	cfg.Tracker = tracker
	cfg.DeadLetter = &DeadLetter{}
	d, err := NewCrashLoopGuard(cfg)
	require.NoError(t, err)
	p := &guardProcess{d: d, letters: map[int64]poison.Failure{}}
	d.originOf = guardKafkaOrigin
	d.send = func(_ context.Context, msg *message.Message, f poison.Failure) error {
		p.mu.Lock()
		defer p.mu.Unlock()
		p.letters[guardOffsetOf(msg)] = f
		return nil
	}
	return p
}

// deliver runs one delivery through the guard; returned is false when the
// handler "crashed" (never returned).
func (p *guardProcess) deliver(h message.HandlerFunc, msg *message.Message) (returned bool, err error) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, err = p.d.Middleware(h)(msg)
		returned = true
	}()
	<-done
	return returned, err
}

func guardNoop(*message.Message) ([]*message.Message, error) { return nil, nil }

func TestCrashLoopGuardCheapPathSteadyState(t *testing.T) {
	tracker := newGuardCountingTracker()
	p := newGuardProcess(t, tracker, CrashLoopGuardConfig{})
	for off := int64(0); off < 2500; off++ {
		_, err := p.d.Middleware(guardNoop)(guardKafkaMsg(0, off))
		require.NoError(t, err)
	}
	for off := int64(0); off < 1000; off++ {
		_, err := p.d.Middleware(guardNoop)(guardKafkaMsg(1, off))
		require.NoError(t, err)
	}
	assert.Empty(t, tracker.messageIncrs(), "no first delivery is counted")
	assert.Equal(t, 3+1, tracker.leaseIncrs(), "one lease per 1000-offset block per partition")
	assert.Equal(t, 0, tracker.forgets)
}

// The scenario the cheap path must survive: the consumer dies on offset
// 1500 while the last commit (sarama commits asynchronously) is at 1200, so
// after every restart the crash record is the 301st delivery, not the first.
func TestCrashLoopGuardCheapPathCrashLoopWithCommitLag(t *testing.T) {
	const (
		crashAt       = 1500
		commitEvery   = 400
		logEnd        = 3000
		maxDeliveries = 3
	)
	tracker := newGuardCountingTracker()
	processed := map[int64]int{}
	crashRuns := 0
	handler := func(msg *message.Message) ([]*message.Message, error) {
		off := guardOffsetOf(msg)
		if off == crashAt {
			crashRuns++
			runtime.Goexit() // os.Exit, as far as the guard can tell
		}
		processed[off]++
		return nil, nil
	}

	committed := int64(0)
	lives := 0
	var letters map[int64]poison.Failure
	for finished := false; !finished; {
		lives++
		require.LessOrEqual(t, lives, maxDeliveries+2, "the crash loop did not end")
		p := newGuardProcess(t, tracker, CrashLoopGuardConfig{MaxDeliveries: maxDeliveries})
		finished = true
		for off := committed; off < logEnd; off++ {
			returned, err := p.deliver(handler, guardKafkaMsg(0, off))
			if !returned {
				finished = false // the process died; commits since `committed` are lost
				break
			}
			require.NoError(t, err)
			if (off+1)%commitEvery == 0 {
				committed = off + 1
			}
		}
		letters = p.letters
	}

	require.Contains(t, letters, int64(crashAt))
	f := letters[crashAt]
	assert.Equal(t, poison.ReasonCrashLoop, f.Reason)
	assert.ErrorIs(t, f.Err, ErrCrashLoop)
	assert.Equal(t, maxDeliveries+1, f.Attempts)
	// The first crash happened in a clean block, uncounted: one run more
	// than MaxDeliveries, never unbounded.
	assert.Equal(t, maxDeliveries+1, crashRuns)
	assert.Len(t, letters, 1, "nothing else is quarantined")
	for off := int64(0); off < logEnd; off++ {
		if off != crashAt {
			assert.GreaterOrEqual(t, processed[off], 1, "offset %d never processed", off)
		}
	}
	// Only what was replayed after a restart is counted: 1200..1999 (the
	// tainted blocks' remainder and the crash record), in the lives after the first.
	counted := tracker.messageIncrs()
	for off := range counted {
		assert.True(t, off >= 1200 && off < 2000, "offset %d counted needlessly", off)
	}
}

func TestCrashLoopGuardCheapPathAlwaysCount(t *testing.T) {
	tracker := newGuardCountingTracker()
	p := newGuardProcess(t, tracker, CrashLoopGuardConfig{AlwaysCount: true})
	for off := int64(0); off < 10; off++ {
		_, err := p.d.Middleware(guardNoop)(guardKafkaMsg(0, off))
		require.NoError(t, err)
	}
	assert.Len(t, tracker.messageIncrs(), 10)
	assert.Equal(t, 0, tracker.leaseIncrs(), "no leases needed")
	assert.Equal(t, 10, tracker.forgets)
}

func TestCrashLoopGuardCheapPathInProcessRedelivery(t *testing.T) {
	tracker := newGuardCountingTracker()
	p := newGuardProcess(t, tracker, CrashLoopGuardConfig{})
	failOnce := true
	h := func(msg *message.Message) ([]*message.Message, error) {
		if guardOffsetOf(msg) == 5 && failOnce {
			failOnce = false
			return nil, errors.New("nack me")
		}
		return nil, nil
	}
	for _, off := range []int64{0, 1, 2, 3, 4, 5, 5, 6, 7} { // 5 nacked, redelivered
		_, _ = p.d.Middleware(h)(guardKafkaMsg(0, off))
	}
	assert.Equal(t, map[int64]int{5: 1}, tracker.messageIncrs(), "only the redelivery is counted")
}

func TestCrashLoopGuardCheapPathRebalance(t *testing.T) {
	const poisonAt = 70
	crash := func(msg *message.Message) ([]*message.Message, error) {
		if guardOffsetOf(msg) == poisonAt {
			runtime.Goexit()
		}
		return nil, nil
	}

	t.Run("partition regained behind what this process saw", func(t *testing.T) {
		tracker := newGuardCountingTracker()
		a := newGuardProcess(t, tracker, CrashLoopGuardConfig{})
		for off := int64(0); off < 69; off++ { // A runs 0..68, commits 50, loses the partition
			_, err := a.d.Middleware(guardNoop)(guardKafkaMsg(0, off))
			require.NoError(t, err)
		}
		b := newGuardProcess(t, tracker, CrashLoopGuardConfig{})
		for off := int64(50); off <= poisonAt; off++ { // B replays 50.., dies on 70
			if returned, _ := b.deliver(crash, guardKafkaMsg(0, off)); !returned {
				break
			}
		}
		assert.Equal(t, 1, tracker.messageIncrs()[poisonAt], "B counted it (tainted block)")
		// A gets the partition back at B's commit, 60 <= 68: counted.
		for off := int64(60); off <= poisonAt; off++ {
			if returned, _ := a.deliver(crash, guardKafkaMsg(0, off)); !returned {
				break
			}
		}
		assert.Equal(t, 2, tracker.messageIncrs()[poisonAt])
	})

	t.Run("partition regained after a gap", func(t *testing.T) {
		tracker := newGuardCountingTracker()
		a := newGuardProcess(t, tracker, CrashLoopGuardConfig{})
		for off := int64(0); off < 40; off++ { // A: 0..39, loses the partition
			_, err := a.d.Middleware(guardNoop)(guardKafkaMsg(0, off))
			require.NoError(t, err)
		}
		b := newGuardProcess(t, tracker, CrashLoopGuardConfig{})
		for off := int64(40); off <= poisonAt; off++ { // B: 40.., dies on 70, committed 60
			if returned, _ := b.deliver(crash, guardKafkaMsg(0, off)); !returned {
				break
			}
		}
		byB := tracker.messageIncrs()
		// A resumes at 60: not its next offset (40), so it re-takes the
		// lease and sees that B entered the block.
		for off := int64(60); off <= poisonAt; off++ {
			if returned, _ := a.deliver(crash, guardKafkaMsg(0, off)); !returned {
				break
			}
		}
		all := tracker.messageIncrs()
		assert.Equal(t, 1, all[poisonAt]-byB[poisonAt], "A counted the crash record")
		assert.Equal(t, 1, all[60]-byB[60], "and the rest of the tainted block")
	})
}

func TestCrashLoopGuardCheapPathBrokerSaysRedelivered(t *testing.T) {
	tracker := newGuardCountingTracker()
	p := newGuardProcess(t, tracker, CrashLoopGuardConfig{})
	msg := guardKafkaMsg(0, 0)
	msg.Metadata.Set("x-delivery-count", "2")
	_, err := p.d.Middleware(guardNoop)(msg)
	require.NoError(t, err)
	assert.Equal(t, 1, tracker.messageIncrs()[0], "counted although its block is clean")
}

func TestBrokerSaysRedelivered(t *testing.T) {
	m := func(k, v string) *message.Message {
		msg := message.NewMessage("u", nil)
		if k != "" {
			msg.Metadata.Set(k, v)
		}
		return msg
	}
	assert.False(t, BrokerSaysRedelivered(m("", "")))
	assert.True(t, BrokerSaysRedelivered(m("_watermill_amqp_redelivered", "true")))
	assert.False(t, BrokerSaysRedelivered(m("_watermill_amqp_redelivered", "false")))
	assert.True(t, BrokerSaysRedelivered(m("x-delivery-count", "1")))
	assert.False(t, BrokerSaysRedelivered(m("x-delivery-count", "0")))
	assert.False(t, BrokerSaysRedelivered(m("x-delivery-count", "junk")))
}

func TestCrashLoopGuardCustomMayBeRedelivery(t *testing.T) {
	tracker := newGuardCountingTracker()
	p := newGuardProcess(t, tracker, CrashLoopGuardConfig{MayBeRedelivery: BrokerSaysRedelivered})
	// Without a Kafka offset the default would count everything; the AMQP
	// flag is enough here.
	p.d.originOf = func(*message.Message) poison.Origin { return poison.Origin{Topic: guardTopic, Handler: guardHandler} }
	first := message.NewMessage("u1", nil)
	again := message.NewMessage("u2", nil)
	again.Metadata.Set("_watermill_amqp_redelivered", "true")
	for _, msg := range []*message.Message{first, again} {
		_, err := p.d.Middleware(guardNoop)(msg)
		require.NoError(t, err)
	}
	require.Len(t, tracker.incrs, 1)
	assert.Contains(t, tracker.incrs[0], "u2")
}

func TestCrashLoopGuardStoreDownRunsHandler(t *testing.T) {
	for _, kafka := range []bool{false, true} {
		t.Run("kafka="+strconv.FormatBool(kafka), func(t *testing.T) {
			tracker := newGuardCountingTracker()
			tracker.fail = true
			p := newGuardProcess(t, tracker, CrashLoopGuardConfig{})
			if !kafka {
				p.d.originOf = func(*message.Message) poison.Origin { return poison.Origin{Topic: guardTopic} }
			}
			ran := 0
			_, err := p.d.Middleware(func(*message.Message) ([]*message.Message, error) {
				ran++
				return nil, nil
			})(guardKafkaMsg(0, 0))
			require.NoError(t, err, "a store outage does not stop a healthy consumer")
			assert.Equal(t, 1, ran)
			assert.NotEmpty(t, tracker.incrs)
		})
	}
}

func TestCrashLoopGuardConfigValidate(t *testing.T) {
	tracker := poison.MustNewMemoryDeliveryTracker(poison.MemoryDeliveryTrackerConfig{})
	dl := &DeadLetter{}
	cases := []struct {
		cfg  CrashLoopGuardConfig
		want string
	}{
		{CrashLoopGuardConfig{DeadLetter: dl}, "Tracker"},
		{CrashLoopGuardConfig{Tracker: tracker}, "DeadLetter"},
		{CrashLoopGuardConfig{Tracker: tracker, DeadLetter: dl, MaxDeliveries: -1}, "MaxDeliveries"},
		{CrashLoopGuardConfig{Tracker: tracker, DeadLetter: dl, OffsetBlock: -1}, "OffsetBlock"},
		{CrashLoopGuardConfig{Tracker: tracker, DeadLetter: dl, AlwaysCount: true, MayBeRedelivery: BrokerSaysRedelivered}, "AlwaysCount"},
	}
	for _, c := range cases {
		_, err := NewCrashLoopGuard(c.cfg)
		if assert.Error(t, err) {
			assert.Contains(t, err.Error(), c.want)
		}
	}
	d, err := NewCrashLoopGuard(CrashLoopGuardConfig{Tracker: tracker, DeadLetter: dl})
	require.NoError(t, err)
	assert.Equal(t, DefaultMaxDeliveries, d.cfg.MaxDeliveries)
	assert.Equal(t, int64(DefaultOffsetBlock), d.cfg.OffsetBlock)
}

// guardClaimMsg is guardKafkaMsg delivered by a key-ordered subscriber:
// its context names the partition claim.
func guardClaimMsg(partition int32, offset int64, claim uint64, redelivered bool) *message.Message {
	msg := guardKafkaMsg(partition, offset)
	msg.SetContext(antidote.WithClaimPosition(context.Background(), partition, offset, claim, redelivered))
	return msg
}

// With kafka.concurrency above 1 the handlers of a partition start out of
// offset order. The claim path keeps the cheap path: one lease per block
// per claim, no message counted, whatever the order; a resend after a
// nack is counted.
func TestCrashLoopGuardClaimPathOutOfOrder(t *testing.T) {
	tracker := newGuardCountingTracker()
	p := newGuardProcess(t, tracker, CrashLoopGuardConfig{})
	offsets := make([]int64, 2500)
	for i := range offsets {
		offsets[i] = int64(i)
	}
	// Shuffle within windows of 64, as 64 messages in flight would.
	for i := 0; i+64 <= len(offsets); i += 64 {
		w := offsets[i : i+64]
		for j := range w {
			k := (j*37 + 11) % len(w)
			w[j], w[k] = w[k], w[j]
		}
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for _, off := range offsets {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			_, err := p.d.Middleware(guardNoop)(guardClaimMsg(0, off, 1, false))
			assert.NoError(t, err)
		}()
	}
	wg.Wait()
	assert.Empty(t, tracker.messageIncrs(), "no first delivery is counted")
	assert.Equal(t, 3, tracker.leaseIncrs(), "one lease per 1000-offset block")

	// A nack's resend is counted.
	_, err := p.d.Middleware(guardNoop)(guardClaimMsg(0, 2400, 1, true))
	require.NoError(t, err)
	assert.Equal(t, map[int64]int{2400: 1}, tracker.messageIncrs())

	// The partition regained in a new claim by the same process, nobody
	// else in between: the block is leased again, and still clean.
	_, err = p.d.Middleware(guardNoop)(guardClaimMsg(0, 2450, 2, false))
	require.NoError(t, err)
	assert.Equal(t, 4, tracker.leaseIncrs())
	assert.Equal(t, map[int64]int{2400: 1}, tracker.messageIncrs(), "own earlier lease is not a taint")
}

// After a crash the next process finds the crashed one's lease: every
// message of that block is counted, in any order, so a crash loop on one
// of them ends in quarantine. Another process entering a block between
// two claims of this one taints it too.
func TestCrashLoopGuardClaimPathTainted(t *testing.T) {
	tracker := newGuardCountingTracker()
	crashed := newGuardProcess(t, tracker, CrashLoopGuardConfig{})
	_, err := crashed.d.Middleware(guardNoop)(guardClaimMsg(0, 10, 1, false))
	require.NoError(t, err)

	next := newGuardProcess(t, tracker, CrashLoopGuardConfig{})
	for _, off := range []int64{12, 10, 11} {
		_, err := next.d.Middleware(guardNoop)(guardClaimMsg(0, off, 5, false))
		require.NoError(t, err)
	}
	assert.Equal(t, map[int64]int{10: 1, 11: 1, 12: 1}, tracker.messageIncrs(), "the crashed process's block is tainted")

	// next leases block 1 cleanly, loses the partition to crashed (which
	// enters the block), and gets it back: tainted.
	_, err = next.d.Middleware(guardNoop)(guardClaimMsg(0, 1000, 5, false))
	require.NoError(t, err)
	_, err = crashed.d.Middleware(guardNoop)(guardClaimMsg(0, 1001, 2, false))
	require.NoError(t, err)
	_, err = next.d.Middleware(guardNoop)(guardClaimMsg(0, 1002, 6, false))
	require.NoError(t, err)
	incrs := tracker.messageIncrs()
	assert.Equal(t, 0, incrs[1000], "first entry of a clean block")
	assert.Equal(t, 1, incrs[1001], "crashed process found next's lease")
	assert.Equal(t, 1, incrs[1002], "another process entered the block between two claims")
}
