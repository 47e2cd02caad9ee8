package middleware_test

import (
	"context"
	"errors"
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
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/poison"
	"github.com/antidote-mq/antidote/router"
)

func collect(t *testing.T, reader *sdkmetric.ManualReader) metricdata.ResourceMetrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(t, reader.Collect(context.Background(), &rm))
	return rm
}

func findMetric(rm metricdata.ResourceMetrics, name string) (metricdata.Metrics, bool) {
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == name {
				return m, true
			}
		}
	}
	return metricdata.Metrics{}, false
}

func matches(set attribute.Set, want map[string]string) bool {
	if set.Len() != len(want) {
		return false
	}
	for k, v := range want {
		got, ok := set.Value(attribute.Key(k))
		if !ok || got.String() != v {
			return false
		}
	}
	return true
}

// value returns the sum (counters), last value (gauges) or count
// (histograms) of the series of name with exactly the attributes want; 0
// when absent.
func value(t *testing.T, rm metricdata.ResourceMetrics, name string, want map[string]string) float64 {
	t.Helper()
	m, ok := findMetric(rm, name)
	if !ok {
		return 0
	}
	switch d := m.Data.(type) {
	case metricdata.Sum[int64]:
		for _, p := range d.DataPoints {
			if matches(p.Attributes, want) {
				return float64(p.Value)
			}
		}
	case metricdata.Sum[float64]:
		for _, p := range d.DataPoints {
			if matches(p.Attributes, want) {
				return p.Value
			}
		}
	case metricdata.Gauge[int64]:
		for _, p := range d.DataPoints {
			if matches(p.Attributes, want) {
				return float64(p.Value)
			}
		}
	case metricdata.Histogram[float64]:
		for _, p := range d.DataPoints {
			if matches(p.Attributes, want) {
				return float64(p.Count)
			}
		}
	default:
		t.Fatalf("metric %s has unexpected data %T", name, m.Data)
	}
	return 0
}

// The standard stack with Metrics and Tracing on a real router: each
// delivery gets exactly one outcome, retries and dead letters are counted
// without any wiring, and a duplicate is counted through RecordDuplicate.
func TestMetricsCountsOutcomesThroughTheRouter(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	metrics, err := middleware.NewMetrics(middleware.MetricsConfig{MeterProvider: mp, System: "gochannel", ConsumerGroup: "billing"})
	require.NoError(t, err)
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	tracing, err := middleware.NewTracing(middleware.TracingConfig{TracerProvider: tp})
	require.NoError(t, err)

	pubSub := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 16}, watermill.NopLogger{})
	defer pubSub.Close()
	dl, err := middleware.NewDeadLetter(middleware.DeadLetterConfig{Publisher: pubSub})
	require.NoError(t, err)
	retry, err := middleware.NewRetry(middleware.RetryConfig{InitialInterval: time.Millisecond})
	require.NoError(t, err)

	var (
		mu      sync.Mutex
		flaky   int
		settled = make(chan string, 16)
	)
	router, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	require.NoError(t, err)
	router.AddMiddleware(tracing.Middleware, metrics.Middleware, dl.Middleware, retry.Middleware, middleware.Recover)
	router.AddMiddleware(func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			out, err := h(msg)
			settled <- string(msg.Payload)
			return out, err
		}
	})
	router.AddConsumerHandler("orders-handler", "orders", pubSub, func(msg *message.Message) error {
		switch string(msg.Payload) {
		case "bad":
			return poison.Invalidf("malformed")
		case "panic":
			panic("nil map")
		case "flaky":
			mu.Lock()
			defer mu.Unlock()
			if flaky++; flaky <= 2 {
				return poison.Transient(errors.New("db down"))
			}
		case "dup":
			// What IdempotencyConfig.OnDuplicate wired to RecordDuplicate does.
			metrics.RecordDuplicate(msg.Context(), "")
		}
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = router.Run(ctx) }()
	<-router.Running()

	payloads := []string{"ok", "ok", "bad", "panic", "flaky", "dup", "ok"}
	for _, p := range payloads {
		require.NoError(t, pubSub.Publish("orders", message.NewMessage(watermill.NewUUID(), []byte(p))))
	}
	// The innermost-but-one tap sees the chain below Metrics finish; wait
	// for the outermost to record by polling the histogram count.
	for range payloads {
		<-settled
	}
	h := map[string]string{"handler": "orders-handler"}
	require.Eventually(t, func() bool {
		rm := collect(t, reader)
		total := 0.0
		for _, o := range []string{"processed", "dead_lettered", "duplicate"} {
			total += value(t, rm, middleware.MetricHandlerDuration, map[string]string{"handler": "orders-handler", "outcome": o})
		}
		return total == float64(len(payloads))
	}, 5*time.Second, 5*time.Millisecond)

	rm := collect(t, reader)
	assert.Equal(t, 4.0, value(t, rm, middleware.MetricProcessed, h), "ok ×3 and flaky")
	assert.Equal(t, 1.0, value(t, rm, middleware.MetricDeadLettered, map[string]string{"handler": "orders-handler", "reason": "permanent"}))
	assert.Equal(t, 1.0, value(t, rm, middleware.MetricDeadLettered, map[string]string{"handler": "orders-handler", "reason": "panic"}))
	assert.Equal(t, 2.0, value(t, rm, middleware.MetricRetried, h), "flaky was retried twice, counted by Retry itself")
	assert.Equal(t, 1.0, value(t, rm, middleware.MetricDuplicates, h))
	assert.Equal(t, 0.0, value(t, rm, middleware.MetricFailed, map[string]string{"handler": "orders-handler", "outcome": "failed"}))
	assert.Equal(t, 4.0, value(t, rm, middleware.MetricHandlerDuration, map[string]string{"handler": "orders-handler", "outcome": "processed"}))
	assert.Equal(t, 2.0, value(t, rm, middleware.MetricHandlerDuration, map[string]string{"handler": "orders-handler", "outcome": "dead_lettered"}))
	assert.Equal(t, 1.0, value(t, rm, middleware.MetricHandlerDuration, map[string]string{"handler": "orders-handler", "outcome": "duplicate"}))

	// The semconv pair, by destination, error.type the DLQ reason.
	sc := func(errorType string) map[string]string {
		m := map[string]string{"messaging.system": "gochannel", "messaging.destination.name": "orders",
			"messaging.operation.name": "process", "messaging.operation.type": "process", "messaging.consumer.group.name": "billing"}
		if errorType != "" {
			m["error.type"] = errorType
		}
		return m
	}
	assert.Equal(t, 5.0, value(t, rm, middleware.MetricConsumedMessages, sc("")), "ok ×3, flaky, dup")
	assert.Equal(t, 1.0, value(t, rm, middleware.MetricConsumedMessages, sc("permanent")))
	assert.Equal(t, 1.0, value(t, rm, middleware.MetricConsumedMessages, sc("panic")))
	assert.Equal(t, 5.0, value(t, rm, middleware.MetricProcessDuration, sc("")))
	assert.Equal(t, 1.0, value(t, rm, middleware.MetricProcessDuration, sc("permanent")))

	// Tracing read the same outcome.
	var outcomes []string
	for _, s := range rec.Ended() {
		outcomes = append(outcomes, attrs(s)["antidote.outcome"].AsString())
	}
	assert.ElementsMatch(t, []string{"processed", "processed", "dead_lettered", "dead_lettered", "processed", "duplicate", "processed"}, outcomes)
	for _, s := range rec.Ended() {
		if attrs(s)["antidote.outcome"].AsString() == "duplicate" {
			assert.Equal(t, []string{"duplicate skipped"}, eventNames(s))
		}
	}
}

// Errors that reach the router are nacks: outcome "failed", or "deferred"
// for the breaker's poison.Defer. Each message fails once, then succeeds on
// redelivery.
func TestMetricsFailedAndDeferredDeliveries(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	metrics, err := middleware.NewMetrics(middleware.MetricsConfig{MeterProvider: mp})
	require.NoError(t, err)
	pubSub := gochannel.NewGoChannel(gochannel.Config{}, watermill.NopLogger{})
	defer pubSub.Close()
	router, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	require.NoError(t, err)
	router.AddMiddleware(metrics.Middleware)
	var mu sync.Mutex
	seen := map[string]bool{}
	done := make(chan struct{}, 2)
	router.AddConsumerHandler("orders-handler", "orders", pubSub, func(msg *message.Message) error {
		p := string(msg.Payload)
		mu.Lock()
		defer mu.Unlock()
		if !seen[p] {
			seen[p] = true
			if p == "deferred" {
				return poison.Defer(errors.New("breaker open"))
			}
			return errors.New("dlq down")
		}
		done <- struct{}{}
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = router.Run(ctx) }()
	<-router.Running()
	for _, p := range []string{"failed", "deferred"} {
		require.NoError(t, pubSub.Publish("orders", message.NewMessage(watermill.NewUUID(), []byte(p))))
		<-done
	}
	h := map[string]string{"handler": "orders-handler"}
	require.Eventually(t, func() bool { return value(t, collect(t, reader), middleware.MetricProcessed, h) == 2 }, 5*time.Second, 5*time.Millisecond)
	rm := collect(t, reader)
	assert.Equal(t, 1.0, value(t, rm, middleware.MetricFailed, map[string]string{"handler": "orders-handler", "outcome": "failed"}))
	assert.Equal(t, 1.0, value(t, rm, middleware.MetricFailed, map[string]string{"handler": "orders-handler", "outcome": "deferred"}))
	assert.Equal(t, 1.0, value(t, rm, middleware.MetricHandlerDuration, map[string]string{"handler": "orders-handler", "outcome": "deferred"}))
	failed := map[string]string{"messaging.destination.name": "orders", "messaging.operation.name": "process",
		"messaging.operation.type": "process", "error.type": "*errors.errorString"}
	assert.Equal(t, 2.0, value(t, rm, middleware.MetricProcessDuration, failed), "error.type is the error's class")
	delete(failed, "error.type")
	assert.Equal(t, 2.0, value(t, rm, middleware.MetricConsumedMessages, failed))
}

func TestMetricsHooksAndDLQDepth(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	var depthCalls int
	metrics, err := middleware.NewMetrics(middleware.MetricsConfig{
		MeterProvider: mp,
		DLQDepth: func(context.Context) (map[string]int64, error) {
			depthCalls++
			return map[string]int64{"orders.dlq": 7, "payments.dlq": 0}, nil
		},
		ConsumerLag: func(context.Context) (map[string]int64, error) {
			return map[string]int64{"orders": 42}, nil
		},
	})
	require.NoError(t, err)
	ctx := context.Background()
	metrics.RecordThrottleWait(ctx, "orders-handler", 1500*time.Millisecond)
	metrics.RecordThrottleWait(ctx, "orders-handler", 500*time.Millisecond)
	metrics.RecordBackpressureBlock(ctx, "orders", 2*time.Second)
	metrics.RecordBackpressureBlock(ctx, "orders", 0) // refused at once: a block, no wait
	metrics.RecordBreakerState(ctx, "closed", "open")
	metrics.RecordDuplicate(ctx, "orders-handler")
	metrics.RecordBreakerHold(ctx, "orders-handler", true)
	metrics.RecordBreakerHold(ctx, "orders-handler", true)
	metrics.RecordBreakerHold(ctx, "payments-handler", true)
	metrics.RecordBreakerHold(ctx, "orders-handler", false)

	rm := collect(t, reader)
	assert.Equal(t, 2.0, value(t, rm, middleware.MetricThrottleWait, map[string]string{"handler": "orders-handler"}))
	assert.Equal(t, 2.0, value(t, rm, middleware.MetricBackpressure, map[string]string{"topic": "orders"}))
	assert.Equal(t, 2.0, value(t, rm, middleware.MetricBackpressureWait, map[string]string{"topic": "orders"}))
	assert.Equal(t, 2.0, value(t, rm, middleware.MetricBreakerState, map[string]string{}), "open")
	assert.Equal(t, 1.0, value(t, rm, middleware.MetricBreakerChanges, map[string]string{"from": "closed", "to": "open"}))
	assert.Equal(t, 1.0, value(t, rm, middleware.MetricDuplicates, map[string]string{"handler": "orders-handler"}))
	assert.Equal(t, 1.0, value(t, rm, middleware.MetricBreakerHeld, map[string]string{"handler": "orders-handler"}))
	assert.Equal(t, 1.0, value(t, rm, middleware.MetricBreakerHeld, map[string]string{"handler": "payments-handler"}))
	assert.Equal(t, 7.0, value(t, rm, middleware.MetricDLQDepth, map[string]string{"topic": "orders.dlq"}))
	assert.Equal(t, 1, depthCalls)
	assert.Equal(t, 42.0, value(t, rm, middleware.MetricConsumerLag, map[string]string{"topic": "orders"}))

	metrics.RecordBreakerState(ctx, "open", "half-open")
	assert.Equal(t, 1.0, value(t, collect(t, reader), middleware.MetricBreakerState, map[string]string{}), "half-open")

	require.NoError(t, metrics.Close())
	_, present := findMetric(collect(t, reader), middleware.MetricDLQDepth)
	assert.False(t, present, "after Close the depth callback is no longer read")
	_, present = findMetric(collect(t, reader), middleware.MetricConsumerLag)
	assert.False(t, present, "nor the lag callback")
	assert.Equal(t, 2, depthCalls, "read at the two collections before Close only")

	// A nil *Metrics is a valid no-op, so hooks can be wired unconditionally.
	var none *middleware.Metrics
	none.RecordDuplicate(ctx, "h")
	none.RecordThrottleWait(ctx, "h", time.Second)
	none.RecordBackpressureBlock(ctx, "t", time.Second)
	none.RecordBreakerState(ctx, "closed", "open")
	none.RecordBreakerHold(ctx, "h", true)
	assert.NoError(t, none.Close())
}

// router.New wires BreakerConfig.OnHold to the gauge antidote.breaker.held
// (keeping the caller's own OnHold): messages held show up by handler while
// the health check fails, and the gauge returns to 0 once they are
// processed.
func TestMetricsBreakerHeldThroughRouter(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	ps := gochannel.NewGoChannel(gochannel.Config{Persistent: true}, watermill.NopLogger{})
	defer ps.Close()
	var up atomic.Bool
	var userHolds atomic.Int64
	r, err := router.New(router.Config{CrashLoopGuard: middleware.CrashLoopGuardConfig{Tracker: poison.MustNewMemoryDeliveryTracker(poison.MemoryDeliveryTrackerConfig{})},
		DeadLetter:     middleware.DeadLetterConfig{Publisher: ps},
		Metrics:        middleware.MetricsConfig{MeterProvider: mp},
		DisableTracing: true,
		Retry:          middleware.RetryConfig{InitialInterval: time.Millisecond, MaxAttempts: 1},
		Breaker: middleware.BreakerConfig{
			Backoff: time.Millisecond, MaxHoldTime: time.Hour,
			HealthCheck: func(context.Context) error {
				if up.Load() {
					return nil
				}
				return errors.New("database down")
			},
			OnHold: func(_ string, held bool) {
				if held {
					userHolds.Add(1)
				}
			},
		},
	})
	require.NoError(t, err)
	var processed atomic.Int64
	r.AddConsumerHandler("orders-handler", "orders", ps, func(*message.Message) error {
		if !up.Load() {
			return poison.Transient(errors.New("connection refused"))
		}
		processed.Add(1)
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = r.Run(ctx) }()
	<-r.Running()
	for range 3 {
		require.NoError(t, ps.Publish("orders", message.NewMessage(watermill.NewUUID(), nil)))
	}
	h := map[string]string{"handler": "orders-handler"}
	require.Eventually(t, func() bool { return value(t, collect(t, reader), middleware.MetricBreakerHeld, h) == 3 },
		10*time.Second, 5*time.Millisecond, "three messages held while the health check fails")
	up.Store(true)
	require.Eventually(t, func() bool { return processed.Load() == 3 }, 10*time.Second, 5*time.Millisecond)
	require.Eventually(t, func() bool { return value(t, collect(t, reader), middleware.MetricBreakerHeld, h) == 0 },
		10*time.Second, 5*time.Millisecond, "no message held once they are processed")
	assert.Equal(t, int64(3), userHolds.Load(), "the caller's OnHold is still called")
}

func TestMetricsConfigValidate(t *testing.T) {
	assert.NoError(t, middleware.MetricsConfig{}.Validate())
	err := middleware.MetricsConfig{DurationBuckets: []float64{1, 0.5}}.Validate()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "strictly ascending")
	_, err = middleware.NewMetrics(middleware.MetricsConfig{DurationBuckets: []float64{1, 1}})
	assert.Error(t, err)
}
