package middleware

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/pgstore"
	"github.com/antidote-mq/antidote/poison"
	"github.com/antidote-mq/antidote/redisstore"
)

const (
	guardTopic   = "orders"
	guardHandler = "orders-handler"
	guardWait    = 10 * time.Second
)

func guardSuffix(t testing.TB) string {
	t.Helper()
	b := make([]byte, 6)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return hex.EncodeToString(b)
}

// guardTrackers opens each kind of tracker, isolated per test and cleaned
// up afterwards. The durable ones skip (or fail in CI) without a server.
var guardTrackers = []struct {
	name string
	open func(t testing.TB) poison.DeliveryTracker
}{
	{"memory", func(t testing.TB) poison.DeliveryTracker {
		tr := poison.MustNewMemoryDeliveryTracker(poison.MemoryDeliveryTrackerConfig{})
		t.Cleanup(func() { _ = tr.Close() })
		return tr
	}},
	{"postgres", guardPostgresTracker},
	{"redis", func(t testing.TB) poison.DeliveryTracker {
		client := redis.NewClient(&redis.Options{Addr: testenv.RedisAddr(t)})
		prefix := "antidote:test:" + guardSuffix(t) + ":"
		tr, err := redisstore.NewDeliveryTracker(redisstore.DeliveryTrackerConfig{Client: client, Prefix: prefix})
		require.NoError(t, err)
		t.Cleanup(func() {
			_ = tr.Close()
			ctx := context.Background()
			if keys, err := client.Keys(ctx, prefix+"*").Result(); err == nil && len(keys) > 0 {
				_ = client.Del(ctx, keys...).Err()
			}
			_ = client.Close()
		})
		return tr
	}},
}

func guardPostgresTracker(t testing.TB) poison.DeliveryTracker {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testenv.PostgresURL(t))
	require.NoError(t, err)
	table := "antidote_deliveries_test_" + guardSuffix(t)
	tr, err := pgstore.NewDeliveryTracker(ctx, pgstore.DeliveryTrackerConfig{Pool: pool, Table: table})
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = tr.Close()
		_, _ = pool.Exec(context.Background(), "DROP TABLE IF EXISTS "+table)
		pool.Close()
	})
	return tr
}

// guardLife is one life of a consumer process: a fresh broker connection,
// router, DeadLetter and crash-loop guard over a tracker that outlives it.
type guardLife struct {
	pubsub  *gochannel.GoChannel
	router  *message.Router
	dlq     <-chan *message.Message
	results chan error // what the guard returned per delivery: nil = ack
}

// guardOpts describe one life.
type guardOpts struct {
	cfg     CrashLoopGuardConfig // Tracker etc.; DeadLetter is filled in
	handler message.NoPublishHandlerFunc
	// retry, when set, puts Retry below DeadLetter.
	retry *RetryConfig
	// dlqPublisher wraps the pub/sub used for the DLQ (nil: the pub/sub).
	dlqPublisher func(message.Publisher) message.Publisher
	// noDeadLetter leaves DeadLetter.Middleware out of the stack, so
	// handler errors nack.
	noDeadLetter bool
}

// startGuardLife builds the standard stack (guard, DeadLetter, Recover)
// around the handler and starts it.
func startGuardLife(t *testing.T, o guardOpts) *guardLife {
	t.Helper()
	logger := watermill.NopLogger{}
	l := &guardLife{
		pubsub:  gochannel.NewGoChannel(gochannel.Config{}, logger),
		results: make(chan error, 100),
	}
	var pub message.Publisher = l.pubsub
	if o.dlqPublisher != nil {
		pub = o.dlqPublisher(pub)
	}
	dl, err := NewDeadLetter(DeadLetterConfig{Publisher: pub})
	require.NoError(t, err)
	cfg := o.cfg
	cfg.DeadLetter = dl
	guard, err := NewCrashLoopGuard(cfg)
	require.NoError(t, err)

	l.dlq, err = l.pubsub.Subscribe(context.Background(), antidote.DLQTopic(guardTopic))
	require.NoError(t, err)

	l.router, err = message.NewRouter(message.RouterConfig{CloseTimeout: 5 * time.Second}, logger)
	require.NoError(t, err)
	record := func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			produced, err := h(msg)
			l.results <- err
			return produced, err
		}
	}
	l.router.AddMiddleware(record, guard.Middleware)
	if !o.noDeadLetter {
		l.router.AddMiddleware(dl.Middleware)
	}
	if o.retry != nil {
		retry, err := NewRetry(*o.retry)
		require.NoError(t, err)
		l.router.AddMiddleware(retry.Middleware)
	}
	l.router.AddMiddleware(Recover)
	l.router.AddConsumerHandler(guardHandler, guardTopic, l.pubsub, o.handler)

	go func() { _ = l.router.Run(context.Background()) }()
	select {
	case <-l.router.Running():
	case <-time.After(guardWait):
		t.Fatal("router did not start")
	}
	t.Cleanup(l.stop)
	return l
}

// stop ends the life: the router and the broker connection go away. A
// handler that never returned is simply abandoned, like in a dead process.
func (l *guardLife) stop() {
	_ = l.router.Close()
	_ = l.pubsub.Close()
}

func (l *guardLife) publish(t *testing.T, msgs ...*message.Message) {
	t.Helper()
	for _, m := range msgs {
		require.NoError(t, l.pubsub.Publish(guardTopic, m.Copy()))
	}
}

// crashingHandler simulates a handler that kills the process: it never
// returns (runtime.Goexit ends its goroutine; nothing after the call to it
// runs, exactly as after os.Exit), so no middleware gets to settle or
// forget the delivery.
func crashingHandler(runs *atomic.Int32, started chan<- string) message.NoPublishHandlerFunc {
	return func(msg *message.Message) error {
		runs.Add(1)
		started <- msg.UUID
		runtime.Goexit()
		return nil
	}
}

func TestCrashLoopGuardQuarantinesCrashLoopAcrossRestarts(t *testing.T) {
	for _, tc := range guardTrackers {
		t.Run(tc.name, func(t *testing.T) {
			tracker := tc.open(t)
			const maxDeliveries = 3
			poisonPill := message.NewMessage(watermill.NewUUID(), []byte(`{"user_id":1,"msg":"os.Exit"}`))
			var runs atomic.Int32

			// Lives 1..3: the handler takes the process down each time.
			for life := 1; life <= maxDeliveries; life++ {
				started := make(chan string, 1)
				l := startGuardLife(t, guardOpts{
					cfg:     CrashLoopGuardConfig{Tracker: tracker, MaxDeliveries: maxDeliveries},
					handler: crashingHandler(&runs, started),
				})
				l.publish(t, poisonPill) // the broker redelivers the unacked message
				select {
				case <-started:
				case letter := <-l.dlq:
					t.Fatalf("life %d: dead-lettered too early: %v", life, letter.Metadata)
				case <-time.After(guardWait):
					t.Fatalf("life %d: handler did not run", life)
				}
				l.stop()
			}

			// Life 4: quarantined without running the handler.
			started := make(chan string, 1)
			l := startGuardLife(t, guardOpts{
				cfg:     CrashLoopGuardConfig{Tracker: tracker, MaxDeliveries: maxDeliveries},
				handler: crashingHandler(&runs, started),
			})
			l.publish(t, poisonPill)
			var letter *message.Message
			select {
			case letter = <-l.dlq:
				letter.Ack()
			case <-started:
				t.Fatal("the handler ran a 4th time")
			case <-time.After(guardWait):
				t.Fatal("nothing reached the DLQ")
			}
			assert.Equal(t, poisonPill.UUID, letter.UUID)
			assert.Equal(t, string(poisonPill.Payload), string(letter.Payload), "payload kept byte for byte")
			assert.Equal(t, string(poison.ReasonCrashLoop), letter.Metadata.Get(poison.KeyReason))
			assert.Equal(t, "4", letter.Metadata.Get(poison.KeyAttempts))
			assert.Contains(t, letter.Metadata.Get(poison.KeyError), "delivered 4 times without being settled")
			assert.Equal(t, guardTopic, letter.Metadata.Get(poison.KeyOriginalTopic))
			assert.Equal(t, guardHandler, letter.Metadata.Get(poison.KeyHandler))
			select {
			case err := <-l.results:
				assert.NoError(t, err, "quarantined means acked")
			case <-time.After(guardWait):
				t.Fatal("no result")
			}
			assert.Equal(t, int32(maxDeliveries), runs.Load(), "the handler ran exactly MaxDeliveries times")

			// The count was forgotten: a later delivery (e.g. a replay from
			// the DLQ) starts from scratch.
			key := poison.DeliveryKeyOf(poison.Origin{Topic: guardTopic, Handler: guardHandler}, poisonPill.UUID)
			n, err := tracker.Incr(context.Background(), key)
			require.NoError(t, err)
			assert.Equal(t, 1, n)
		})
	}
}

// guardFlakyPublisher fails the first `fails` publishes.
type guardFlakyPublisher struct {
	message.Publisher
	fails    atomic.Int32
	attempts atomic.Int32
}

func (p *guardFlakyPublisher) Publish(topic string, msgs ...*message.Message) error {
	p.attempts.Add(1)
	if p.fails.Add(-1) >= 0 {
		return errors.New("dlq broker unavailable")
	}
	return p.Publisher.Publish(topic, msgs...)
}

func TestCrashLoopGuardDLQFailureNacksNothingLost(t *testing.T) {
	tracker := poison.MustNewMemoryDeliveryTracker(poison.MemoryDeliveryTrackerConfig{})
	msg := message.NewMessage(watermill.NewUUID(), []byte("crashes the consumer"))
	key := poison.DeliveryKeyOf(poison.Origin{Topic: guardTopic, Handler: guardHandler}, msg.UUID)
	for i := 0; i < 3; i++ { // three earlier lives crashed on it
		_, err := tracker.Incr(context.Background(), key)
		require.NoError(t, err)
	}

	flaky := &guardFlakyPublisher{}
	flaky.fails.Store(2)
	var runs atomic.Int32
	started := make(chan string, 10)
	l := startGuardLife(t, guardOpts{
		cfg:          CrashLoopGuardConfig{Tracker: tracker, MaxDeliveries: 3},
		handler:      crashingHandler(&runs, started),
		dlqPublisher: func(p message.Publisher) message.Publisher { flaky.Publisher = p; return flaky },
	})
	l.publish(t, msg)

	// Two failed DLQ publishes: nacked (gochannel redelivers at once), then
	// the third delivery is quarantined and acked.
	for i, wantErr := range []bool{true, true, false} {
		select {
		case err := <-l.results:
			if wantErr {
				require.Error(t, err, "delivery %d: a failed quarantine must nack", i+1)
				assert.Contains(t, err.Error(), "not quarantined")
			} else {
				require.NoError(t, err, "delivery %d", i+1)
			}
		case <-time.After(guardWait):
			t.Fatalf("delivery %d: no result", i+1)
		}
	}
	select {
	case letter := <-l.dlq:
		letter.Ack()
		assert.Equal(t, msg.UUID, letter.UUID)
		assert.Equal(t, "6", letter.Metadata.Get(poison.KeyAttempts), "the count kept growing while the DLQ was down")
	case <-time.After(guardWait):
		t.Fatal("the message was lost: not in the DLQ")
	}
	assert.Equal(t, int32(0), runs.Load(), "the handler never ran on a quarantined message")
	assert.Equal(t, int32(3), flaky.attempts.Load())
	assert.Equal(t, 0, tracker.Len(), "forgotten once quarantined")
}

func TestCrashLoopGuardSettledDeliveriesAreForgotten(t *testing.T) {
	for _, always := range []bool{false, true} {
		t.Run("AlwaysCount="+strconv.FormatBool(always), func(t *testing.T) {
			tracker := poison.MustNewMemoryDeliveryTracker(poison.MemoryDeliveryTrackerConfig{})
			var runs atomic.Int32
			handler := func(msg *message.Message) error {
				runs.Add(1)
				if msg.Payload[0] == 'x' {
					return poison.Permanent(errors.New("malformed"))
				}
				return nil
			}
			l := startGuardLife(t, guardOpts{cfg: CrashLoopGuardConfig{Tracker: tracker, AlwaysCount: always}, handler: handler})
			const n = 20
			for i := 0; i < n; i++ {
				payload := []byte("ok")
				if i%4 == 0 {
					payload = []byte("x")
				}
				l.publish(t, message.NewMessage(watermill.NewUUID(), payload))
				select {
				case err := <-l.results:
					require.NoError(t, err)
				case <-time.After(guardWait):
					t.Fatal("no result")
				}
			}
			dead := 0
			for len(l.dlq) > 0 || dead < n/4 {
				select {
				case letter := <-l.dlq:
					letter.Ack()
					assert.Equal(t, string(poison.ReasonPermanent), letter.Metadata.Get(poison.KeyReason))
					dead++
				case <-time.After(guardWait):
					t.Fatalf("%d letters, want %d", dead, n/4)
				}
			}
			assert.Equal(t, n/4, dead)
			assert.Equal(t, int32(n), runs.Load(), "every message ran exactly once")
			assert.Equal(t, 0, tracker.Len(), "no count outlives a settled delivery")
		})
	}
}

// A handler that returns errors is settled each time (the broker redelivers
// after the nack): that is Retry's and DeadLetter's business, not a crash
// loop, however often it happens.
func TestCrashLoopGuardNackLoopIsNotACrashLoop(t *testing.T) {
	tracker := poison.MustNewMemoryDeliveryTracker(poison.MemoryDeliveryTrackerConfig{})
	var runs atomic.Int32
	l := startGuardLife(t, guardOpts{
		cfg: CrashLoopGuardConfig{Tracker: tracker, MaxDeliveries: 2},
		handler: func(*message.Message) error {
			if runs.Add(1) <= 5 {
				return errors.New("database busy")
			}
			return nil
		},
		noDeadLetter: true,
	})
	l.publish(t, message.NewMessage(watermill.NewUUID(), []byte("ok")))
	expectNacksThenAck(t, l, 5)
	assert.Empty(t, l.dlq, "not quarantined")
	assert.Equal(t, int32(6), runs.Load())
	assert.Equal(t, 0, tracker.Len())
}

func TestCrashLoopGuardConsumerGroupInKeys(t *testing.T) {
	tracker := poison.MustNewMemoryDeliveryTracker(poison.MemoryDeliveryTrackerConfig{})
	dl, err := NewDeadLetter(DeadLetterConfig{Publisher: gochannel.NewGoChannel(gochannel.Config{}, nil), ConsumerGroup: "billing"})
	require.NoError(t, err)
	d, err := NewCrashLoopGuard(CrashLoopGuardConfig{Tracker: tracker, DeadLetter: dl})
	require.NoError(t, err)
	assert.Equal(t, "billing", d.cfg.ConsumerGroup, "defaults to the DeadLetter's group")

	var seen string
	d.originOf = func(*message.Message) poison.Origin { return poison.Origin{Topic: guardTopic, Handler: guardHandler} }
	_, err = d.Middleware(func(msg *message.Message) ([]*message.Message, error) {
		seen = poison.DeliveryKeyOf(poison.Origin{Topic: guardTopic, Handler: guardHandler, ConsumerGroup: "billing"}, msg.UUID)
		n, err := tracker.Incr(context.Background(), seen)
		require.NoError(t, err)
		assert.Equal(t, 2, n, "the guard counted under the key with the group")
		return nil, nil
	})(message.NewMessage("u", nil))
	require.NoError(t, err)
	assert.Contains(t, seen, "/billing/")
}

// forgetFailing is a tracker whose first failures Forgets fail, as a
// PostgreSQL tracker's do when its server goes away between the count and
// the forget of deliveries.
type forgetFailing struct {
	poison.DeliveryTracker
	failures atomic.Int32
}

func (f *forgetFailing) Forget(ctx context.Context, key string) error {
	if f.failures.Add(-1) >= 0 {
		return errors.New("tracker store unreachable (simulated)")
	}
	return f.DeliveryTracker.Forget(ctx, key)
}

// While the tracker cannot forget, a message nacked again and again (its
// handler returned each time: no crash) must not pile up deliveries and be
// quarantined as a crash loop: the next delivery forgets what the last one
// could not. Before, the count grew by one per nack during the outage.
func TestCrashLoopGuardStoreOutageIsNotACrashLoop(t *testing.T) {
	tracker := &forgetFailing{DeliveryTracker: poison.MustNewMemoryDeliveryTracker(poison.MemoryDeliveryTrackerConfig{})}
	var runs atomic.Int32
	l := startGuardLife(t, guardOpts{
		cfg: CrashLoopGuardConfig{Tracker: tracker, MaxDeliveries: 2},
		handler: func(*message.Message) error {
			if runs.Add(1) <= 5 {
				return errors.New("sink down")
			}
			return nil
		},
		noDeadLetter: true,
	})
	tracker.failures.Store(2)
	l.publish(t, message.NewMessage(watermill.NewUUID(), []byte("ok")))
	expectNacksThenAck(t, l, 5)
	assert.Empty(t, l.dlq, "not quarantined")
	assert.Equal(t, int32(6), runs.Load(), "the handler ran every time")
}

// expectNacksThenAck reads nacks deliveries nacked, then one acked.
func expectNacksThenAck(t *testing.T, l *guardLife, nacks int) {
	t.Helper()
	for i := 1; i <= nacks+1; i++ {
		select {
		case err := <-l.results:
			if i <= nacks {
				assert.Error(t, err, "delivery %d nacked", i)
			} else {
				assert.NoError(t, err, "delivery %d acked", i)
			}
		case <-time.After(guardWait):
			t.Fatalf("delivery %d: no result", i)
		}
	}
}

// countingTracker records the count of one key as Incr and Decr move it.
type countingTracker struct {
	poison.DeliveryTracker
	mu sync.Mutex
	n  map[string]int
}

func newCountingTracker() *countingTracker {
	return &countingTracker{DeliveryTracker: poison.MustNewMemoryDeliveryTracker(poison.MemoryDeliveryTrackerConfig{}), n: map[string]int{}}
}

func (c *countingTracker) Incr(ctx context.Context, key string) (int, error) {
	n, err := c.DeliveryTracker.Incr(ctx, key)
	c.mu.Lock()
	c.n[key] = n
	c.mu.Unlock()
	return n, err
}

func (c *countingTracker) Decr(ctx context.Context, key string) (int, error) {
	n, err := c.DeliveryTracker.(poison.DeliveryDecrementer).Decr(ctx, key)
	c.mu.Lock()
	c.n[key] = n
	c.mu.Unlock()
	return n, err
}

func (c *countingTracker) Forget(ctx context.Context, key string) error {
	c.mu.Lock()
	c.n[key] = 0
	c.mu.Unlock()
	return c.DeliveryTracker.Forget(ctx, key)
}

// count is the highest count of any key (the others are forgotten: 0).
func (c *countingTracker) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	most := 0
	for _, n := range c.n {
		most = max(most, n)
	}
	return most
}

// While a message waits between retry attempts its handler is not
// running, so a process that dies then (killed from outside, or by another
// partition's message) is not its fault: its count is taken back during
// the wait and counted again for the next attempt. A handler that kills
// the process in its second attempt in every life is still quarantined
// after MaxDeliveries lives. (The chaos test had quarantined a healthy
// message that was waiting for its retries whenever the process died.)
func TestCrashLoopGuardWaitBetweenAttemptsIsNotCounted(t *testing.T) {
	tracker := newCountingTracker()
	const maxDeliveries = 3
	var mu sync.Mutex
	var duringWait, duringAttempt []int
	record := func(to *[]int) { mu.Lock(); *to = append(*to, tracker.count()); mu.Unlock() }
	retry := &RetryConfig{MaxAttempts: 3, InitialInterval: time.Millisecond,
		OnRetry: func(int, error, time.Duration) { record(&duringWait) }}
	pill := message.NewMessage(watermill.NewUUID(), []byte("x"))
	life := func(crash bool) (*guardLife, chan string) {
		started := make(chan string, 10)
		return startGuardLife(t, guardOpts{
			cfg:   CrashLoopGuardConfig{Tracker: tracker, MaxDeliveries: maxDeliveries},
			retry: retry,
			handler: func(m *message.Message) error {
				record(&duringAttempt)
				started <- m.Metadata.Get(poison.KeyAttempts)
				if crash && m.Metadata.Get(poison.KeyAttempts) == "2" {
					runtime.Goexit() // the process dies in its handler
				}
				return poison.Transient(errors.New("inventory service timeout"))
			},
		}), started
	}

	// No crash: three attempts, each counted only while it runs.
	l, _ := life(false)
	l.publish(t, pill)
	select {
	case letter := <-l.dlq:
		letter.Ack()
		assert.Equal(t, string(poison.ReasonRetriesExhausted), letter.Metadata.Get(poison.KeyReason))
	case <-time.After(guardWait):
		t.Fatal("not dead-lettered")
	}
	l.stop()
	mu.Lock()
	assert.Equal(t, []int{1, 1, 1}, duringAttempt, "counted during each attempt")
	assert.Equal(t, []int{0, 0}, duringWait, "not counted while waiting")
	mu.Unlock()

	// Dies in attempt 2 in every life: still quarantined after 3 lives.
	pill = message.NewMessage(watermill.NewUUID(), []byte("y"))
	for i := 1; i <= maxDeliveries; i++ {
		l, started := life(true)
		l.publish(t, pill)
		for want := range 2 {
			select {
			case <-started:
			case <-time.After(guardWait):
				t.Fatalf("life %d: attempt %d did not run", i, want+1)
			}
		}
		l.stop()
		assert.Equal(t, i, tracker.count(), "life %d left its crash counted", i)
	}
	l, started := life(true)
	l.publish(t, pill)
	select {
	case letter := <-l.dlq:
		assert.Equal(t, string(poison.ReasonCrashLoop), letter.Metadata.Get(poison.KeyReason))
	case <-started:
		t.Fatal("ran a 4th life")
	case <-time.After(guardWait):
		t.Fatal("the message that kills the process in its second attempt was not quarantined")
	}
}
