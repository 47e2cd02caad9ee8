package middleware_test

import (
	"context"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/antidote-mq/antidote/middleware"
)

// discardExporter receives batches and drops them: the cost measured is the
// SDK's (span creation, attributes, the batch queue), not an exporter's I/O.
type discardExporter struct{}

func (discardExporter) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discardExporter) Shutdown(context.Context) error                             { return nil }

// benchRoutedContext captures a message context from a real router, so the
// benchmark sees the topic and handler name as in production.
func benchRoutedContext(b *testing.B) context.Context {
	b.Helper()
	pubSub := gochannel.NewGoChannel(gochannel.Config{}, watermill.NopLogger{})
	defer pubSub.Close()
	r, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	if err != nil {
		b.Fatal(err)
	}
	got := make(chan context.Context, 1)
	r.AddConsumerHandler("orders-handler", "orders", pubSub, func(msg *message.Message) error {
		got <- context.WithoutCancel(msg.Context())
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = r.Run(ctx) }()
	<-r.Running()
	if err := pubSub.Publish("orders", message.NewMessage("x", nil)); err != nil {
		b.Fatal(err)
	}
	return <-got
}

// BenchmarkTracing is the Tracing middleware's overhead per delivery of a
// message that carries a traceparent, around a no-op handler.
func BenchmarkTracing(b *testing.B) {
	base := benchRoutedContext(b)
	noopHandler := func(*message.Message) ([]*message.Message, error) { return nil, nil }

	newMsg := func() *message.Message {
		msg := message.NewMessage(watermill.NewUUID(), []byte(`{"user_id":1,"msg":"Hello World"}`))
		msg.Metadata.Set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
		return msg
	}
	run := func(b *testing.B, h message.HandlerFunc) {
		msg := newMsg()
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			msg.SetContext(base)
			if _, err := h(msg); err != nil {
				b.Fatal(err)
			}
		}
	}
	withProvider := func(tp trace.TracerProvider) message.HandlerFunc {
		t, err := middleware.NewTracing(middleware.TracingConfig{TracerProvider: tp, System: "kafka", ConsumerGroup: "billing"})
		if err != nil {
			b.Fatal(err)
		}
		return t.Middleware(noopHandler)
	}

	b.Run("handler-alone", func(b *testing.B) { run(b, noopHandler) })
	b.Run("noop-provider", func(b *testing.B) { run(b, withProvider(tracenoop.NewTracerProvider())) })
	b.Run("sdk-sampled-batch", func(b *testing.B) {
		tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(discardExporter{}))
		defer func() { _ = tp.Shutdown(context.Background()) }()
		run(b, withProvider(tp))
	})
	b.Run("sdk-not-sampled", func(b *testing.B) {
		// A root sampler that drops everything (e.g. OTEL_TRACES_SAMPLER=always_off).
		tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.NeverSample()), sdktrace.WithBatcher(discardExporter{}))
		defer func() { _ = tp.Shutdown(context.Background()) }()
		run(b, withProvider(tp))
	})
}

// BenchmarkMetrics is the Metrics middleware's overhead per delivery.
func BenchmarkMetrics(b *testing.B) {
	base := benchRoutedContext(b)
	noopHandler := func(*message.Message) ([]*message.Message, error) { return nil, nil }
	run := func(b *testing.B, mp metric.MeterProvider) {
		m, err := middleware.NewMetrics(middleware.MetricsConfig{MeterProvider: mp})
		if err != nil {
			b.Fatal(err)
		}
		h := m.Middleware(noopHandler)
		msg := message.NewMessage(watermill.NewUUID(), nil)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			msg.SetContext(base)
			if _, err := h(msg); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("noop-provider", func(b *testing.B) { run(b, metricnoop.NewMeterProvider()) })
	b.Run("sdk", func(b *testing.B) {
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
		defer func() { _ = mp.Shutdown(context.Background()) }()
		run(b, mp)
	})
}
