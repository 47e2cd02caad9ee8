package telemetry_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/poison"
	"github.com/antidote-mq/antidote/telemetry"
)

type recordingPublisher struct {
	got []*message.Message
	err error
}

func (p *recordingPublisher) Publish(_ string, msgs ...*message.Message) error {
	p.got = append(p.got, msgs...)
	return p.err
}
func (p *recordingPublisher) Close() error { return nil }

func newTP() (*sdktrace.TracerProvider, *tracetest.SpanRecorder) {
	rec := tracetest.NewSpanRecorder()
	return sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec)), rec
}

func TestCarrierRoundTripsTraceContextAndBaggage(t *testing.T) {
	tp, _ := newTP()
	ctx, span := tp.Tracer("t").Start(context.Background(), "x")
	member, err := baggage.NewMember("tenant", "acme")
	require.NoError(t, err)
	b, err := baggage.New(member)
	require.NoError(t, err)
	ctx = baggage.ContextWithBaggage(ctx, b)

	msg := message.NewMessage("1", nil)
	msg.Metadata = nil // a hand-built message may have none
	telemetry.Inject(ctx, nil, msg)
	assert.NotEmpty(t, msg.Metadata.Get("traceparent"))
	assert.Equal(t, "tenant=acme", msg.Metadata.Get("baggage"))

	got := telemetry.Extract(context.Background(), nil, msg)
	sc := trace.SpanContextFromContext(got)
	assert.Equal(t, span.SpanContext().TraceID(), sc.TraceID())
	assert.Equal(t, span.SpanContext().SpanID(), sc.SpanID())
	assert.True(t, sc.IsRemote())
	assert.Equal(t, "acme", baggage.FromContext(got).Member("tenant").Value())
	assert.ElementsMatch(t, []string{"traceparent", "baggage"}, antidote.MetadataCarrier(msg.Metadata).Keys())
}

func TestPublisherBatchAndErrors(t *testing.T) {
	tp, rec := newTP()
	inner := &recordingPublisher{}
	pub, err := telemetry.NewPublisher(inner, telemetry.PublisherConfig{TracerProvider: tp, System: "rabbitmq"})
	require.NoError(t, err)

	ctx, parent := tp.Tracer("t").Start(context.Background(), "batch job")
	a, b := message.NewMessage("a", []byte("1")), message.NewMessage("b", []byte("22"))
	a.SetContext(ctx)
	b.SetContext(ctx)
	require.NoError(t, pub.Publish("orders", a, b))
	parent.End()

	require.Len(t, inner.got, 2, "one call to the inner publisher, both messages")
	spans := rec.Ended()
	require.Len(t, spans, 3)
	for i, s := range spans[:2] {
		assert.Equal(t, "orders publish", s.Name())
		assert.Equal(t, trace.SpanKindProducer, s.SpanKind())
		assert.Equal(t, parent.SpanContext().SpanID(), s.Parent().SpanID())
		want := []*message.Message{a, b}[i]
		assert.Equal(t, s.SpanContext().SpanID(), trace.SpanContextFromContext(telemetry.Extract(context.Background(), nil, want)).SpanID(),
			"each message names its own span")
	}

	inner.err = errors.New("broker down")
	c := message.NewMessage("c", nil)
	err = pub.Publish("orders", c)
	assert.ErrorIs(t, err, inner.err, "the publish error is returned unchanged")
	failed := rec.Ended()[3]
	assert.Equal(t, codes.Error, failed.Status().Code)
	assert.False(t, failed.Parent().IsValid(), "no span in msg.Context(): a new trace")
	assert.Empty(t, failed.Links(), "and no link: not a replay")

	_, err = telemetry.NewPublisher(nil, telemetry.PublisherConfig{})
	assert.Error(t, err)
	_, err = telemetry.NewScheduler(nil, telemetry.PublisherConfig{})
	assert.Error(t, err)
}

func TestPublisherLinksAReplayToItsOriginalTrace(t *testing.T) {
	tp, rec := newTP()
	pub, err := telemetry.NewPublisher(&recordingPublisher{}, telemetry.PublisherConfig{TracerProvider: tp})
	require.NoError(t, err)
	letter := message.NewMessage("1", nil)
	letter.Metadata.Set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	letter.Metadata.Set(poison.KeyReason, "permanent")
	replay := poison.Replay(letter, time.Now())
	require.NoError(t, pub.Publish("orders", replay))

	s := rec.Ended()[0]
	require.Len(t, s.Links(), 1)
	assert.Equal(t, "4bf92f3577b34da6a3ce929d0e0e4736", s.Links()[0].SpanContext.TraceID().String())
	assert.NotEqual(t, "4bf92f3577b34da6a3ce929d0e0e4736", s.SpanContext().TraceID().String())
	assert.Equal(t, s.SpanContext().TraceID(), trace.SpanContextFromContext(telemetry.Extract(context.Background(), nil, replay)).TraceID())
}

type recordingScheduler struct{ ctx context.Context }

func (s *recordingScheduler) Schedule(ctx context.Context, _ string, _ *message.Message, _ time.Duration) error {
	s.ctx = ctx
	return nil
}

func TestSchedulerParentsOnTheContext(t *testing.T) {
	tp, rec := newTP()
	inner := &recordingScheduler{}
	s, err := telemetry.NewScheduler(inner, telemetry.PublisherConfig{TracerProvider: tp})
	require.NoError(t, err)
	ctx, consumer := tp.Tracer("t").Start(context.Background(), "orders process")
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	msg := message.NewMessage("1", nil)
	msg.Metadata.Set("antidote.retry_stage", "2")
	require.NoError(t, s.Schedule(ctx, "orders", msg, time.Minute))
	consumer.End()

	stage := rec.Ended()[0]
	assert.Equal(t, "orders publish", stage.Name())
	assert.Equal(t, consumer.SpanContext().SpanID(), stage.Parent().SpanID())
	_, hasDeadline := inner.ctx.Deadline()
	assert.True(t, hasDeadline, "the inner scheduler keeps the caller's deadline")
	assert.Equal(t, stage.SpanContext().SpanID(), trace.SpanContextFromContext(inner.ctx).SpanID())
	assert.Equal(t, stage.SpanContext().SpanID(), trace.SpanContextFromContext(telemetry.Extract(context.Background(), nil, msg)).SpanID())
}
