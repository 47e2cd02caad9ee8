package middleware_test

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/poison"
	"github.com/antidote-mq/antidote/telemetry"
)

// A poison pill's trace: the producer's publish, the consumer span with its
// failed attempt, and the DLQ publish, all in one trace.
func ExampleNewTracing() {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec)) // in a service: telemetry.SetupFromEnv
	pubSub := gochannel.NewGoChannel(gochannel.Config{}, watermill.NopLogger{})
	defer pubSub.Close()
	letters, _ := pubSub.Subscribe(context.Background(), "orders.dlq")

	// One decorated publisher for the producer and the DLQ.
	pub, _ := telemetry.NewPublisher(pubSub, telemetry.PublisherConfig{TracerProvider: tp, System: "kafka"})
	tracing, _ := middleware.NewTracing(middleware.TracingConfig{TracerProvider: tp, System: "kafka", ConsumerGroup: "billing"})
	deadLetter, _ := middleware.NewDeadLetter(middleware.DeadLetterConfig{Publisher: pub})
	retry, _ := middleware.NewRetry(middleware.RetryConfig{})

	router, _ := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	router.AddMiddleware(tracing.Middleware, deadLetter.Middleware, retry.Middleware, middleware.Recover)
	router.AddConsumerHandler("orders", "orders", pubSub, func(msg *message.Message) error {
		return poison.Invalidf("closing brace missing")
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = router.Run(ctx) }()
	<-router.Running()

	_ = pub.Publish("orders", message.NewMessage(watermill.NewUUID(), []byte(`{"user_id":1`)))
	letter := <-letters
	letter.Ack()
	for len(rec.Ended()) < 3 { // the consumer span ends just after the letter is out
		time.Sleep(time.Millisecond)
	}

	spans := rec.Ended()
	sort.Slice(spans, func(i, j int) bool { return spans[i].Name() < spans[j].Name() })
	for _, s := range spans {
		errorType := "-"
		for _, a := range s.Attributes() {
			if a.Key == "error.type" {
				errorType = a.Value.AsString()
			}
		}
		fmt.Printf("%-15s %-8s status=%-5s error.type=%-9s events=%d same trace=%v\n", s.Name(), s.SpanKind(), s.Status().Code,
			errorType, len(s.Events()), s.SpanContext().TraceID() == spans[0].SpanContext().TraceID())
	}
	// Output:
	// process orders  consumer status=Error error.type=permanent events=2 same trace=true
	// send orders     producer status=Unset error.type=-         events=0 same trace=true
	// send orders.dlq producer status=Unset error.type=-         events=0 same trace=true
}
