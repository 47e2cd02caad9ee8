// Package bench holds side-by-side benchmarks of Antidote against bare
// Watermill. See docs/benchmarks.md for the figures and how they were made.
//
//	go test -run '^$' -bench 'BenchmarkOverhead' -benchmem ./bench/
package bench

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	wmiddleware "github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/antidote-mq/antidote/idempotency"
	"github.com/antidote-mq/antidote/internal/stack"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/poison"
	"github.com/antidote-mq/antidote/router"
)

const benchTraceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

var benchPayload = []byte(`{"user_id":1,"msg":"Hello World"}`)

func noopHandler(*message.Message) ([]*message.Message, error) { return nil, nil }

// discardPublisher accepts DLQ letters and drops them (none are sent on the
// happy path measured here).
type discardPublisher struct{}

func (discardPublisher) Publish(string, ...*message.Message) error { return nil }
func (discardPublisher) Close() error                              { return nil }

// routedContext captures a message context from a real Watermill router on
// gochannel, so the direct calls see the topic and handler name the router
// sets (watermill exposes no setter for them).
func routedContext(b *testing.B) context.Context {
	b.Helper()
	pubSub := gochannel.NewGoChannel(gochannel.Config{}, watermill.NopLogger{})
	defer pubSub.Close()
	r, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	if err != nil {
		b.Fatal(err)
	}
	got := make(chan context.Context, 1)
	r.AddConsumerHandler("orders-handler", "orders", pubSub, func(msg *message.Message) error {
		got <- &detachedContext{msg.Context()}
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = r.Run(ctx) }()
	<-r.Running()
	if err := pubSub.Publish("orders", message.NewMessage("x", nil)); err != nil {
		b.Fatal(err)
	}
	c := <-got
	if message.SubscribeTopicFromCtx(c) != "orders" || message.HandlerNameFromCtx(c) != "orders-handler" {
		b.Fatal("captured context lacks topic/handler")
	}
	return c
}

// detachedContext keeps a context's values but not its cancellation, like
// context.WithoutCancel, as a pointer type: context.WithoutCancel's
// Value boxes its receiver, one allocation per lookup that reaches it,
// which a router's message context does not cost.
type detachedContext struct{ parent context.Context }

func (c *detachedContext) Deadline() (time.Time, bool) { return time.Time{}, false }
func (c *detachedContext) Done() <-chan struct{}       { return nil }
func (c *detachedContext) Err() error                  { return nil }
func (c *detachedContext) Value(key any) any           { return c.parent.Value(key) }

// pieces builds each middleware of the default stack as router.New would,
// with no-op OTel providers and in-memory stores.
type pieces struct {
	tracing, metrics, deliveriesCheap, deliveriesDefault,
	deadLetter, breaker, retry, idempotency message.HandlerMiddleware
	tracingGlobal, metricsGlobal message.HandlerMiddleware
}

func newPieces(b *testing.B) pieces {
	b.Helper()
	must := func(err error) {
		if err != nil {
			b.Fatal(err)
		}
	}
	tr, err := middleware.NewTracing(middleware.TracingConfig{TracerProvider: tracenoop.NewTracerProvider()})
	must(err)
	me, err := middleware.NewMetrics(middleware.MetricsConfig{MeterProvider: metricnoop.NewMeterProvider()})
	must(err)
	trG, err := middleware.NewTracing(middleware.TracingConfig{})
	must(err)
	meG, err := middleware.NewMetrics(middleware.MetricsConfig{})
	must(err)
	dl, err := middleware.NewDeadLetter(middleware.DeadLetterConfig{Publisher: discardPublisher{}})
	must(err)
	cheap, err := middleware.NewCrashLoopGuard(middleware.CrashLoopGuardConfig{
		Tracker:    poison.MustNewMemoryDeliveryTracker(poison.MemoryDeliveryTrackerConfig{}),
		DeadLetter: dl,
		// The cheap path without Kafka offsets: only what the broker flags as
		// redelivered is counted; these messages are not, so no tracker write.
		MayBeRedelivery: middleware.BrokerSaysRedelivered,
	})
	must(err)
	def, err := middleware.NewCrashLoopGuard(middleware.CrashLoopGuardConfig{
		Tracker:    poison.MustNewMemoryDeliveryTracker(poison.MemoryDeliveryTrackerConfig{}),
		DeadLetter: dl,
		// Default detector: without Kafka offsets every delivery is counted
		// (Incr + Forget on the memory tracker).
	})
	must(err)
	br, err := middleware.NewBreaker(middleware.BreakerConfig{})
	must(err)
	re, err := middleware.NewRetry(middleware.RetryConfig{})
	must(err)
	id, err := middleware.NewIdempotency(middleware.IdempotencyConfig{Store: idempotency.MustNewMemoryStore(idempotency.MemoryStoreConfig{})})
	must(err)
	return pieces{
		tracing: tr.Middleware, metrics: me.Middleware,
		deliveriesCheap: cheap.Middleware, deliveriesDefault: def.Middleware,
		deadLetter: dl.Middleware, breaker: br.Middleware, retry: re.Middleware,
		idempotency:   id.Middleware,
		tracingGlobal: trG.Middleware, metricsGlobal: meG.Middleware,
	}
}

// chain wraps h so that mws[0] is outermost, as Router.AddMiddleware does.
func chain(h message.HandlerFunc, mws ...message.HandlerMiddleware) message.HandlerFunc {
	for i := len(mws) - 1; i >= 0; i-- {
		h = mws[i](h)
	}
	return h
}

// fullStack is router.New's default order with an idempotency store and the
// breaker, throttle off, no flood guard, no delayed retries:
// Recoverer → ReserveStack → Tracing → Metrics → CrashLoopGuard → DeadLetter → Breaker → Retry
// → Idempotency → Recover → handler.
func (p pieces) fullStack(deliveries message.HandlerMiddleware) message.HandlerFunc {
	return chain(noopHandler,
		wmiddleware.Recoverer, stack.Reserve, p.tracing, p.metrics, deliveries, p.deadLetter,
		p.breaker, p.retry, p.idempotency, middleware.Recover)
}

// keyRing is a ring of distinct UUIDs, ten times the memory idempotency
// store's default MaxKeys: a key comes back only long after the store
// evicted it, so every call is a first delivery (and the store runs full,
// evicting one key per message, as in a long-running consumer).
var keyRing = sync.OnceValue(func() []string {
	ring := make([]string, 1<<20)
	for i := range ring {
		ring[i] = fmt.Sprintf("m-%d", i)
	}
	return ring
})

// runDirect calls h b.N times with a message whose UUID (hence idempotency
// key) changes every time; the UUIDs are made before the timer starts.
func runDirect(b *testing.B, base context.Context, h message.HandlerFunc) {
	b.Helper()
	uuids := keyRing()
	msg := message.NewMessage("", benchPayload)
	msg.Metadata.Set("traceparent", benchTraceparent)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		msg.UUID = uuids[i&(len(uuids)-1)]
		msg.SetContext(base)
		if _, err := h(msg); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkOverheadDirect calls the composed chain directly (no broker, no
// router), with the context captured from a router ("routed": topic and
// handler name present) or context.Background() ("no-origin").
func BenchmarkOverheadDirect(b *testing.B) {
	routed := routedContext(b)
	ctxs := []struct {
		name string
		ctx  context.Context
	}{{"routed", routed}, {"no-origin", context.Background()}}

	for _, c := range ctxs {
		b.Run(c.name+"/handler-alone", func(b *testing.B) { runDirect(b, c.ctx, noopHandler) })
		b.Run(c.name+"/full-stack-cheap", func(b *testing.B) {
			p := newPieces(b)
			runDirect(b, c.ctx, p.fullStack(p.deliveriesCheap))
		})
		b.Run(c.name+"/full-stack-default-detector", func(b *testing.B) {
			p := newPieces(b)
			runDirect(b, c.ctx, p.fullStack(p.deliveriesDefault))
		})
	}
	alone := []struct {
		name string
		mw   func(pieces) message.HandlerMiddleware
	}{
		{"watermill-Recoverer", func(pieces) message.HandlerMiddleware { return wmiddleware.Recoverer }},
		{"Tracing-noop", func(p pieces) message.HandlerMiddleware { return p.tracing }},
		{"Metrics-noop", func(p pieces) message.HandlerMiddleware { return p.metrics }},
		{"CrashLoopGuard-memory-cheap", func(p pieces) message.HandlerMiddleware { return p.deliveriesCheap }},
		{"CrashLoopGuard-memory-default", func(p pieces) message.HandlerMiddleware { return p.deliveriesDefault }},
		{"DeadLetter", func(p pieces) message.HandlerMiddleware { return p.deadLetter }},
		{"Breaker", func(p pieces) message.HandlerMiddleware { return p.breaker }},
		{"Retry", func(p pieces) message.HandlerMiddleware { return p.retry }},
		{"Idempotency-memory", func(p pieces) message.HandlerMiddleware { return p.idempotency }},
		{"Recover", func(pieces) message.HandlerMiddleware { return middleware.Recover }},
		{"ReserveStack", func(pieces) message.HandlerMiddleware { return stack.Reserve }},
		// router.New's defaults when the program sets no provider: the
		// global ones, which cannot be told from real ones (one may be
		// installed later), so nothing is skipped.
		{"Tracing-global", func(p pieces) message.HandlerMiddleware { return p.tracingGlobal }},
		{"Metrics-global", func(p pieces) message.HandlerMiddleware { return p.metricsGlobal }},
	}
	for _, a := range alone {
		b.Run("routed/alone/"+a.name, func(b *testing.B) {
			p := newPieces(b)
			runDirect(b, routed, a.mw(p)(noopHandler))
		})
	}
}

// BenchmarkOverheadGoroutine calls the chain as Watermill's router does: in
// a new goroutine per message, which starts on the minimal stack, so a deep
// chain pays for growing (copying) that stack on every message; the
// difference to BenchmarkOverheadDirect is mostly that growth (see
// runtime.newstack in a CPU profile). One message at a time.
func BenchmarkOverheadGoroutine(b *testing.B) {
	routed := routedContext(b)
	run := func(b *testing.B, h message.HandlerFunc) {
		uuids := keyRing()
		msg := message.NewMessage("", benchPayload)
		msg.Metadata.Set("traceparent", benchTraceparent)
		done := make(chan error)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			msg.UUID = uuids[i&(len(uuids)-1)]
			msg.SetContext(routed)
			go func() {
				_, err := h(msg)
				done <- err
			}()
			if err := <-done; err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("handler-alone", func(b *testing.B) { run(b, noopHandler) })
	b.Run("full-stack-cheap", func(b *testing.B) {
		p := newPieces(b)
		run(b, p.fullStack(p.deliveriesCheap))
	})
}

// BenchmarkOverheadRouter runs a real message.Router on gochannel: b.N
// messages published, each consumed by a no-op handler, bare router against
// router.New (DLQ publisher, memory idempotency store, default everything
// else). ns/op is per message end to end, publish included; the allocations
// include gochannel's and the router's own.
func BenchmarkOverheadRouter(b *testing.B) {
	for _, variant := range []string{"bare", "antidote"} {
		b.Run(variant, func(b *testing.B) {
			pubSub := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 1024}, watermill.NopLogger{})
			defer pubSub.Close()
			var r *message.Router
			var err error
			if variant == "bare" {
				r, err = message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
			} else {
				r, err = router.New(router.Config{CrashLoopGuard: middleware.CrashLoopGuardConfig{Tracker: poison.MustNewMemoryDeliveryTracker(poison.MemoryDeliveryTrackerConfig{})},
					DeadLetter:  middleware.DeadLetterConfig{Publisher: pubSub},
					Idempotency: &middleware.IdempotencyConfig{Store: idempotency.MustNewMemoryStore(idempotency.MemoryStoreConfig{})},
				})
			}
			if err != nil {
				b.Fatal(err)
			}
			var handled atomic.Int64
			done := make(chan struct{}, 1)
			var want atomic.Int64
			r.AddConsumerHandler("orders-handler", "orders", pubSub, func(*message.Message) error {
				if handled.Add(1) == want.Load() {
					done <- struct{}{}
				}
				return nil
			})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go func() { _ = r.Run(ctx) }()
			<-r.Running()

			msgs := make([]*message.Message, b.N)
			for i := range msgs {
				msgs[i] = message.NewMessage(watermill.NewUUID(), benchPayload)
				msgs[i].Metadata.Set("traceparent", benchTraceparent)
			}
			want.Store(int64(b.N))
			b.ReportAllocs()
			b.ResetTimer()
			for _, m := range msgs {
				if err := pubSub.Publish("orders", m); err != nil {
					b.Fatal(err)
				}
			}
			select {
			case <-done:
			case <-time.After(5 * time.Minute):
				b.Fatalf("handled %d of %d", handled.Load(), b.N)
			}
			b.StopTimer()
			_ = r.Close()
		})
	}
}
