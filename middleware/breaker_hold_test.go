package middleware_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/poison"
)

const (
	heldLine    = "Message held by the breaker"
	endHeldLine = "Message no longer held by the breaker"
)

// holdCounter is an OnHold that keeps the held count per handler, as the
// gauge does, and fails the test if a count ever goes negative.
type holdCounter struct {
	t  *testing.T
	mu sync.Mutex
	n  map[string]int
}

func newHoldCounter(t *testing.T) *holdCounter { return &holdCounter{t: t, n: map[string]int{}} }

func (c *holdCounter) onHold(handler string, held bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if held {
		c.n[handler]++
		return
	}
	if c.n[handler]--; c.n[handler] < 0 {
		c.t.Errorf("held count of handler %q went negative", handler)
	}
}

func (c *holdCounter) get(handler string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[handler]
}

// breakerHoldRouter runs DeadLetter → Breaker → handlers on a persistent
// gochannel (which redelivers a nacked message at once, to the same
// handler) and returns the DLQ subscription of topic.
func breakerHoldRouter(t *testing.T, ps *gochannel.GoChannel, b *middleware.Breaker, dlqTopic string, handlers map[string]message.NoPublishHandlerFunc) <-chan *message.Message {
	t.Helper()
	dl, err := middleware.NewDeadLetter(middleware.DeadLetterConfig{Publisher: ps})
	require.NoError(t, err)
	r, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	require.NoError(t, err)
	r.AddMiddleware(dl.Middleware, b.Middleware)
	for topic, h := range handlers {
		r.AddConsumerHandler(topic+"-handler", topic, ps, h)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = r.Run(ctx) }()
	<-r.Running()
	t.Cleanup(func() { cancel(); <-done })
	dlq, err := ps.Subscribe(ctx, dlqTopic)
	require.NoError(t, err)
	return dlq
}

// A message held through 100 redeliveries yields two breaker log lines,
// not 100: one when it is first held (with what an operator needs to know:
// which message, where, why, since when, decided by when) and one when the
// hold ends, saying how. Both for a release and for MaxHoldTime.
func TestBreakerLogsOncePerHold(t *testing.T) {
	for _, tc := range []struct {
		name              string
		maxHold           time.Duration
		outcome, whyEnded string
	}{
		{"released after 100 holds", time.Hour, "released", "processed"},
		{"dead-lettered after MaxHoldTime", 300 * time.Millisecond, "dead_lettered", "held longer than MaxHoldTime"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logs := &recordingLogger{}
			holds := newHoldCounter(t)
			b, err := middleware.NewBreaker(middleware.BreakerConfig{
				Backoff: time.Millisecond, MaxHoldTime: tc.maxHold, Logger: logs, OnHold: holds.onHold,
			})
			require.NoError(t, err)
			ps := gochannel.NewGoChannel(gochannel.Config{Persistent: true}, watermill.NopLogger{})
			var runs atomic.Int64
			processed := make(chan struct{})
			release := tc.outcome == "released"
			dlq := breakerHoldRouter(t, ps, b, "orders.dlq", map[string]message.NoPublishHandlerFunc{
				"orders": func(*message.Message) error {
					if n := runs.Add(1); !release || n <= 100 {
						return poison.Transient(errors.New("connection refused"))
					}
					close(processed)
					return nil
				},
			})
			require.NoError(t, ps.Publish("orders", message.NewMessage("order-1", []byte("{}"))))
			if release {
				select {
				case <-processed:
				case <-time.After(20 * time.Second):
					t.Fatalf("not processed after %d runs", runs.Load())
				}
			} else {
				select {
				case l := <-dlq:
					l.Ack()
					assert.Equal(t, string(poison.ReasonRetriesExhausted), l.Metadata.Get(poison.KeyReason))
				case <-time.After(20 * time.Second):
					t.Fatalf("not dead-lettered after %d runs", runs.Load())
				}
			}
			waitFor(t, "the end of the hold", func() bool { return len(logs.matching(endHeldLine)) == 1 })
			n := runs.Load()
			require.Greater(t, n, int64(10), "the message was redelivered many times while held")

			logs.mu.Lock()
			lines := len(logs.entries)
			logs.mu.Unlock()
			assert.Equal(t, 2, lines, "%d redeliveries while held: one line when first held, one when the hold ended", n)
			held := logs.matching(heldLine)
			require.Len(t, held, 1)
			f := held[0].fields
			assert.Equal(t, "info", held[0].level)
			assert.Equal(t, "order-1", f["message_uuid"])
			assert.Equal(t, "orders", f["topic"])
			assert.Equal(t, "orders-handler", f["handler_name"])
			assert.Contains(t, f["err"], "connection refused")
			assert.Equal(t, "waiting for other messages to succeed", f["why"])
			since, err := time.Parse(time.RFC3339Nano, f["held_since"].(string))
			require.NoError(t, err)
			decideBy, err := time.Parse(time.RFC3339Nano, f["decide_by"].(string))
			require.NoError(t, err)
			assert.Equal(t, tc.maxHold, decideBy.Sub(since), "decide_by is the first hold + MaxHoldTime")

			end := logs.matching(endHeldLine)[0].fields
			assert.Equal(t, tc.outcome, end["outcome"])
			assert.Equal(t, tc.whyEnded, end["why"])
			assert.Equal(t, f["held_since"], end["held_since"])
			assert.Equal(t, "orders-handler", end["handler_name"])
			assert.Contains(t, end, "held_for")
			assert.Equal(t, int(n-1), end["holds"], "every run but the last was a hold")
			assert.Equal(t, 0, holds.get("orders-handler"), "OnHold reported the end of the hold")
		})
	}
}

// Every way a hold ends (released, judged by the health check, failed
// permanently) reports it through OnHold exactly once: with several
// messages held at once on several handlers, the count per handler follows
// them and returns to 0.
func TestBreakerOnHoldFollowsEveryHold(t *testing.T) {
	holds := newHoldCounter(t)
	logs := &recordingLogger{}
	var up, fixed atomic.Bool
	b, err := middleware.NewBreaker(middleware.BreakerConfig{
		Backoff: time.Millisecond, MaxHoldTime: time.Hour, OnHold: holds.onHold, Logger: logs,
		HealthCheck: func(context.Context) error {
			if up.Load() {
				return nil
			}
			return errors.New("database down")
		},
	})
	require.NoError(t, err)
	ps := gochannel.NewGoChannel(gochannel.Config{Persistent: true}, watermill.NopLogger{})
	var released atomic.Int64
	transient := poison.Transient(errors.New("timeout"))
	handlers := map[string]message.NoPublishHandlerFunc{
		// succeeds once fixed: released
		"release": func(*message.Message) error {
			if !fixed.Load() {
				return transient
			}
			released.Add(1)
			return nil
		},
		// keeps failing: dead-lettered once the health check passes
		"judge": func(*message.Message) error { return transient },
		// fails permanently once fixed: dead-lettered
		"permanent": func(*message.Message) error {
			if !fixed.Load() {
				return transient
			}
			return poison.Permanent(errors.New("bad payload"))
		},
	}
	dlqs := map[string]<-chan *message.Message{}
	for topic := range handlers {
		dlqs[topic] = breakerHoldRouter(t, ps, b, topic+".dlq", map[string]message.NoPublishHandlerFunc{topic: handlers[topic]})
	}
	for topic := range handlers {
		for _, id := range []string{"1", "2"} {
			require.NoError(t, ps.Publish(topic, message.NewMessage(topic+"-"+id, nil)))
		}
	}
	// gochannel delivers both messages of a topic at once: six held.
	waitFor(t, "two messages held on each handler", func() bool {
		return holds.get("release-handler") == 2 && holds.get("judge-handler") == 2 && holds.get("permanent-handler") == 2
	})
	fixed.Store(true)
	up.Store(true)
	for _, topic := range []string{"judge", "permanent"} {
		for range 2 {
			select {
			case l := <-dlqs[topic]:
				l.Ack()
			case <-time.After(20 * time.Second):
				t.Fatalf("%s: not dead-lettered (%d held)", topic, holds.get(topic+"-handler"))
			}
		}
	}
	waitFor(t, "both released", func() bool { return released.Load() == 2 })
	waitFor(t, "no message held", func() bool {
		return holds.get("release-handler") == 0 && holds.get("judge-handler") == 0 && holds.get("permanent-handler") == 0
	})
	ends := map[string][]string{}
	for _, e := range logs.matching(endHeldLine) {
		h := e.fields["handler_name"].(string)
		ends[h] = append(ends[h], e.fields["outcome"].(string)+": "+e.fields["why"].(string))
	}
	assert.Equal(t, map[string][]string{
		"release-handler":   {"released: processed", "released: processed"},
		"judge-handler":     {"dead_lettered: it fails while the health check passes", "dead_lettered: it fails while the health check passes"},
		"permanent-handler": {"dead_lettered: it failed permanently", "dead_lettered: it failed permanently"},
	}, ends)
	assert.Len(t, logs.matching(heldLine), 6, "one line per message held")
}

// A message without a UUID (and no Kafka offset) cannot be told from its
// redeliveries, nor from other messages without one: the breaker does not
// track it (OnHold never hears of it) and judges it at once, so it cannot
// be held forever. Without a HealthCheck its transient failure goes to the
// DLQ after its attempts; with a failing HealthCheck it is held (its
// failures open the circuit meanwhile), and dead-lettered on the first
// failure after the check passes.
func TestBreakerMessageWithoutUUIDIsJudgedAtOnce(t *testing.T) {
	for _, withHC := range []bool{false, true} {
		t.Run(map[bool]string{false: "no health check", true: "health check"}[withHC], func(t *testing.T) {
			holds := newHoldCounter(t)
			var up atomic.Bool
			cfg := middleware.BreakerConfig{Backoff: time.Millisecond, OpenTimeout: 20 * time.Millisecond, MaxHoldTime: time.Hour, OnHold: func(h string, held bool) {
				holds.onHold(h, held)
				t.Errorf("OnHold(%q, %v) for a message without a UUID", h, held)
			}}
			if withHC {
				cfg.HealthCheck = func(context.Context) error {
					if up.Load() {
						return nil
					}
					return errors.New("database down")
				}
			}
			b, err := middleware.NewBreaker(cfg)
			require.NoError(t, err)
			ps := gochannel.NewGoChannel(gochannel.Config{Persistent: true}, watermill.NopLogger{})
			var runs atomic.Int64
			dlq := breakerHoldRouter(t, ps, b, "orders.dlq", map[string]message.NoPublishHandlerFunc{
				"orders": func(*message.Message) error {
					runs.Add(1)
					return poison.Transient(errors.New("timeout"))
				},
			})
			require.NoError(t, ps.Publish("orders", message.NewMessage("", []byte("a"))))
			if withHC {
				waitFor(t, "the message held while the health check fails", func() bool { return runs.Load() >= 5 })
				select {
				case l := <-dlq:
					t.Fatalf("dead-lettered while the health check fails: %v", l.Metadata)
				default:
				}
				up.Store(true)
			}
			select {
			case l := <-dlq:
				l.Ack()
				assert.Equal(t, string(poison.ReasonRetriesExhausted), l.Metadata.Get(poison.KeyReason))
				assert.Equal(t, "a", string(l.Payload))
			case <-time.After(20 * time.Second):
				t.Fatalf("a message without a UUID was never judged (%d runs)", runs.Load())
			}
			if !withHC {
				assert.Equal(t, int64(1), runs.Load(), "judged at its first transient failure")
			}
		})
	}
}

// Foreign producers send 100 KB "UUIDs": two of them that differ only in
// their last byte are two holds, not one (a key cut to a prefix would merge
// them), and neither reaches a log line whole. Once one succeeds, the
// other, still failing after its holds, is judged its own fault.
func TestBreakerHugeUUIDsAreDistinctHolds(t *testing.T) {
	logs := &recordingLogger{}
	holds := newHoldCounter(t)
	b, err := middleware.NewBreaker(middleware.BreakerConfig{Backoff: time.Nanosecond, MaxHoldTime: time.Hour, Logger: logs, OnHold: holds.onHold})
	require.NoError(t, err)
	var ok sync.Map // uuids whose handler succeeds
	h := b.Middleware(func(m *message.Message) ([]*message.Message, error) {
		if _, yes := ok.Load(m.UUID); yes {
			return nil, nil
		}
		return nil, poison.Transient(errors.New("timeout"))
	})
	prefix := strings.Repeat("x", 100<<10)
	a, c := prefix+"a", prefix+"c"
	for range 3 { // three deliveries of each, interleaved
		for _, id := range []string{a, c} {
			_, err := h(message.NewMessage(id, nil))
			require.ErrorIs(t, err, poison.ErrDeferred)
		}
	}
	assert.Equal(t, 2, holds.get(""), "two messages held")
	ok.Store(a, true)
	_, err = h(message.NewMessage(a, nil))
	require.NoError(t, err)
	assert.Equal(t, 1, holds.get(""), "releasing one leaves the other held")
	end := logs.matching(endHeldLine)
	require.Len(t, end, 1)
	assert.Equal(t, "released", end[0].fields["outcome"])
	assert.Equal(t, 3, end[0].fields["holds"], "a's own three holds, none of c's")
	_, err = h(message.NewMessage(c, nil))
	require.NotErrorIs(t, err, poison.ErrDeferred, "c is judged: it kept failing while a succeeded")
	assert.Equal(t, 0, holds.get(""))

	require.Len(t, logs.matching(heldLine), 2, "one line per message held")
	end = logs.matching(endHeldLine)
	require.Len(t, end, 2)
	assert.Equal(t, "dead_lettered", end[1].fields["outcome"])
	assert.Equal(t, 3, end[1].fields["holds"])
	logs.mu.Lock()
	defer logs.mu.Unlock()
	for _, e := range logs.entries {
		u, _ := e.fields["message_uuid"].(string)
		assert.Less(t, len(u), 300, "%q logs a UUID of %d bytes", e.msg, len(u))
		assert.Contains(t, u, "[truncated, 102401 bytes]")
	}
}

// The same message delivered to two handlers (two subscriptions of one
// topic) is held by each on its own: a success in one does not end, and so
// restart, the other's hold (held here while the health check fails).
func TestBreakerHoldIsPerHandler(t *testing.T) {
	logs := &recordingLogger{}
	holds := newHoldCounter(t)
	var checks atomic.Int64
	b, err := middleware.NewBreaker(middleware.BreakerConfig{Backoff: time.Millisecond, MaxHoldTime: time.Hour, Logger: logs, OnHold: holds.onHold,
		HealthCheck: func(context.Context) error { checks.Add(1); return errors.New("database down") }})
	require.NoError(t, err)
	ps := gochannel.NewGoChannel(gochannel.Config{Persistent: true}, watermill.NopLogger{})
	dl, err := middleware.NewDeadLetter(middleware.DeadLetterConfig{Publisher: ps})
	require.NoError(t, err)
	r, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	require.NoError(t, err)
	r.AddMiddleware(dl.Middleware, b.Middleware)
	var stuckRuns atomic.Int64
	okDone := make(chan struct{})
	r.AddConsumerHandler("stuck", "orders", ps, func(*message.Message) error {
		stuckRuns.Add(1)
		return poison.Transient(errors.New("timeout"))
	})
	r.AddConsumerHandler("ok", "orders", ps, func(*message.Message) error {
		// succeed only once "stuck" holds the same message
		for holds.get("stuck") == 0 {
			time.Sleep(time.Millisecond)
		}
		close(okDone)
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = r.Run(ctx) }()
	<-r.Running()
	require.NoError(t, ps.Publish("orders", message.NewMessage("shared", nil)))
	<-okDone
	// Each redelivery of the held message checks the dependency (and does
	// not run the handler while it is down).
	after := checks.Load()
	waitFor(t, "more holds of stuck", func() bool { return checks.Load() > after+5 })
	assert.Equal(t, int64(1), stuckRuns.Load(), "stuck ran once: held, it waits for the health check")
	assert.Len(t, logs.matching(heldLine), 1, "stuck's hold went on through ok's success")
	assert.Empty(t, logs.matching(endHeldLine))
	assert.Equal(t, 1, holds.get("stuck"))
	assert.Equal(t, 0, holds.get("ok"))
}

// Each held delivery's consumer span carries the event "antidote.held":
// which hold it is, since when the message is held and by when it is
// decided; a delivery that is not held has none.
func TestBreakerHeldSpanEvent(t *testing.T) {
	r := newTraceRig(t)
	tracing, err := middleware.NewTracing(middleware.TracingConfig{TracerProvider: r.tp})
	require.NoError(t, err)
	dl, err := middleware.NewDeadLetter(middleware.DeadLetterConfig{Publisher: r.pubSub})
	require.NoError(t, err)
	b, err := middleware.NewBreaker(middleware.BreakerConfig{Backoff: time.Millisecond, MaxHoldTime: time.Hour})
	require.NoError(t, err)
	var runs atomic.Int32
	done := make(chan struct{})
	r.run(t, r.pubSub, func(*message.Message) error {
		if runs.Add(1) <= 3 {
			return poison.Transient(errors.New("connection refused"))
		}
		close(done)
		return nil
	}, tracing.Middleware, dl.Middleware, b.Middleware)
	r.publish(t, "{}")
	<-done
	spans := r.waitSpans(t, "process orders", 4)
	var held []map[attribute.Key]attribute.Value
	for _, s := range spans {
		for _, e := range s.Events() {
			if e.Name == middleware.EventHeld {
				held = append(held, eventAttrs(e))
				assert.Equal(t, "deferred", attrs(s)["antidote.outcome"].AsString())
			}
		}
	}
	require.Len(t, held, 3, "one event per held delivery, none on the processed one")
	since := held[0][antidote.AttrHeldSince].AsString()
	for i, a := range held {
		assert.Equal(t, int64(i+1), a[antidote.AttrHold].AsInt64())
		assert.Equal(t, since, a[antidote.AttrHeldSince].AsString(), "held since the first hold")
		s, err := time.Parse(time.RFC3339Nano, a[antidote.AttrHeldSince].AsString())
		require.NoError(t, err)
		d, err := time.Parse(time.RFC3339Nano, a[antidote.AttrDecideBy].AsString())
		require.NoError(t, err)
		assert.Equal(t, time.Hour, d.Sub(s))
		assert.Equal(t, "waiting for other messages to succeed", a[antidote.AttrHoldReason].AsString())
	}
}

// The dependency comes back between a held message's failure and the
// health check that judges it: that failure was the outage's, not the
// message's, so it must not be dead-lettered. A held message runs again
// only once the health check passes, so a failure is judged its own only
// with the check passing before and after the run. (Before, under load,
// the check after the failure saw the dependency back and sent a healthy
// message to the DLQ.)
func TestBreakerRecoveryBetweenFailureAndCheck(t *testing.T) {
	var down atomic.Bool
	down.Store(true)
	var checks atomic.Int64
	b, err := middleware.NewBreaker(middleware.BreakerConfig{
		Backoff: time.Millisecond, MaxHoldTime: time.Hour,
		HealthCheck: func(context.Context) error {
			// The third check finds the dependency back, right after a
			// failure it caused.
			if checks.Add(1) >= 3 {
				down.Store(false)
			}
			if down.Load() {
				return errors.New("database down")
			}
			return nil
		},
	})
	require.NoError(t, err)
	ps := gochannel.NewGoChannel(gochannel.Config{Persistent: true}, watermill.NopLogger{})
	var runs, processed atomic.Int64
	dlq := breakerHoldRouter(t, ps, b, "recovery.dlq", map[string]message.NoPublishHandlerFunc{
		"recovery": func(*message.Message) error {
			runs.Add(1)
			if down.Load() {
				return poison.Transient(errors.New("connection refused"))
			}
			processed.Add(1)
			return nil
		},
	})
	require.NoError(t, ps.Publish("recovery", message.NewMessage("m1", nil)))
	waitFor(t, "processed once the dependency is back", func() bool { return processed.Load() == 1 })
	select {
	case l := <-dlq:
		l.Ack()
		t.Fatalf("dead-lettered after %d runs (%d health checks): %s", runs.Load(), checks.Load(), l.Metadata.Get(poison.KeyError))
	default:
	}
	// Runs: the first failure (held, no check), then only after a passing
	// check: the successful one.
	assert.Equal(t, int64(2), runs.Load(), "the handler runs only when the health check passes")
}
