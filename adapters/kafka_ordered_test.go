package adapters_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/tests"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/poison"
	"github.com/antidote-mq/antidote/router"
)

// The key-ordered subscriber (kafka.concurrency above 1) against
// Watermill's universal suite.
func TestPubSubKafkaConcurrent(t *testing.T) {
	cfg := func(t *testing.T, group string) adapters.Config {
		c := kafkaConfig(t, group)
		c.Kafka.Concurrency = 8
		return c
	}
	tests.TestPubSub(t, tests.Features{
		ConsumerGroups:      true,
		ExactlyOnceDelivery: false,
		GuaranteedOrder:     false,
		Persistent:          true,
		ForceShort:          !fullSuite(),
	}, func(t *testing.T) (message.Publisher, message.Subscriber) {
		return openForSuite(t, cfg(t, "suite-concurrent"))
	}, func(t *testing.T, group string) (message.Publisher, message.Subscriber) {
		return openForSuite(t, cfg(t, group))
	})
}

func openConcurrent(t *testing.T, group string, concurrency int, ordering string, tweak ...func(*adapters.KafkaConfig)) *adapters.Broker {
	t.Helper()
	cfg := kafkaConfig(t, group)
	cfg.Kafka.Concurrency = concurrency
	cfg.Kafka.Ordering = ordering
	cfg.Kafka.NackResendSleep = time.Millisecond
	for _, f := range tweak {
		f(&cfg.Kafka)
	}
	b, err := adapters.Open(context.Background(), cfg, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// publishKeyed publishes n messages spread round-robin over keys record
// keys ("k0".."k<keys-1>"; keys 0: no key), payload "key/seq" with seq
// counting from 1 per key, and returns how many each key got.
func publishKeyed(t *testing.T, pub message.Publisher, topic string, n, keys int) map[string]int {
	t.Helper()
	per := map[string]int{}
	var batch []*message.Message
	for i := range n {
		key := ""
		if keys > 0 {
			key = "k" + strconv.Itoa(i%keys)
		}
		per[key]++
		m := message.NewMessage(watermill.NewUUID(), []byte(key+"/"+strconv.Itoa(per[key])))
		if key != "" {
			m.Metadata.Set("partition_key", key)
		}
		batch = append(batch, m)
		if len(batch) == 200 {
			if err := pub.Publish(topic, batch...); err != nil {
				t.Fatal(err)
			}
			batch = nil
		}
	}
	if len(batch) > 0 {
		if err := pub.Publish(topic, batch...); err != nil {
			t.Fatal(err)
		}
	}
	return per
}

// pos is a record's place: partition and offset.
type pos struct {
	p int32
	o int64
}

func keySeq(m *message.Message) (string, int) {
	key, seq, _ := strings.Cut(string(m.Payload), "/")
	n, _ := strconv.Atoi(seq)
	return key, n
}

// orderCheck counts, per key, messages handled before an earlier one of
// their key was done (violations: skipping ahead) and messages of a key
// handled while another of the key was (overlaps). A message handled again
// (seq not above the highest done) is a redelivery, allowed.
type orderCheck struct {
	mu                   sync.Mutex
	done                 map[string]int // highest seq done per key
	busy                 map[string]int
	acked                map[string]bool // key/seq
	violations, overlaps int
	inflight, peak       int
	partInflight         map[int32]int
	peakPart             int
	ordered              bool // keyless messages are not checked when false
}

func newOrderCheck() *orderCheck {
	return &orderCheck{done: map[string]int{}, busy: map[string]int{}, acked: map[string]bool{}, partInflight: map[int32]int{}}
}

func (c *orderCheck) start(m *message.Message) {
	key, seq := keySeq(m)
	p, _, _ := antidote.PositionFromCtx(m.Context())
	c.mu.Lock()
	defer c.mu.Unlock()
	c.inflight++
	c.peak = max(c.peak, c.inflight)
	c.partInflight[p]++
	c.peakPart = max(c.peakPart, c.partInflight[p])
	if key == "" && !c.ordered {
		return
	}
	if c.busy[key] > 0 {
		c.overlaps++
	}
	c.busy[key]++
	if seq > c.done[key]+1 {
		c.violations++
	}
}

func (c *orderCheck) finish(m *message.Message, acked bool) {
	key, seq := keySeq(m)
	p, _, _ := antidote.PositionFromCtx(m.Context())
	c.mu.Lock()
	defer c.mu.Unlock()
	c.inflight--
	c.partInflight[p]--
	if acked {
		c.acked[string(m.Payload)] = true
	}
	if key == "" && !c.ordered {
		return
	}
	c.busy[key]--
	if acked && seq > c.done[key] {
		c.done[key] = seq
	}
}

func (c *orderCheck) ackedCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.acked)
}

// consume handles every message of ch in a goroutine of its own, as
// Watermill's router does: handle returns whether to ack (else nack).
func consume(ctx context.Context, ch <-chan *message.Message, c *orderCheck, handle func(*message.Message) bool) *sync.WaitGroup {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for m := range ch {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.start(m)
				ok := handle(m)
				c.finish(m, ok)
				if ok {
					m.Ack()
				} else {
					m.Nack()
				}
			}()
		}
	}()
	return &wg
}

func waitFor(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func randomDelay() time.Duration { return time.Duration(rand.IntN(2000)) * time.Microsecond }

// Messages of a key never run concurrently nor out of order, while
// messages of different keys of one partition do run concurrently (up to
// kafka.concurrency, never more).
func TestKafkaConcurrentKeyOrder(t *testing.T) {
	const n, keys, conc = 3000, 40, 8
	b := openConcurrent(t, "order-"+watermill.NewShortUUID(), conc, adapters.KafkaOrderingKey)
	topic := "order_" + watermill.NewShortUUID()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	ch, err := b.Subscriber.Subscribe(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	publishKeyed(t, b.Publisher, topic, n, keys)
	c := newOrderCheck()
	wg := consume(ctx, ch, c, func(*message.Message) bool { time.Sleep(randomDelay()); return true })
	waitFor(t, ctx, "every message acked", func() bool { return c.ackedCount() == n })
	cancel()
	wg.Wait()
	if c.violations != 0 || c.overlaps != 0 {
		t.Fatalf("%d order violations, %d messages of a key handled concurrently", c.violations, c.overlaps)
	}
	if c.peakPart > conc {
		t.Fatalf("%d messages of one partition in flight; kafka.concurrency is %d", c.peakPart, conc)
	}
	if c.peakPart < 2 {
		t.Fatalf("at most %d message of a partition in flight: not concurrent", c.peakPart)
	}
	t.Logf("peak in flight: %d per partition, %d in all", c.peakPart, c.peak)
}

// ordering: partition runs one message per partition at a time; unordered
// runs messages of one key concurrently.
func TestKafkaConcurrentOrderings(t *testing.T) {
	for _, tc := range []struct {
		ordering string
		keys     int
	}{{adapters.KafkaOrderingPartition, 0}, {adapters.KafkaOrderingUnordered, 1}} {
		t.Run(tc.ordering, func(t *testing.T) {
			const n, conc = 400, 8
			b := openConcurrent(t, "orderings-"+watermill.NewShortUUID(), conc, tc.ordering)
			topic := "orderings_" + watermill.NewShortUUID()
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			ch, err := b.Subscriber.Subscribe(ctx, topic)
			if err != nil {
				t.Fatal(err)
			}
			publishKeyed(t, b.Publisher, topic, n, tc.keys)
			c := newOrderCheck()
			wg := consume(ctx, ch, c, func(*message.Message) bool { time.Sleep(randomDelay()); return true })
			waitFor(t, ctx, "every message acked", func() bool { return c.ackedCount() == n })
			cancel()
			wg.Wait()
			switch tc.ordering {
			case adapters.KafkaOrderingPartition:
				if c.peakPart != 1 {
					t.Fatalf("ordering partition: %d messages of one partition in flight", c.peakPart)
				}
			case adapters.KafkaOrderingUnordered:
				if c.overlaps == 0 {
					t.Fatal("ordering unordered: messages of the one key never ran concurrently")
				}
				if c.peakPart > conc {
					t.Fatalf("%d messages of one partition in flight; kafka.concurrency is %d", c.peakPart, conc)
				}
			}
		})
	}
}

// The committed offset of a partition is its lowest offset not acked: a
// consumer closed while holding some messages unacked leaves them, and
// nothing below them, to the next.
func TestKafkaConcurrentCommitsLowestUnacked(t *testing.T) {
	const n = 400
	group := "lowest-" + watermill.NewShortUUID()
	topic := "lowest_" + watermill.NewShortUUID()
	a := openConcurrent(t, group, 8, adapters.KafkaOrderingKey)
	publishKeyed(t, a.Publisher, topic, n, n) // every message its own key
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	ch, err := a.Subscriber.Subscribe(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	acked := map[pos]bool{}
	held := map[pos]*message.Message{}
	for len(acked) < n/4 {
		var m *message.Message
		select {
		case m = <-ch:
		case <-ctx.Done():
			t.Fatalf("first consumer: %d acked", len(acked))
		}
		p, o, ok := antidote.PositionFromCtx(m.Context())
		if !ok {
			t.Fatal("no position")
		}
		if _, seq := keySeq(m); seq == 1 && len(held) < 4 && o%5 == 2 {
			held[pos{p, o}] = m // nacked while closing
			continue
		}
		acked[pos{p, o}] = true
		m.Ack()
	}
	if len(held) == 0 {
		t.Fatal("held nothing back")
	}
	// Close waits for the messages in flight (bounded): the held ones
	// fail while it waits, as a handler's would on shutdown.
	closed := make(chan error, 1)
	go func() { closed <- a.Close() }()
	for _, m := range held {
		m.Nack()
	}
	if err := <-closed; err != nil {
		t.Fatal(err)
	}

	// The first offset of each partition the first consumer did not ack:
	// where the second must start.
	gap := map[int32]int64{}
	for p := range int32(4) {
		o := int64(0)
		for acked[pos{p, o}] {
			o++
		}
		gap[p] = o
	}
	b := openConcurrent(t, group, 8, adapters.KafkaOrderingKey)
	ch2, err := b.Subscriber.Subscribe(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	first := map[int32]int64{}
	got := map[pos]bool{}
	redone := 0
	for len(got)+len(acked)-redone < n {
		var m *message.Message
		select {
		case m = <-ch2:
		case <-ctx.Done():
			t.Fatalf("second consumer: %d messages, %d acked by the first, %d of those again", len(got), len(acked), redone)
		}
		p, o, _ := antidote.PositionFromCtx(m.Context())
		if f, ok := first[p]; !ok || o < f {
			first[p] = o
		}
		if !got[pos{p, o}] && acked[pos{p, o}] {
			redone++
		}
		got[pos{p, o}] = true
		m.Ack()
	}
	for h := range held {
		if !got[h] {
			t.Errorf("held message %d/%d not redelivered", h.p, h.o)
		}
	}
	// Exactly at the first unacked offset: past it would skip a message,
	// before it would mean an ack given before Close was not committed.
	for p, f := range first {
		if f != gap[p] {
			t.Errorf("partition %d: second consumer started at %d, want the first unacked offset %d", p, f, gap[p])
		}
	}
	t.Logf("first consumer acked %d and held %d; second redelivered %d already acked (above a gap)", len(acked), len(held), redone)
}

// Close waits for the handlers in flight: messages acked after Close was
// called are committed and not consumed again; the first unacked one is
// where the next consumer starts.
func TestKafkaConcurrentCloseCommitsWhatFinishes(t *testing.T) {
	const n, inHand = 200, 16
	group := "close-" + watermill.NewShortUUID()
	topic := "close_" + watermill.NewShortUUID()
	a := openConcurrent(t, group, 8, adapters.KafkaOrderingKey)
	publishKeyed(t, a.Publisher, topic, n, n)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	ch, err := a.Subscriber.Subscribe(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	var hand []*message.Message
	for len(hand) < inHand {
		select {
		case m := <-ch:
			hand = append(hand, m)
		case <-ctx.Done():
			t.Fatalf("got %d of %d messages", len(hand), inHand)
		}
	}
	closed := make(chan error, 1)
	go func() { closed <- a.Close() }()
	// The handlers finish while Close waits.
	time.Sleep(200 * time.Millisecond)
	acked := map[pos]bool{}
	for _, m := range hand {
		p, o, _ := antidote.PositionFromCtx(m.Context())
		acked[pos{p, o}] = true
		m.Ack()
	}
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	for range ch { // closed by Close; nothing more handed out
	}

	b := openConcurrent(t, group, 8, adapters.KafkaOrderingKey)
	ch2, err := b.Subscriber.Subscribe(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	first := map[int32]int64{}
	got := map[pos]bool{}
	again := 0
	for len(got)-again < n-len(acked) {
		var m *message.Message
		select {
		case m = <-ch2:
		case <-ctx.Done():
			t.Fatalf("second consumer: %d of %d messages", len(got), n-len(acked))
		}
		p, o, _ := antidote.PositionFromCtx(m.Context())
		if f, ok := first[p]; !ok || o < f {
			first[p] = o
		}
		if acked[pos{p, o}] && !got[pos{p, o}] {
			again++
		}
		got[pos{p, o}] = true
		m.Ack()
	}
	for p, f := range first {
		o := int64(0)
		for acked[pos{p, o}] {
			o++
		}
		if f != o {
			t.Errorf("partition %d: second consumer started at %d, want %d (the first offset not acked during Close)", p, f, o)
		}
	}
	t.Logf("acked %d during Close; the second consumer handled %d, %d of them acked above a gap", len(acked), len(got), again)
}

// A message nacked again and again holds back its key only: every message
// of the other keys is handled meanwhile, and the later messages of its key
// wait for it.
func TestKafkaConcurrentNackBlocksOnlyItsKey(t *testing.T) {
	const n, keys = 400, 20
	b := openConcurrent(t, "nack-"+watermill.NewShortUUID(), 4, adapters.KafkaOrderingKey)
	topic := "nack_" + watermill.NewShortUUID()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	ch, err := b.Subscriber.Subscribe(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	per := publishKeyed(t, b.Publisher, topic, n, keys)
	others := n - per["k0"]
	c := newOrderCheck()
	var mu sync.Mutex
	nacks, othersDone := 0, 0
	wg := consume(ctx, ch, c, func(m *message.Message) bool {
		key, seq := keySeq(m)
		mu.Lock()
		defer mu.Unlock()
		if key == "k0" && seq == 1 && othersDone < others {
			nacks++
			return false
		}
		if key != "k0" {
			othersDone++
		} else if othersDone < others {
			t.Errorf("k0/%d handled while k0/1 was not done", seq)
		}
		return true
	})
	waitFor(t, ctx, "every message acked", func() bool { return c.ackedCount() == n })
	cancel()
	wg.Wait()
	if nacks == 0 {
		t.Fatal("k0/1 was never nacked")
	}
	if c.violations != 0 || c.overlaps != 0 {
		t.Fatalf("%d order violations, %d overlaps", c.violations, c.overlaps)
	}
	t.Logf("k0/1 nacked %d times while %d messages of other keys were handled", nacks, others)
}

// Through the router: a poison message is dead-lettered without holding
// back other keys, and the next message of its key runs after it.
func TestKafkaConcurrentPoisonDeadLettered(t *testing.T) {
	testenv.Integration(t)
	const n, keys = 300, 10
	b := openConcurrent(t, "poison-"+watermill.NewShortUUID(), 8, adapters.KafkaOrderingKey)
	topic := "poison_" + watermill.NewShortUUID()
	rt, err := router.New(router.Config{
		CrashLoopGuard: middleware.CrashLoopGuardConfig{Tracker: poison.MustNewMemoryDeliveryTracker(poison.MemoryDeliveryTrackerConfig{})},
		CloseTimeout:   5 * time.Second,
		DisableTracing: true, DisableMetrics: true,
		Retry:      middleware.RetryConfig{MaxAttempts: 2, InitialInterval: time.Millisecond},
		DeadLetter: middleware.DeadLetterConfig{Publisher: b.Publisher},
	})
	if err != nil {
		t.Fatal(err)
	}
	c := newOrderCheck()
	rt.AddConsumerHandler("h", topic, b.Subscriber, func(m *message.Message) error {
		c.start(m)
		key, seq := keySeq(m)
		if key == "k3" && seq == 2 {
			c.finish(m, true) // dead-lettered counts as done for the order
			return poison.Permanent(errors.New("cannot parse"))
		}
		time.Sleep(randomDelay())
		c.finish(m, true)
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- rt.Run(ctx) }()
	defer func() { cancel(); <-runDone }()
	<-rt.Running()
	publishKeyed(t, b.Publisher, topic, n, keys)
	letters := receive(t, b, antidote.DLQTopic(topic), 1)
	if got := string(letters[0].Payload); !strings.Contains(got, "k3/2") {
		t.Fatalf("letter payload %q, want the poison message k3/2", got)
	}
	wctx, wcancel := context.WithTimeout(t.Context(), time.Minute)
	defer wcancel()
	waitFor(t, wctx, "every message handled", func() bool { return c.ackedCount() == n })
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.violations != 0 || c.overlaps != 0 {
		t.Fatalf("%d order violations, %d overlaps", c.violations, c.overlaps)
	}
}

// Two consumers of one group: the second joining makes the first give up
// partitions mid-run. Every message is handled, per-key order holds
// (redeliveries replay, never skip), and no key runs on both at once.
func TestKafkaConcurrentRebalance(t *testing.T) {
	testenv.Integration(t)
	const n, keys = 3000, 50
	group := "rebalance-" + watermill.NewShortUUID()
	topic := "rebalance_" + watermill.NewShortUUID()
	a := openConcurrent(t, group, 8, adapters.KafkaOrderingKey)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	ch, err := a.Subscriber.Subscribe(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	publishKeyed(t, a.Publisher, topic, n, keys)
	c := newOrderCheck()
	slow := func(*message.Message) bool { time.Sleep(time.Millisecond); return true }
	// Once a fifth is done, the first consumer nacks until the second has
	// a message: the rebalance happens mid-run, whatever the timing.
	var bGot atomic.Bool
	wgA := consume(ctx, ch, c, func(m *message.Message) bool {
		if c.ackedCount() >= n/5 && !bGot.Load() {
			time.Sleep(time.Millisecond)
			return false
		}
		return slow(m)
	})
	waitFor(t, ctx, "a first part handled", func() bool { return c.ackedCount() >= n/5 })
	b := openConcurrent(t, group, 8, adapters.KafkaOrderingKey)
	ch2, err := b.Subscriber.Subscribe(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	var onB sync.Map
	wgB := consume(ctx, ch2, c, func(m *message.Message) bool {
		onB.Store(string(m.Payload), true)
		bGot.Store(true)
		return slow(m)
	})
	waitFor(t, ctx, "every message acked", func() bool { return c.ackedCount() == n })
	cancel()
	wgA.Wait()
	wgB.Wait()
	handledByB := 0
	onB.Range(func(any, any) bool { handledByB++; return true })
	if handledByB == 0 {
		t.Fatal("the second consumer got nothing: no rebalance happened")
	}
	if c.violations != 0 || c.overlaps != 0 {
		t.Fatalf("%d order violations, %d overlaps", c.violations, c.overlaps)
	}
	t.Logf("second consumer handled %d messages", handledByB)
}

// Undecodable records are handed on (to be dead-lettered), in key order.
func TestKafkaConcurrentUndecodable(t *testing.T) {
	brokers := embeddedKafka(t)
	cfg := adapters.Config{Broker: adapters.KindKafka, Kafka: adapters.KafkaConfig{
		Brokers: brokers, ConsumerGroup: "undecodable-concurrent", Concurrency: 4,
		Unmarshaler: rejectingUnmarshaler{inner: kafka.DefaultMarshaler{}},
	}}
	b, err := adapters.Open(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	topic := "undecodable_concurrent_" + watermill.NewShortUUID()
	bad := message.NewMessage("bad", []byte("raw bytes"))
	bad.Metadata.Set("reject", "1")
	bad.Metadata.Set("partition_key", "same")
	good := message.NewMessage("good", []byte("fine"))
	good.Metadata.Set("partition_key", "same")
	if err := b.Publisher.Publish(topic, bad, good); err != nil {
		t.Fatal(err)
	}
	msgs := receive(t, b, topic, 2)
	if msgs[0].UUID != "bad" || !antidote.IsUndecodable(msgs[0]) || string(msgs[0].Payload) != "raw bytes" {
		t.Fatalf("rejected record: %s %q %v", msgs[0].UUID, msgs[0].Payload, msgs[0].Metadata)
	}
	if msgs[1].UUID != "good" || antidote.IsUndecodable(msgs[1]) {
		t.Fatalf("record after the bad one: %s %v", msgs[1].UUID, msgs[1].Metadata)
	}
}

func TestKafkaConcurrencyConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		set   func(*adapters.KafkaConfig)
		field string
	}{
		{func(k *adapters.KafkaConfig) { k.Concurrency = -1 }, "kafka.concurrency"},
		{func(k *adapters.KafkaConfig) { k.Ordering = "by-key" }, "kafka.ordering"},
	} {
		cfg := adapters.Config{Broker: adapters.KindKafka, Kafka: adapters.KafkaConfig{Brokers: []string{"127.0.0.1:9092"}}}
		tc.set(&cfg.Kafka)
		cfg.SetDefaults()
		err := cfg.Validate()
		if !errors.Is(err, adapters.ErrInvalidConfig) || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: %v", tc.field, err)
		}
	}
	cfg := adapters.Config{Broker: adapters.KindKafka, Kafka: adapters.KafkaConfig{Brokers: []string{"127.0.0.1:9092"}}}
	cfg.SetDefaults()
	if cfg.Kafka.Concurrency != 1 || cfg.Kafka.Ordering != adapters.KafkaOrderingKey {
		t.Fatalf("defaults: concurrency %d, ordering %q", cfg.Kafka.Concurrency, cfg.Kafka.Ordering)
	}
}
