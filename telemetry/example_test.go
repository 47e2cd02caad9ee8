package telemetry_test

import (
	"context"
	"fmt"
	"log"
	"net/http"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/telemetry"
)

// A service's setup: providers from the OTEL_* environment (no-ops when no
// endpoint is set), handed to the middleware and the publisher decorator.
func ExampleSetupFromEnv() {
	ctx := context.Background()
	tp, mp, shutdown, err := telemetry.SetupFromEnv(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer func() { _ = shutdown(context.Background()) }() // flushes the last spans

	tracing, _ := middleware.NewTracing(middleware.TracingConfig{TracerProvider: tp, System: "kafka", ConsumerGroup: "billing"})
	metrics, _ := middleware.NewMetrics(middleware.MetricsConfig{MeterProvider: mp})
	_, _ = tracing, metrics // router.AddMiddleware(tracing.Middleware, metrics.Middleware, ...)
}

// Metrics for Prometheus to scrape, e.g. behind an example's --metrics-addr.
func ExampleNewPrometheusMeterProvider() {
	mp, handler, err := telemetry.NewPrometheusMeterProvider()
	if err != nil {
		log.Fatal(err)
	}
	metrics, _ := middleware.NewMetrics(middleware.MetricsConfig{MeterProvider: mp})
	_ = metrics
	mux := http.NewServeMux()
	mux.Handle("/metrics", handler)
	_ = &http.Server{Addr: "127.0.0.1:9464", Handler: mux} // ListenAndServe in a real program
}

// The producer side: the decorator starts "send <topic>" as a child of
// the span in msg.Context() and writes its traceparent into the metadata.
func ExampleNewPublisher() {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	pubSub := gochannel.NewGoChannel(gochannel.Config{}, watermill.NopLogger{})
	defer pubSub.Close()

	pub, err := telemetry.NewPublisher(pubSub, telemetry.PublisherConfig{TracerProvider: tp, System: "kafka"})
	if err != nil {
		log.Fatal(err)
	}
	ctx, span := tp.Tracer("shop").Start(context.Background(), "POST /orders")
	msg := message.NewMessage(watermill.NewUUID(), []byte(`{"user_id":1}`))
	msg.SetContext(ctx)
	if err := pub.Publish("orders", msg); err != nil {
		log.Fatal(err)
	}
	span.End()

	fmt.Println("traceparent in metadata:", msg.Metadata.Get("traceparent") != "")
	for _, s := range rec.Ended() {
		fmt.Println(s.Name(), "-", s.SpanKind(), "- same trace:", s.SpanContext().TraceID() == span.SpanContext().TraceID())
	}
	// Output:
	// traceparent in metadata: true
	// send orders - producer - same trace: true
	// POST /orders - internal - same trace: true
}
