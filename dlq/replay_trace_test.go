package dlq_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/devkafka"
	"github.com/antidote-mq/antidote/dlq"
	"github.com/antidote-mq/antidote/hospital"
	"github.com/antidote-mq/antidote/internal/testenv/brokers"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/poison"
	"github.com/antidote-mq/antidote/telemetry"
)

// A message dead-lettered in one trace and replayed by the hospital with a
// decorated publisher: the replay's publish and consumer spans are a new
// trace that links to the trace the message died in. On the embedded Kafka
// broker, so the traceparent travels in real record headers.
func TestHospitalReplayLinksToTheOriginalTrace(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an in-process Kafka broker")
	}
	k, err := devkafka.Start(devkafka.Config{Partitions: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Close)
	cfg := adapters.Config{Broker: adapters.KindKafka, Kafka: adapters.KafkaConfig{Brokers: k.Addrs()}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b := brokers.Open(t, cfg)

	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	pcfg := telemetry.PublisherConfig{TracerProvider: tp, System: "kafka"}
	pub, err := telemetry.NewPublisher(b.Publisher, pcfg)
	if err != nil {
		t.Fatal(err)
	}
	tracing, _ := middleware.NewTracing(middleware.TracingConfig{TracerProvider: tp})
	dl, _ := middleware.NewDeadLetter(middleware.DeadLetterConfig{Publisher: pub})
	var fixed atomic.Bool
	processed := make(chan struct{}, 1)
	r, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	r.AddMiddleware(tracing.Middleware, dl.Middleware, middleware.Recover)
	topic := brokers.Topic("traced_")
	r.AddConsumerHandler("orders", topic, b.Subscriber, func(*message.Message) error {
		if !fixed.Load() {
			return poison.Permanent(errors.New("user 7 not found"))
		}
		processed <- struct{}{}
		return nil
	})
	go func() { _ = r.Run(ctx) }()
	<-r.Running()

	h, err := dlq.Open(ctx, dlq.Config{
		Adapters:      cfg,
		WrapPublisher: func(p message.Publisher) (message.Publisher, error) { return telemetry.NewPublisher(p, pcfg) },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()

	rootCtx, root := tp.Tracer("test").Start(ctx, "POST /orders")
	msg := message.NewMessage("order-7", []byte(`{"user_id":7}`))
	msg.SetContext(rootCtx)
	if err := pub.Publish(topic, msg); err != nil {
		t.Fatal(err)
	}
	root.End()
	original := root.SpanContext().TraceID()

	var letter hospital.Letter
	eventually(t, "the letter in the DLQ", func() (bool, string) {
		l, err := h.List(ctx, topic, hospital.LetterQuery{})
		if err != nil {
			t.Fatal(err)
		}
		if len(l) == 1 {
			letter = l[0]
		}
		return len(l) == 1, ""
	})
	if got := traceparentOf(letter.Metadata).TraceID(); got != original {
		t.Fatalf("the letter's traceparent is in trace %s, want %s", got, original)
	}

	fixed.Store(true)
	if res, err := h.Replay(ctx, topic, hospital.LetterQuery{}, dlq.ReplayOptions{}); err != nil || res.Replayed != 1 {
		t.Fatalf("replay: %+v %v", res, err)
	}
	select {
	case <-processed:
	case <-time.After(60 * time.Second):
		t.Fatal("the replay was not processed")
	}

	var replayPublish, replayProcess sdktrace.ReadOnlySpan
	eventually(t, "the replay's spans", func() (bool, string) {
		replayPublish, replayProcess = nil, nil
		for _, s := range rec.Ended() {
			if s.SpanContext().TraceID() == original {
				continue
			}
			switch s.Name() {
			case "send " + topic:
				replayPublish = s
			case "process " + topic:
				replayProcess = s
			}
		}
		return replayPublish != nil && replayProcess != nil, ""
	})
	if links := replayPublish.Links(); len(links) != 1 || links[0].SpanContext.TraceID() != original {
		t.Fatalf("%s: links %+v, want one to trace %s", replayPublish.Name(), links, original)
	}
	// The consumer span links to its producer (the replay's send) and to
	// the original trace.
	if links := replayProcess.Links(); len(links) != 2 || links[0].SpanContext.SpanID() != replayPublish.SpanContext().SpanID() ||
		links[1].SpanContext.TraceID() != original {
		t.Fatalf("%s: links %+v, want the replay's send %s, then trace %s", replayProcess.Name(), links, replayPublish.SpanContext().SpanID(), original)
	}
	if replayProcess.Parent().SpanID() != replayPublish.SpanContext().SpanID() {
		t.Fatal("the replay's consumer span is not the child of the replay's publish span")
	}
	if replayPublish.Parent().IsValid() {
		t.Fatal("the replay publish should be a root span")
	}
}

func traceparentOf(md message.Metadata) trace.SpanContext {
	return trace.SpanContextFromContext(telemetry.Extract(context.Background(), nil, &message.Message{Metadata: md}))
}
