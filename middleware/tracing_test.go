package middleware_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"strconv"
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
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/poison"
	"github.com/antidote-mq/antidote/telemetry"
)

// traceRig is a real Watermill router over gochannel with an SDK tracer
// provider recording every ended span, and publishers decorated as a user
// would: the producer's and the DLQ's.
type traceRig struct {
	rec    *tracetest.SpanRecorder
	tp     *sdktrace.TracerProvider
	pubSub *gochannel.GoChannel
	pub    *telemetry.Publisher
}

func newTraceRig(t *testing.T) *traceRig {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	pubSub := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 16}, watermill.NopLogger{})
	t.Cleanup(func() { _ = pubSub.Close() })
	pub, err := telemetry.NewPublisher(pubSub, telemetry.PublisherConfig{TracerProvider: tp, System: "gochannel"})
	require.NoError(t, err)
	return &traceRig{rec: rec, tp: tp, pubSub: pubSub, pub: pub}
}

// stack is the standard order: Tracing → DeadLetter → Retry → Recover.
func (r *traceRig) stack(t *testing.T, retry middleware.RetryConfig) []message.HandlerMiddleware {
	t.Helper()
	tracing, err := middleware.NewTracing(middleware.TracingConfig{TracerProvider: r.tp, System: "gochannel", ConsumerGroup: "billing"})
	require.NoError(t, err)
	dl, err := middleware.NewDeadLetter(middleware.DeadLetterConfig{Publisher: r.pub, ConsumerGroup: "billing"})
	require.NoError(t, err)
	if retry.InitialInterval == 0 {
		retry.InitialInterval = time.Millisecond
	}
	rt, err := middleware.NewRetry(retry)
	require.NoError(t, err)
	return []message.HandlerMiddleware{tracing.Middleware, dl.Middleware, rt.Middleware, middleware.Recover}
}

// run starts a router with one handler "orders" on topic "orders".
func (r *traceRig) run(t *testing.T, sub message.Subscriber, h message.NoPublishHandlerFunc, mws ...message.HandlerMiddleware) {
	t.Helper()
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 5 * time.Second}, watermill.NopLogger{})
	require.NoError(t, err)
	router.AddMiddleware(mws...)
	router.AddConsumerHandler("orders-handler", "orders", sub, h)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = router.Run(ctx) }()
	<-router.Running()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

// publish sends payload to "orders" from inside a producer's own span, as
// an instrumented HTTP handler would.
func (r *traceRig) publish(t *testing.T, payload string) (trace.SpanContext, *message.Message) {
	t.Helper()
	ctx, span := r.tp.Tracer("test-producer").Start(context.Background(), "POST /orders")
	defer span.End()
	msg := message.NewMessage(watermill.NewUUID(), []byte(payload))
	msg.SetContext(ctx)
	require.NoError(t, r.pub.Publish("orders", msg))
	return span.SpanContext(), msg
}

// waitSpans waits until n spans named name have ended and returns them.
func (r *traceRig) waitSpans(t *testing.T, name string, n int) []sdktrace.ReadOnlySpan {
	t.Helper()
	var found []sdktrace.ReadOnlySpan
	require.Eventually(t, func() bool {
		found = found[:0]
		for _, s := range r.rec.Ended() {
			if s.Name() == name {
				found = append(found, s)
			}
		}
		return len(found) >= n
	}, 5*time.Second, 5*time.Millisecond, "waiting for %d span(s) %q", n, name)
	return found
}

func attrs(s sdktrace.ReadOnlySpan) map[attribute.Key]attribute.Value {
	m := map[attribute.Key]attribute.Value{}
	for _, kv := range s.Attributes() {
		m[kv.Key] = kv.Value
	}
	return m
}

func eventNames(s sdktrace.ReadOnlySpan) []string {
	var names []string
	for _, e := range s.Events() {
		names = append(names, e.Name)
	}
	return names
}

func eventAttrs(e sdktrace.Event) map[attribute.Key]attribute.Value {
	m := map[attribute.Key]attribute.Value{}
	for _, kv := range e.Attributes {
		m[kv.Key] = kv.Value
	}
	return m
}

const semconvSchemaURL = "https://opentelemetry.io/schemas/1.43.0"

// traceparentOf reads the span context a message's metadata points at.
func traceparentOf(md message.Metadata) trace.SpanContext {
	return trace.SpanContextFromContext(propagation.TraceContext{}.Extract(context.Background(), antidote.MetadataCarrier(md)))
}

func TestTracingSuccessIsOneTraceFromProducerToConsumer(t *testing.T) {
	r := newTraceRig(t)
	handled := make(chan message.Metadata, 1)
	r.run(t, r.pubSub, func(msg *message.Message) error {
		// Everything below Tracing sees the consumer span.
		require.True(t, trace.SpanContextFromContext(msg.Context()).IsValid())
		handled <- msg.Metadata
		return nil
	}, r.stack(t, middleware.RetryConfig{})...)

	origin, msg := r.publish(t, `{"user_id":1}`)
	<-handled

	publish := r.waitSpans(t, "send orders", 1)[0]
	process := r.waitSpans(t, "process orders", 1)[0]

	assert.Equal(t, trace.SpanKindProducer, publish.SpanKind())
	assert.Equal(t, origin.TraceID(), publish.SpanContext().TraceID())
	assert.Equal(t, origin.SpanID(), publish.Parent().SpanID(), "the producer span's parent is msg.Context()'s span")
	pa := attrs(publish)
	assert.Equal(t, "gochannel", pa["messaging.system"].AsString())
	assert.Equal(t, "orders", pa["messaging.destination.name"].AsString())
	assert.Equal(t, "send", pa["messaging.operation.type"].AsString())
	assert.Equal(t, "send", pa["messaging.operation.name"].AsString())
	assert.Equal(t, msg.UUID, pa["messaging.message.id"].AsString())
	assert.Equal(t, semconvSchemaURL, publish.InstrumentationScope().SchemaURL)
	_, pubErr := pa["error.type"]
	assert.False(t, pubErr, "a successful send has no error.type")

	assert.Equal(t, trace.SpanKindConsumer, process.SpanKind())
	assert.Equal(t, origin.TraceID(), process.SpanContext().TraceID(), "one trace")
	assert.Equal(t, publish.SpanContext().SpanID(), process.Parent().SpanID(), "the consumer span's parent is the publish span")
	assert.True(t, process.Parent().IsRemote())
	ca := attrs(process)
	assert.Equal(t, "gochannel", ca["messaging.system"].AsString())
	assert.Equal(t, "orders", ca["messaging.destination.name"].AsString())
	assert.Equal(t, "process", ca["messaging.operation.type"].AsString())
	assert.Equal(t, "process", ca["messaging.operation.name"].AsString())
	assert.Equal(t, msg.UUID, ca["messaging.message.id"].AsString())
	assert.Equal(t, semconvSchemaURL, process.InstrumentationScope().SchemaURL)
	require.Len(t, process.Links(), 1, "the consumer span links to the producer's span too")
	assert.Equal(t, publish.SpanContext().SpanID(), process.Links()[0].SpanContext.SpanID())
	assert.Equal(t, publish.SpanContext().TraceID(), process.Links()[0].SpanContext.TraceID())
	assert.Equal(t, []attribute.KeyValue{attribute.String("opentracing.ref_type", "child_of")}, process.Links()[0].Attributes,
		"the link says the producer is the parent too (Jaeger would otherwise show FOLLOWS_FROM)")
	_, hasErr := ca["error.type"]
	assert.False(t, hasErr, "a processed message has no error.type")
	assert.Equal(t, "billing", ca["messaging.consumer.group.name"].AsString())
	assert.Equal(t, "orders-handler", ca["antidote.handler"].AsString())
	assert.Equal(t, "processed", ca["antidote.outcome"].AsString())
	assert.Equal(t, codes.Unset, process.Status().Code)
	assert.Empty(t, process.Events())
	_, hasPartition := ca["messaging.destination.partition.id"]
	assert.False(t, hasPartition, "no partition outside Kafka")
}

func TestTracingRetriesAreEventsOnTheConsumerSpan(t *testing.T) {
	r := newTraceRig(t)
	var calls atomic.Int32
	done := make(chan struct{})
	r.run(t, r.pubSub, func(msg *message.Message) error {
		if calls.Add(1) < 3 {
			return poison.Transient(errors.New("db unavailable"))
		}
		close(done)
		return nil
	}, r.stack(t, middleware.RetryConfig{MaxAttempts: 3})...)

	r.publish(t, `{"user_id":2}`)
	<-done
	process := r.waitSpans(t, "process orders", 1)[0]

	assert.Equal(t, []string{"attempt failed", "retry", "attempt failed", "retry"}, eventNames(process))
	first := eventAttrs(process.Events()[0])
	assert.Equal(t, int64(1), first["antidote.attempt"].AsInt64())
	assert.Equal(t, "db unavailable", first["exception.message"].AsString())
	assert.Equal(t, "*errors.errorString", first["exception.type"].AsString())
	assert.Equal(t, "transient", first["antidote.error_class"].AsString())
	assert.Equal(t, int64(2), eventAttrs(process.Events()[1])["antidote.attempt"].AsInt64(), "the retry event names the next attempt")
	assert.NotEmpty(t, eventAttrs(process.Events()[1])["antidote.retry_delay"].AsString())
	assert.Equal(t, codes.Unset, process.Status().Code, "the final outcome is a success")
	assert.Equal(t, "processed", attrs(process)["antidote.outcome"].AsString())
	assert.Len(t, r.waitSpans(t, "process orders", 1), 1, "retries are not spans of their own")
}

func TestTracingDeadLetterIsInTheSameTrace(t *testing.T) {
	r := newTraceRig(t)
	letters, err := r.pubSub.Subscribe(context.Background(), "orders.dlq")
	require.NoError(t, err)
	r.run(t, r.pubSub, func(*message.Message) error {
		return poison.Invalidf("user_id missing")
	}, r.stack(t, middleware.RetryConfig{})...)

	origin, _ := r.publish(t, `{}`)
	var letter *message.Message
	select {
	case letter = <-letters:
		letter.Ack()
	case <-time.After(5 * time.Second):
		t.Fatal("no letter in orders.dlq")
	}

	process := r.waitSpans(t, "process orders", 1)[0]
	dlqPublish := r.waitSpans(t, "send orders.dlq", 1)[0]

	assert.Equal(t, codes.Error, process.Status().Code, "a dead-lettered delivery is a failure")
	assert.Equal(t, "dead_lettered", attrs(process)["antidote.outcome"].AsString())
	assert.Equal(t, "permanent", attrs(process)["error.type"].AsString(), "error.type is the DLQ reason")
	assert.Equal(t, []string{"attempt failed", "dead-lettered"}, eventNames(process))
	dl := eventAttrs(process.Events()[1])
	assert.Equal(t, "permanent", dl["antidote.reason"].AsString())
	assert.Equal(t, "orders.dlq", dl["antidote.dlq_topic"].AsString())
	assert.Contains(t, dl["exception.message"].AsString(), "user_id missing")

	assert.Equal(t, trace.SpanKindProducer, dlqPublish.SpanKind())
	assert.Equal(t, origin.TraceID(), dlqPublish.SpanContext().TraceID(), "the DLQ publish is in the message's trace")
	assert.Equal(t, process.SpanContext().SpanID(), dlqPublish.Parent().SpanID(), "a child of the consumer span")
	assert.Equal(t, "orders.dlq", attrs(dlqPublish)["messaging.destination.name"].AsString())
	assert.Equal(t, "permanent", attrs(dlqPublish)["antidote.reason"].AsString())

	tp := traceparentOf(letter.Metadata)
	assert.Equal(t, origin.TraceID(), tp.TraceID(), "the letter's traceparent is in the trace")
	assert.Equal(t, dlqPublish.SpanContext().SpanID(), tp.SpanID(), "and names the DLQ-publish span")
	env, err := poison.ReadEnvelope(letter)
	require.NoError(t, err)
	assert.Equal(t, letter.Metadata.Get("traceparent"), env.Traceparent)
}

func TestTracingReplayLinksToTheOriginalTrace(t *testing.T) {
	r := newTraceRig(t)
	letters, err := r.pubSub.Subscribe(context.Background(), "orders.dlq")
	require.NoError(t, err)
	var fixed atomic.Bool
	processed := make(chan struct{}, 1)
	r.run(t, r.pubSub, func(*message.Message) error {
		if !fixed.Load() {
			return poison.Invalidf("user_id missing")
		}
		processed <- struct{}{}
		return nil
	}, r.stack(t, middleware.RetryConfig{})...)

	origin, _ := r.publish(t, `{}`)
	letter := <-letters
	letter.Ack()
	r.waitSpans(t, "process orders", 1)

	// The hospital's replay: a fresh message (no span in its context)
	// through a decorated publisher, after the handler was fixed.
	fixed.Store(true)
	replay := poison.Replay(letter, time.Now())
	assert.Empty(t, replay.Metadata.Get("traceparent"), "the replay starts a fresh trace")
	assert.Equal(t, letter.Metadata.Get("traceparent"), replay.Metadata.Get(poison.KeyOriginalTraceparent))
	require.NoError(t, r.pub.Publish("orders", replay))
	<-processed

	publishes := r.waitSpans(t, "send orders", 2)
	processes := r.waitSpans(t, "process orders", 2)
	replayPublish, replayProcess := publishes[1], processes[1]

	assert.NotEqual(t, origin.TraceID(), replayPublish.SpanContext().TraceID(), "a new trace")
	assert.False(t, replayPublish.Parent().IsValid(), "the replay publish is a root span")
	require.Len(t, replayPublish.Links(), 1)
	assert.Equal(t, origin.TraceID(), replayPublish.Links()[0].SpanContext.TraceID())

	assert.Equal(t, replayPublish.SpanContext().TraceID(), replayProcess.SpanContext().TraceID())
	assert.Equal(t, replayPublish.SpanContext().SpanID(), replayProcess.Parent().SpanID())
	require.Len(t, replayProcess.Links(), 2, "the replay's consumer span links to its producer and to the original trace")
	assert.Equal(t, replayPublish.SpanContext().SpanID(), replayProcess.Links()[0].SpanContext.SpanID())
	link := replayProcess.Links()[1]
	assert.Equal(t, origin.TraceID(), link.SpanContext.TraceID())
	assert.Equal(t, traceparentOf(letter.Metadata).SpanID(), link.SpanContext.SpanID(), "to where the message was dead-lettered")
	assert.Equal(t, "original", link.Attributes[0].Value.AsString())
	assert.Equal(t, int64(1), attrs(replayProcess)["antidote.replay_count"].AsInt64())
	assert.Equal(t, "processed", attrs(replayProcess)["antidote.outcome"].AsString())
}

func TestTracingDelayedRetryStagesStayInTheTrace(t *testing.T) {
	r := newTraceRig(t)
	b, err := adapters.Open(context.Background(), adapters.Config{Broker: adapters.KindMemory}, watermill.NopLogger{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.Close() })
	pub, err := telemetry.NewPublisher(b.Publisher, telemetry.PublisherConfig{TracerProvider: r.tp})
	require.NoError(t, err)
	sched, err := telemetry.NewScheduler(b.Scheduler(), telemetry.PublisherConfig{TracerProvider: r.tp})
	require.NoError(t, err)
	delayed, err := middleware.NewDelayedRetry(middleware.DelayedRetryConfig{Stages: []time.Duration{20 * time.Millisecond}, Scheduler: sched})
	require.NoError(t, err)
	stack := r.stack(t, middleware.RetryConfig{MaxAttempts: 1})
	// Tracing → DeadLetter → DelayedRetry → Retry → Recover
	stack = append(stack[:2], append([]message.HandlerMiddleware{delayed.Middleware}, stack[2:]...)...)

	var calls atomic.Int32
	done := make(chan struct{})
	r.run(t, b.Subscriber, func(*message.Message) error {
		if calls.Add(1) == 1 {
			return poison.Transient(errors.New("inventory service timed out"))
		}
		close(done)
		return nil
	}, stack...)

	ctx, root := r.tp.Tracer("test-producer").Start(context.Background(), "POST /orders")
	msg := message.NewMessage(watermill.NewUUID(), []byte(`{"user_id":3}`))
	msg.SetContext(ctx)
	require.NoError(t, pub.Publish("orders", msg))
	root.End()
	<-done

	processes := r.waitSpans(t, "process orders", 2)
	publishes := r.waitSpans(t, "send orders", 2) // the producer's and the stage's
	// Picked by the stage attribute, not by position: the spans end in an
	// order the scheduler's timing decides.
	byStage := func(spans []sdktrace.ReadOnlySpan) (without, with sdktrace.ReadOnlySpan) {
		for _, sp := range spans {
			if _, ok := attrs(sp)["antidote.retry_stage"]; ok {
				with = sp
			} else {
				without = sp
			}
		}
		require.NotNil(t, without)
		require.NotNil(t, with)
		return without, with
	}
	first, second := byStage(processes)
	_, stagePublish := byStage(publishes)

	assert.Equal(t, "retry_scheduled", attrs(first)["antidote.outcome"].AsString())
	assert.Equal(t, codes.Unset, first.Status().Code, "moved to a stage is not a failure yet")
	assert.Equal(t, []string{"attempt failed", "retry scheduled"}, eventNames(first))

	assert.Equal(t, trace.SpanKindProducer, stagePublish.SpanKind())
	assert.Equal(t, first.SpanContext().SpanID(), stagePublish.Parent().SpanID(), "the stage publish is a child of the first attempt")
	assert.Equal(t, int64(1), attrs(stagePublish)["antidote.retry_stage"].AsInt64())
	assert.Equal(t, "20ms", attrs(stagePublish)["antidote.retry_delay"].AsString())

	for _, s := range []sdktrace.ReadOnlySpan{first, stagePublish, second} {
		assert.Equal(t, root.SpanContext().TraceID(), s.SpanContext().TraceID(), "%s is in the producer's trace", s.Name())
	}
	assert.Equal(t, stagePublish.SpanContext().SpanID(), second.Parent().SpanID())
	assert.Equal(t, int64(1), attrs(second)["antidote.retry_stage"].AsInt64())
	assert.Equal(t, "processed", attrs(second)["antidote.outcome"].AsString())
}

// Without decorated publishers the trace still holds together: the letter's
// traceparent names the consumer span.
func TestTracingUndecoratedDLQPublisherKeepsTheTrace(t *testing.T) {
	r := newTraceRig(t)
	letters, err := r.pubSub.Subscribe(context.Background(), "orders.dlq")
	require.NoError(t, err)
	tracing, err := middleware.NewTracing(middleware.TracingConfig{TracerProvider: r.tp})
	require.NoError(t, err)
	dl, err := middleware.NewDeadLetter(middleware.DeadLetterConfig{Publisher: r.pubSub})
	require.NoError(t, err)
	r.run(t, r.pubSub, func(*message.Message) error { return poison.Invalidf("bad") }, tracing.Middleware, dl.Middleware)

	origin, _ := r.publish(t, `{}`)
	letter := <-letters
	letter.Ack()
	process := r.waitSpans(t, "process orders", 1)[0]
	tp := traceparentOf(letter.Metadata)
	assert.Equal(t, origin.TraceID(), tp.TraceID())
	assert.Equal(t, process.SpanContext().SpanID(), tp.SpanID())
	_, hasSystem := attrs(process)["messaging.system"]
	assert.False(t, hasSystem, "unknown system, not guessed")
}

// A failure that reaches the router (the DLQ is down) is a nack: error
// status with the error recorded, and the message comes back.
func TestTracingNackedDeliveryIsAnError(t *testing.T) {
	r := newTraceRig(t)
	tracing, err := middleware.NewTracing(middleware.TracingConfig{TracerProvider: r.tp})
	require.NoError(t, err)
	var mu sync.Mutex
	calls := 0
	done := make(chan struct{})
	r.run(t, r.pubSub, func(*message.Message) error {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if calls == 1 {
			return errors.New("dlq down")
		}
		close(done)
		return nil
	}, tracing.Middleware)

	r.publish(t, `{}`)
	<-done
	spans := r.waitSpans(t, "process orders", 2)
	assert.Equal(t, codes.Error, spans[0].Status().Code)
	assert.Equal(t, "dlq down", spans[0].Status().Description)
	assert.Equal(t, "failed", attrs(spans[0])["antidote.outcome"].AsString())
	assert.Equal(t, "*errors.errorString", attrs(spans[0])["error.type"].AsString(), "error.type is the error's class")
	assert.Equal(t, []string{"exception"}, eventNames(spans[0]))
	assert.Equal(t, codes.Unset, spans[1].Status().Code)
	assert.Equal(t, spans[0].Parent().SpanID(), spans[1].Parent().SpanID(), "a redelivery is a sibling under the same producer span")
}

// Messages a handler produces are published as children of its span.
func TestTracingParentsProducedMessages(t *testing.T) {
	r := newTraceRig(t)
	tracing, err := middleware.NewTracing(middleware.TracingConfig{TracerProvider: r.tp})
	require.NoError(t, err)
	router, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	require.NoError(t, err)
	router.AddMiddleware(tracing.Middleware)
	router.AddHandler("orders-handler", "orders", r.pubSub, "invoices", r.pub, func(msg *message.Message) ([]*message.Message, error) {
		return []*message.Message{message.NewMessage(watermill.NewUUID(), []byte("invoice"))}, nil
	})
	invoices, err := r.pubSub.Subscribe(context.Background(), "invoices")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = router.Run(ctx) }()
	<-router.Running()

	origin, _ := r.publish(t, `{}`)
	invoice := <-invoices
	invoice.Ack()
	process := r.waitSpans(t, "process orders", 1)[0]
	out := r.waitSpans(t, "send invoices", 1)[0]
	assert.Equal(t, origin.TraceID(), out.SpanContext().TraceID())
	assert.Equal(t, process.SpanContext().SpanID(), out.Parent().SpanID())
	assert.Equal(t, out.SpanContext().SpanID(), traceparentOf(invoice.Metadata).SpanID())
}

// On Kafka the consumer span names the partition and offset, read from the
// message context the watermill-kafka subscriber fills (poison.OriginOf),
// and messaging.system is inferred. The broker is the adapter's embedded one.
func TestTracingKafkaPartitionAndOffset(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an in-process Kafka broker")
	}
	r := newTraceRig(t)
	cfg := adapters.Config{Broker: adapters.KindKafka, Kafka: adapters.KafkaConfig{Embedded: true}}
	cfg.Kafka.Partitions = 1
	b, err := adapters.Open(context.Background(), cfg, watermill.NopLogger{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.Close() })
	pub, err := telemetry.NewPublisher(b.Publisher, telemetry.PublisherConfig{TracerProvider: r.tp, System: b.Kind.MessagingSystem(), ServerAddress: b.Addr})
	require.NoError(t, err)
	tracing, err := middleware.NewTracing(middleware.TracingConfig{TracerProvider: r.tp, ConsumerGroup: "billing", ServerAddress: b.Addr})
	require.NoError(t, err)
	done := make(chan struct{}, 2)
	r.run(t, b.Subscriber, func(*message.Message) error { done <- struct{}{}; return nil }, tracing.Middleware)

	for i := 0; i < 2; i++ {
		ctx, root := r.tp.Tracer("test-producer").Start(context.Background(), "POST /orders")
		msg := message.NewMessage(watermill.NewUUID(), []byte(`{"user_id":4}`))
		msg.Metadata.Set("partition_key", "user-4") // the adapter's record key
		msg.SetContext(ctx)
		require.NoError(t, pub.Publish("orders", msg))
		root.End()
	}
	host, port, err := net.SplitHostPort(strings.Split(b.Addr, ",")[0])
	require.NoError(t, err)
	wantPort, err := strconv.Atoi(port)
	require.NoError(t, err)
	for i := 0; i < 2; i++ {
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Fatal("the Kafka consumer got nothing")
		}
	}
	publishes := r.waitSpans(t, "send orders", 2)
	processes := r.waitSpans(t, "process orders", 2)
	assert.Equal(t, "kafka", attrs(publishes[0])["messaging.system"].AsString())
	assert.Equal(t, "user-4", attrs(publishes[0])["messaging.kafka.message.key"].AsString())
	assert.Equal(t, host, attrs(publishes[0])["server.address"].AsString())
	assert.Equal(t, int64(wantPort), attrs(publishes[0])["server.port"].AsInt64())
	for i, p := range processes {
		a := attrs(p)
		assert.Equal(t, "user-4", a["messaging.kafka.message.key"].AsString(), "the record key came back as a header")
		assert.Equal(t, host, a["server.address"].AsString())
		assert.Equal(t, int64(wantPort), a["server.port"].AsInt64())
		assert.Equal(t, "kafka", a["messaging.system"].AsString(), "inferred from the Kafka offset in the context")
		assert.Equal(t, "0", a["messaging.destination.partition.id"].AsString())
		assert.Equal(t, int64(i), a["messaging.kafka.offset"].AsInt64())
		assert.Equal(t, "billing", a["messaging.consumer.group.name"].AsString())
		assert.Equal(t, publishes[i].SpanContext().SpanID(), p.Parent().SpanID(), "traceparent travelled in a Kafka header")
	}
}

// RabbitMQ: the routing key is the topic (the AMQP adapter publishes to the
// default exchange with the queue's name), the broker comes from its URL
// (the password redacted, as adapters.Broker.Addr has it).
func TestTracingRabbitMQAttributes(t *testing.T) {
	r := newTraceRig(t)
	const addr = "amqp://guest:xxxxx@rabbit.internal:5671/prod"
	pub, err := telemetry.NewPublisher(r.pubSub, telemetry.PublisherConfig{TracerProvider: r.tp, System: "rabbitmq", ServerAddress: addr})
	require.NoError(t, err)
	r.pub = pub
	tracing, err := middleware.NewTracing(middleware.TracingConfig{TracerProvider: r.tp, System: "rabbitmq", ServerAddress: addr})
	require.NoError(t, err)
	done := make(chan struct{}, 1)
	r.run(t, r.pubSub, func(msg *message.Message) error {
		msg.Metadata.Set("partition_key", "not-kafka")
		done <- struct{}{}
		return nil
	}, tracing.Middleware)
	r.publish(t, `{}`)
	<-done
	for _, s := range []sdktrace.ReadOnlySpan{r.waitSpans(t, "send orders", 1)[0], r.waitSpans(t, "process orders", 1)[0]} {
		a := attrs(s)
		assert.Equal(t, "rabbitmq", a["messaging.system"].AsString(), s.Name())
		assert.Equal(t, "orders", a["messaging.rabbitmq.destination.routing_key"].AsString(), s.Name())
		assert.Equal(t, "rabbit.internal", a["server.address"].AsString(), s.Name())
		assert.Equal(t, int64(5671), a["server.port"].AsInt64(), s.Name())
		_, hasKey := a["messaging.kafka.message.key"]
		assert.False(t, hasKey, "no Kafka key on RabbitMQ")
	}
}

// Log lines written while a message is processed carry its span's ids: the
// middleware's own (DeadLetter's "Message dead-lettered", Retry's "Handler
// failed, retrying", through a watermill LoggerAdapter) and the handler's,
// through slog with telemetry.NewLogHandler and the message context.
func TestTracingLogLinesCarryTheSpan(t *testing.T) {
	r := newTraceRig(t)
	captured := watermill.NewCaptureLogger()
	var buf bytes.Buffer
	var bufMu sync.Mutex
	slogger := slog.New(telemetry.NewLogHandler(slog.NewJSONHandler(&lockedWriter{w: &buf, mu: &bufMu}, nil)))

	tracing, err := middleware.NewTracing(middleware.TracingConfig{TracerProvider: r.tp})
	require.NoError(t, err)
	dl, err := middleware.NewDeadLetter(middleware.DeadLetterConfig{Publisher: r.pub, Logger: captured})
	require.NoError(t, err)
	rt, err := middleware.NewRetry(middleware.RetryConfig{MaxAttempts: 2, InitialInterval: time.Millisecond, Logger: captured})
	require.NoError(t, err)
	letters, err := r.pubSub.Subscribe(context.Background(), "orders.dlq")
	require.NoError(t, err)
	r.run(t, r.pubSub, func(msg *message.Message) error {
		slogger.InfoContext(msg.Context(), "charging", "uuid", msg.UUID)
		return poison.Transient(errors.New("card service down"))
	}, tracing.Middleware, dl.Middleware, rt.Middleware)

	r.publish(t, `{}`)
	(<-letters).Ack()
	process := r.waitSpans(t, "process orders", 1)[0]
	traceID, spanID := process.SpanContext().TraceID().String(), process.SpanContext().SpanID().String()

	var seen []string
	for _, msgs := range captured.Captured() {
		for _, m := range msgs {
			if m.Msg == "Message dead-lettered" || m.Msg == "Handler failed, retrying" {
				seen = append(seen, m.Msg)
				assert.Equal(t, traceID, m.Fields[middleware.LogFieldTraceID], m.Msg)
				assert.Equal(t, spanID, m.Fields[middleware.LogFieldSpanID], m.Msg)
			}
		}
	}
	assert.ElementsMatch(t, []string{"Message dead-lettered", "Handler failed, retrying"}, seen)

	bufMu.Lock()
	defer bufMu.Unlock()
	var handlerLines int
	dec := json.NewDecoder(&buf)
	for dec.More() {
		var line map[string]any
		require.NoError(t, dec.Decode(&line))
		handlerLines++
		assert.Equal(t, traceID, line[telemetry.LogTraceID])
		assert.Equal(t, spanID, line[telemetry.LogSpanID])
	}
	assert.Equal(t, 2, handlerLines, "one per attempt")
}

type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
