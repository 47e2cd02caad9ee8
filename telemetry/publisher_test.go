package telemetry_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
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
		assert.Equal(t, "send orders", s.Name())
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
	assert.Equal(t, "*errors.errorString", spanAttrs(failed)["error.type"].AsString())
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
	ctx, consumer := tp.Tracer("t").Start(context.Background(), "process orders")
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	msg := message.NewMessage("1", nil)
	msg.Metadata.Set("antidote.retry_stage", "2")
	require.NoError(t, s.Schedule(ctx, "orders", msg, time.Minute))
	consumer.End()

	stage := rec.Ended()[0]
	assert.Equal(t, "send orders", stage.Name())
	assert.Equal(t, consumer.SpanContext().SpanID(), stage.Parent().SpanID())
	_, hasDeadline := inner.ctx.Deadline()
	assert.True(t, hasDeadline, "the inner scheduler keeps the caller's deadline")
	assert.Equal(t, stage.SpanContext().SpanID(), trace.SpanContextFromContext(inner.ctx).SpanID())
	assert.Equal(t, stage.SpanContext().SpanID(), trace.SpanContextFromContext(telemetry.Extract(context.Background(), nil, msg)).SpanID())
}

func spanAttrs(s sdktrace.ReadOnlySpan) map[attribute.Key]attribute.Value {
	m := map[attribute.Key]attribute.Value{}
	for _, kv := range s.Attributes() {
		m[kv.Key] = kv.Value
	}
	return m
}

// The semconv producer metrics: messages sent (per message) and the
// duration of each publish call, by destination, error.type on failure.
func TestPublisherRecordsSemconvMetrics(t *testing.T) {
	tp, _ := newTP()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	inner := &recordingPublisher{}
	pub, err := telemetry.NewPublisher(inner, telemetry.PublisherConfig{TracerProvider: tp, MeterProvider: mp, System: "kafka", ServerAddress: "k1:9093,k2:9093"})
	require.NoError(t, err)
	require.NoError(t, pub.Publish("orders", message.NewMessage("a", nil), message.NewMessage("b", nil)))
	inner.err = errors.New("broker down")
	require.Error(t, pub.Publish("orders", message.NewMessage("c", nil)))

	var rm metricdata.ResourceMetrics
	require.NoError(t, reader.Collect(context.Background(), &rm))
	require.Len(t, rm.ScopeMetrics, 1)
	assert.Equal(t, "https://opentelemetry.io/schemas/1.43.0", rm.ScopeMetrics[0].Scope.SchemaURL)
	got := map[string]metricdata.Aggregation{}
	for _, m := range rm.ScopeMetrics[0].Metrics {
		got[m.Name] = m.Data
	}
	sent, ok := got[telemetry.MetricClientSentMessages].(metricdata.Sum[int64])
	require.True(t, ok, "%s is an int64 counter: %v", telemetry.MetricClientSentMessages, got)
	counts := map[string]int64{}
	for _, dp := range sent.DataPoints {
		et, _ := dp.Attributes.Value("error.type")
		dest, _ := dp.Attributes.Value("messaging.destination.name")
		op, _ := dp.Attributes.Value("messaging.operation.name")
		sys, _ := dp.Attributes.Value("messaging.system")
		host, _ := dp.Attributes.Value("server.address")
		assert.Equal(t, "orders", dest.AsString())
		assert.Equal(t, "send", op.AsString())
		assert.Equal(t, "kafka", sys.AsString())
		assert.Equal(t, "k1", host.AsString())
		counts[et.AsString()] = dp.Value
	}
	assert.Equal(t, map[string]int64{"": 2, "*errors.errorString": 1}, counts)
	dur, ok := got[telemetry.MetricClientOperationDuration].(metricdata.Histogram[float64])
	require.True(t, ok)
	var calls uint64
	for _, dp := range dur.DataPoints {
		calls += dp.Count
	}
	assert.Equal(t, uint64(2), calls, "one duration per publish call")
}
