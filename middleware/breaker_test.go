package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/poison"
)

type breakerRig struct {
	ps        *gochannel.GoChannel
	dlq       <-chan *message.Message
	breaker   *middleware.Breaker
	processed sync.Map
	count     atomic.Int64
	states    chan string
}

func newBreakerRig(t *testing.T, maxHold time.Duration, handler func(*message.Message) error) *breakerRig {
	t.Helper()
	rig := &breakerRig{ps: gochannel.NewGoChannel(gochannel.Config{Persistent: true}, watermill.NopLogger{}), states: make(chan string, 100)}
	var err error
	rig.breaker, err = middleware.NewBreaker(middleware.BreakerConfig{
		MinRequests: 5, OpenTimeout: 50 * time.Millisecond, Backoff: 5 * time.Millisecond, MaxHoldTime: maxHold,
		OnStateChange: func(_, to string) { rig.states <- to },
	})
	if err != nil {
		t.Fatal(err)
	}
	dl, err := middleware.NewDeadLetter(middleware.DeadLetterConfig{Publisher: rig.ps})
	if err != nil {
		t.Fatal(err)
	}
	retry, err := middleware.NewRetry(middleware.RetryConfig{InitialInterval: time.Millisecond, MaxAttempts: 2})
	if err != nil {
		t.Fatal(err)
	}
	r, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	r.AddMiddleware(dl.Middleware, rig.breaker.Middleware, retry.Middleware)
	r.AddConsumerHandler("h", "in", rig.ps, func(m *message.Message) error {
		if err := handler(m); err != nil {
			return err
		}
		if _, dup := rig.processed.LoadOrStore(m.UUID, true); !dup {
			rig.count.Add(1)
		}
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() { _ = r.Run(ctx) }()
	<-r.Running()
	rig.dlq, err = rig.ps.Subscribe(ctx, "in.dlq")
	if err != nil {
		t.Fatal(err)
	}
	return rig
}

func (rig *breakerRig) publish(t *testing.T, n int, payload string) {
	for i := 0; i < n; i++ {
		if err := rig.ps.Publish("in", message.NewMessage(fmt.Sprintf("%s-%d", payload, i), []byte(payload))); err != nil {
			t.Fatal(err)
		}
	}
}

// The database is down: nothing is dead-lettered, the head message is held
// (nacked with backoff) instead, and once the database is back every
// message is processed.
func TestBreakerOutageDeadLettersNothing(t *testing.T) {
	var down atomic.Bool
	down.Store(true)
	var failures atomic.Int64
	rig := newBreakerRig(t, 0, func(*message.Message) error {
		if down.Load() {
			failures.Add(1)
			return poison.Transient(errors.New("connection refused"))
		}
		return nil
	})
	rig.publish(t, 50, "m")
	for failures.Load() < 20 {
		time.Sleep(5 * time.Millisecond)
	}
	down.Store(false)
	deadline := time.After(20 * time.Second)
	for rig.count.Load() < 50 {
		select {
		case l := <-rig.dlq:
			t.Fatalf("dead-lettered during an outage: %s %s %v state=%s", l.UUID, l.Metadata.Get(poison.KeyError), l.Metadata, rig.breaker.State())
		case <-deadline:
			t.Fatalf("processed %d of 50 after recovery", rig.count.Load())
		case <-time.After(10 * time.Millisecond):
		}
	}
	if rig.breaker.State() != "closed" {
		t.Errorf("state %s after recovery", rig.breaker.State())
	}
	t.Logf("%d failed handler runs during the outage for 50 messages", failures.Load())
}

// An outage that starts after a long run of successes: the window is full
// of them, yet the first messages to fail are held, not dead-lettered (the
// chaos test found the breaker sending them to the DLQ as
// retries_exhausted while PostgreSQL restarted).
func TestBreakerOutageAfterBusyWindowDeadLettersNothing(t *testing.T) {
	var down atomic.Bool
	var failures atomic.Int64
	rig := newBreakerRig(t, time.Minute, func(*message.Message) error {
		if down.Load() {
			failures.Add(1)
			return poison.Transient(errors.New("connection refused"))
		}
		return nil
	})
	rig.publish(t, 200, "warm")
	waitCount(t, rig, 200)
	down.Store(true)
	rig.publish(t, 20, "m")
	for failures.Load() < 10 {
		time.Sleep(5 * time.Millisecond)
	}
	down.Store(false)
	waitCount(t, rig, 220)
	select {
	case l := <-rig.dlq:
		t.Fatalf("dead-lettered during an outage that followed 200 successes: %s (%s)", l.UUID, l.Metadata.Get(poison.KeyReason))
	case <-time.After(100 * time.Millisecond):
	}
}

// A message that keeps failing transiently while other messages succeed
// is its own problem: it reaches the DLQ after its holds, long before
// MaxHoldTime.
func TestBreakerTransientPoisonAmongSuccessesEndsInDLQ(t *testing.T) {
	ps := gochannel.NewGoChannel(gochannel.Config{Persistent: true}, watermill.NopLogger{})
	b, err := middleware.NewBreaker(middleware.BreakerConfig{MinRequests: 5, Backoff: 5 * time.Millisecond, MaxHoldTime: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	dl, err := middleware.NewDeadLetter(middleware.DeadLetterConfig{Publisher: ps})
	if err != nil {
		t.Fatal(err)
	}
	r, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	r.AddMiddleware(dl.Middleware, b.Middleware)
	var runs atomic.Int64
	r.AddConsumerHandler("stuck", "in", ps, func(*message.Message) error {
		runs.Add(1)
		return poison.Transient(errors.New("timeout"))
	})
	r.AddConsumerHandler("healthy", "other", ps, func(*message.Message) error { return nil })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = r.Run(ctx) }()
	<-r.Running()
	dlq, err := ps.Subscribe(ctx, "in.dlq")
	if err != nil {
		t.Fatal(err)
	}
	go func() { // others keep succeeding
		for i := 0; ctx.Err() == nil; i++ {
			_ = ps.Publish("other", message.NewMessage(fmt.Sprintf("ok-%d", i), nil))
			time.Sleep(2 * time.Millisecond)
		}
	}()
	time.Sleep(50 * time.Millisecond)
	if err := ps.Publish("in", message.NewMessage("stuck", nil)); err != nil {
		t.Fatal(err)
	}
	select {
	case l := <-dlq:
		if l.UUID != "stuck" || l.Metadata.Get(poison.KeyReason) != string(poison.ReasonRetriesExhausted) {
			t.Fatalf("letter %s %v", l.UUID, l.Metadata)
		}
		if n := runs.Load(); n != 3 {
			t.Errorf("handler ran %d times, want 3 (the first failure and two holds)", n)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("never dead-lettered although others succeed (%d runs, breaker %s)", runs.Load(), b.State())
	}
}

func waitCount(t *testing.T, rig *breakerRig, n int64) {
	t.Helper()
	testenv.EventuallyNil(t, 20*time.Second, func() error {
		if got := rig.count.Load(); got < n {
			return fmt.Errorf("processed %d of %d", got, n)
		}
		return nil
	})
}

// Permanent failures are the messages' fault: the breaker stays closed and
// they go to the DLQ at once.
func TestBreakerIgnoresPermanentFailures(t *testing.T) {
	rig := newBreakerRig(t, 0, func(m *message.Message) error {
		return poison.Permanent(errors.New("bad payload"))
	})
	rig.publish(t, 20, "bad")
	for i := 0; i < 20; i++ {
		select {
		case l := <-rig.dlq:
			l.Ack()
		case <-time.After(10 * time.Second):
			t.Fatalf("%d of 20 dead-lettered", i)
		}
	}
	select {
	case s := <-rig.states:
		t.Fatalf("breaker changed state to %s on permanent failures", s)
	default:
	}
}

// One message that always fails transiently must not hold its queue
// forever: after MaxHoldTime it is dead-lettered and the rest flow.
func TestBreakerSingleTransientPoisonEndsInDLQ(t *testing.T) {
	rig := newBreakerRig(t, 100*time.Millisecond, func(m *message.Message) error {
		if strings.HasPrefix(m.UUID, "stuck") {
			return poison.Transient(errors.New("timeout"))
		}
		return nil
	})
	rig.publish(t, 1, "stuck")
	rig.publish(t, 10, "ok")
	select {
	case l := <-rig.dlq:
		l.Ack()
		if l.UUID != "stuck-0" || l.Metadata.Get(poison.KeyReason) != string(poison.ReasonRetriesExhausted) {
			t.Fatalf("letter %s %v", l.UUID, l.Metadata)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("the stuck message never reached the DLQ (breaker %s)", rig.breaker.State())
	}
	testenv.EventuallyNil(t, 10*time.Second, func() error {
		if got := rig.count.Load(); got < 10 {
			return fmt.Errorf("healthy processed %d of 10", got)
		}
		return nil
	})
}

func TestBreakerConfigValidate(t *testing.T) {
	for _, c := range []middleware.BreakerConfig{{FailureRatio: 1.5}, {MaxHoldTime: -1}, {Backoff: -time.Second}} {
		if _, err := middleware.NewBreaker(c); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
}

// Many distinct messages failing at once (partitions, concurrent handlers)
// open the breaker: later ones are refused without running the handler
// (Defer'd, so DeadLetter nacks them), a probe after OpenTimeout closes it.
func TestBreakerOpensOnDistinctFailuresAndRecovers(t *testing.T) {
	// In a synctest bubble: the wait past OpenTimeout is fake time, exact
	// and instant, whatever the load.
	synctest.Test(t, func(t *testing.T) {
		b, err := middleware.NewBreaker(middleware.BreakerConfig{MinRequests: 5, OpenTimeout: 50 * time.Millisecond, Backoff: time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		var down atomic.Bool
		down.Store(true)
		var runs atomic.Int64
		h := b.Middleware(func(m *message.Message) ([]*message.Message, error) {
			runs.Add(1)
			if down.Load() {
				return nil, poison.Transient(errors.New("db down"))
			}
			return nil, nil
		})
		var wg sync.WaitGroup
		var refused atomic.Int64
		for i := 0; i < 40; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := h(message.NewMessage(fmt.Sprint(i), nil))
				if !errors.Is(err, poison.ErrDeferred) {
					t.Errorf("message %d: %v, want a Defer'd error during the outage", i, err)
				}
				if errors.Is(err, middleware.ErrCircuitOpen) && !strings.Contains(err.Error(), "db down") {
					refused.Add(1)
				}
			}()
		}
		wg.Wait()
		if b.State() != "open" {
			t.Fatalf("state %s after 40 distinct transient failures", b.State())
		}
		if refused.Load() == 0 || runs.Load() >= 40 {
			t.Errorf("open breaker still ran the handler: runs %d, refused %d", runs.Load(), refused.Load())
		}
		down.Store(false)
		time.Sleep(60 * time.Millisecond)
		if _, err := h(message.NewMessage("probe", nil)); err != nil {
			t.Fatalf("probe: %v", err)
		}
		if b.State() != "closed" {
			t.Fatalf("state %s after a successful probe", b.State())
		}
	})
}

// With a HealthCheck the breaker needs no other traffic: on an ordered
// queue a message that keeps failing while the dependency answers is
// dead-lettered after one hold; while the dependency is down it is held, and
// processed once it is back.
func TestBreakerHealthCheckJudgesAlone(t *testing.T) {
	for _, tc := range []struct {
		name    string
		healthy bool
	}{{"dependency up: the message's own failure", true}, {"dependency down: an outage", false}} {
		t.Run(tc.name, func(t *testing.T) {
			ps := gochannel.NewGoChannel(gochannel.Config{Persistent: true}, watermill.NopLogger{})
			var up atomic.Bool
			up.Store(tc.healthy)
			var checks atomic.Int64
			b, err := middleware.NewBreaker(middleware.BreakerConfig{Backoff: 5 * time.Millisecond, MaxHoldTime: time.Minute,
				HealthCheck: func(context.Context) error {
					checks.Add(1)
					if up.Load() {
						return nil
					}
					return errors.New("connection refused")
				}})
			if err != nil {
				t.Fatal(err)
			}
			dl, err := middleware.NewDeadLetter(middleware.DeadLetterConfig{Publisher: ps})
			if err != nil {
				t.Fatal(err)
			}
			r, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
			if err != nil {
				t.Fatal(err)
			}
			r.AddMiddleware(dl.Middleware, b.Middleware)
			var runs, done atomic.Int64
			r.AddConsumerHandler("h", "in", ps, func(*message.Message) error {
				runs.Add(1)
				if tc.healthy || !up.Load() {
					return poison.Transient(errors.New("timeout"))
				}
				done.Add(1)
				return nil
			})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go func() { _ = r.Run(ctx) }()
			<-r.Running()
			dlq, err := ps.Subscribe(ctx, "in.dlq")
			if err != nil {
				t.Fatal(err)
			}
			if err := ps.Publish("in", message.NewMessage("m", nil)); err != nil {
				t.Fatal(err)
			}
			if tc.healthy {
				select {
				case l := <-dlq:
					if n := runs.Load(); n != 2 {
						t.Errorf("handler ran %d times, want 2 (the failure and one after a hold)", n)
					}
					l.Ack()
				case <-time.After(10 * time.Second):
					t.Fatalf("not dead-lettered although the dependency is up (%d runs)", runs.Load())
				}
				return
			}
			// Held through ten redeliveries: each checks the dependency, and
			// the handler does not run again while it is down.
			testenv.Eventually(t, 10*time.Second, "ten health checks while held", func() bool { return checks.Load() >= 10 })
			if n := runs.Load(); n != 1 {
				t.Errorf("handler ran %d times during the outage, want 1 (the first failure; held ones wait for the health check)", n)
			}
			up.Store(true)
			testenv.Eventually(t, 10*time.Second, "the message processed after the dependency came back", func() bool { return done.Load() != 0 })
			select {
			case l := <-dlq:
				t.Fatalf("dead-lettered during the outage: %v", l.Metadata)
			case <-time.After(50 * time.Millisecond):
			}
		})
	}
}
