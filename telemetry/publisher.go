package telemetry

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/internal/otelconv"
	"github.com/antidote-mq/antidote/poison"
)

// PublisherConfig configures NewPublisher and NewScheduler. The zero value
// is usable.
type PublisherConfig struct {
	// TracerProvider creates the producer spans. Default: the global
	// provider (otel.GetTracerProvider()) as it is at construction, a no-op
	// until a program installs one.
	TracerProvider trace.TracerProvider
	// MeterProvider records the semconv producer metrics
	// messaging.client.sent.messages and
	// messaging.client.operation.duration. Default: the global provider
	// (otel.GetMeterProvider()) as it is at construction, a no-op until a
	// program installs one.
	MeterProvider metric.MeterProvider
	// Propagator writes the span into message metadata. Default
	// Propagator() (W3C Trace Context + Baggage). It should match the
	// consumers' middleware.TracingConfig.Propagator.
	Propagator propagation.TextMapPropagator
	// System is messaging.system (adapters.Kind.MessagingSystem gives it for a broker).
	// Default: left out.
	System string
	// ServerAddress is the broker's address, reported as server.address and
	// server.port: "host:port", a comma-separated list (the first is
	// reported) or a URL, as adapters.Broker.Addr gives it. Default: left
	// out.
	ServerAddress string
	// KafkaKeyMetadata is the metadata key whose value is the Kafka record
	// key, reported as messaging.kafka.message.key when System is "kafka".
	// Default "partition_key" (adapters.KafkaConfig.PartitionKey's default).
	KafkaKeyMetadata string
}

func (c *PublisherConfig) setDefaults() {
	if c.TracerProvider == nil {
		c.TracerProvider = otel.GetTracerProvider()
	}
	if c.MeterProvider == nil {
		c.MeterProvider = otel.GetMeterProvider()
	}
	if c.Propagator == nil {
		c.Propagator = Propagator()
	}
	if c.KafkaKeyMetadata == "" {
		c.KafkaKeyMetadata = otelconv.DefaultKafkaKeyMetadata
	}
}

// Validate reports every invalid field of c, after defaults are applied
// (NewPublisher and NewScheduler apply them first). Every field is
// optional, so it never fails today; it is here so callers validate all
// configs alike.
func (c PublisherConfig) Validate() error { return nil }

// Semconv producer metric names (OTel messaging conventions). Prometheus:
// messaging_client_sent_messages_total and
// messaging_client_operation_duration_seconds.
const (
	MetricClientSentMessages      = "messaging.client.sent.messages"
	MetricClientOperationDuration = "messaging.client.operation.duration"
)

// semconvDurationBuckets are the conventions' advised bounds (seconds) for
// the messaging duration histograms.
var semconvDurationBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10}

// producer starts producer spans and records the producer metrics; shared
// by Publisher and Scheduler.
type producer struct {
	cfg      PublisherConfig
	tracer   trace.Tracer
	server   []attribute.KeyValue
	sent     metric.Int64Counter
	duration metric.Float64Histogram
	metered  bool             // the MeterProvider is not a no-op
	topics   sync.Map         // topic → *producerTopic
	errSets  sync.Map         // producerErrKey → *metricOpts
	now      func() time.Time // time.Now
}

// producerTopic is what every send to one topic shares, built once.
type producerTopic struct {
	topic string
	name  string // "send orders"
	attrs []attribute.KeyValue
	ok    *metricOpts // metric attributes of a successful send
}

type producerErrKey struct{ topic, errorType string }

// metricOpts is one attribute set as ready-made option slices (passing a
// slice with opts... does not allocate).
type metricOpts struct {
	add []metric.AddOption
	rec []metric.RecordOption
}

func newMetricOpts(attrs ...attribute.KeyValue) *metricOpts {
	o := metric.WithAttributeSet(attribute.NewSet(attrs...))
	return &metricOpts{add: []metric.AddOption{o}, rec: []metric.RecordOption{o}}
}

// newProducer takes a config with its defaults applied and validated.
func newProducer(cfg PublisherConfig) (*producer, error) {
	p := &producer{
		cfg:    cfg,
		tracer: cfg.TracerProvider.Tracer(antidote.TracerName, trace.WithSchemaURL(semconv.SchemaURL)),
		server: otelconv.ServerAttributes(cfg.ServerAddress),
		now:    time.Now,
	}
	switch cfg.MeterProvider.(type) {
	case metricnoop.MeterProvider, *metricnoop.MeterProvider:
	default:
		p.metered = true
	}
	meter := cfg.MeterProvider.Meter(antidote.TracerName, metric.WithSchemaURL(semconv.SchemaURL))
	var err1, err2 error
	p.sent, err1 = meter.Int64Counter(MetricClientSentMessages, metric.WithUnit("{message}"),
		metric.WithDescription("Number of messages producer attempted to send to the broker."))
	p.duration, err2 = meter.Float64Histogram(MetricClientOperationDuration, metric.WithUnit("s"),
		metric.WithDescription("Duration of messaging operation initiated by a producer or consumer client."),
		metric.WithExplicitBucketBoundaries(semconvDurationBuckets...))
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("telemetry: creating the producer metrics: %w", err)
	}
	return p, nil
}

// topic returns the span name and the attributes shared by sends to topic.
func (p *producer) topic(topic string) *producerTopic {
	if v, ok := p.topics.Load(topic); ok {
		return v.(*producerTopic)
	}
	pt := &producerTopic{topic: topic, name: otelconv.OpSend + " " + topic}
	var system []attribute.KeyValue
	if p.cfg.System != "" {
		system = []attribute.KeyValue{semconv.MessagingSystemKey.String(p.cfg.System)}
	}
	pt.attrs = append(pt.attrs, system...)
	pt.attrs = append(pt.attrs,
		semconv.MessagingDestinationName(topic),
		semconv.MessagingOperationTypeSend,
		semconv.MessagingOperationName(otelconv.OpSend),
	)
	if p.cfg.System == otelconv.SystemRabbitMQ {
		pt.attrs = append(pt.attrs, semconv.MessagingRabbitMQDestinationRoutingKey(topic))
	}
	pt.attrs = append(pt.attrs, p.server...)
	pt.ok = newMetricOpts(p.metricAttrs(topic, "")...)
	v, _ := p.topics.LoadOrStore(topic, pt)
	return v.(*producerTopic)
}

// metricAttrs are the semconv metric attributes of a send to topic.
func (p *producer) metricAttrs(topic, errorType string) []attribute.KeyValue {
	var attrs []attribute.KeyValue
	if p.cfg.System != "" {
		attrs = append(attrs, semconv.MessagingSystemKey.String(p.cfg.System))
	}
	attrs = append(attrs, semconv.MessagingDestinationName(topic), semconv.MessagingOperationName(otelconv.OpSend),
		semconv.MessagingOperationTypeSend)
	attrs = append(attrs, p.server...)
	if errorType != "" {
		attrs = append(attrs, semconv.ErrorTypeKey.String(errorType))
	}
	return attrs
}

// record counts n messages sent to pt's topic in one call that took
// elapsed and ended with err.
func (p *producer) record(ctx context.Context, pt *producerTopic, n int, elapsed time.Duration, err error) {
	if !p.metered {
		return
	}
	opts := pt.ok
	if err != nil {
		k := producerErrKey{pt.topic, otelconv.ErrorType(err)}
		if v, ok := p.errSets.Load(k); ok {
			opts = v.(*metricOpts)
		} else {
			v, _ := p.errSets.LoadOrStore(k, newMetricOpts(p.metricAttrs(k.topic, k.errorType)...))
			opts = v.(*metricOpts)
		}
	}
	if ctx.Err() != nil {
		ctx = context.WithoutCancel(ctx)
	}
	p.sent.Add(ctx, int64(n), opts.add...)
	p.duration.Record(ctx, elapsed.Seconds(), opts.rec...)
}

// producerSpanKind is passed as opts... with the attributes appended.
var producerSpanKind = trace.WithSpanKind(trace.SpanKindProducer)

// start begins the producer span of msg as a child of parent and injects it
// into msg's metadata. A message published with no span in its context and
// poison.KeyOriginalTraceparent in its metadata is a DLQ replay: its span is
// the root of a new trace and links to the original one.
func (p *producer) start(parent context.Context, pt *producerTopic, msg *message.Message, extra ...attribute.KeyValue) (context.Context, trace.Span) {
	attrs := make([]attribute.KeyValue, 0, len(pt.attrs)+6+len(extra))
	attrs = append(attrs, pt.attrs...)
	attrs = append(attrs,
		semconv.MessagingMessageID(msg.UUID),
		semconv.MessagingMessageBodySize(len(msg.Payload)),
	)
	if p.cfg.System == otelconv.SystemKafka {
		if key := msg.Metadata.Get(p.cfg.KafkaKeyMetadata); key != "" {
			attrs = append(attrs, semconv.MessagingKafkaMessageKey(key))
		}
	}
	if r := msg.Metadata.Get(poison.KeyReason); r != "" {
		attrs = append(attrs, antidote.AttrReason.String(r)) // a DLQ letter
	}
	if n, err := strconv.Atoi(msg.Metadata.Get(poison.KeyReplayCount)); err == nil && n > 0 {
		attrs = append(attrs, antidote.AttrReplayCount.Int(n))
	}
	attrs = append(attrs, extra...)
	opts := []trace.SpanStartOption{producerSpanKind, trace.WithAttributes(attrs...)}
	if !trace.SpanContextFromContext(parent).IsValid() {
		if link, ok := antidote.OriginalTraceLink(msg.Metadata); ok {
			opts = append(opts, trace.WithLinks(link))
		}
	}
	ctx, span := p.tracer.Start(parent, pt.name, opts...)
	if msg.Metadata == nil {
		msg.Metadata = message.Metadata{}
	}
	p.cfg.Propagator.Inject(ctx, antidote.MetadataCarrier(msg.Metadata))
	return ctx, span
}

func endSpan(span trace.Span, err error) {
	if err != nil {
		span.SetAttributes(semconv.ErrorTypeKey.String(otelconv.ErrorType(err)))
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// Publisher decorates a message.Publisher: each message gets a producer
// span named "send <topic>" (span kind producer; messaging.system,
// messaging.destination.name, messaging.operation.name and
// messaging.operation.type "send", messaging.message.id, body size,
// server.address/server.port, messaging.kafka.message.key on Kafka,
// messaging.rabbitmq.destination.routing_key on RabbitMQ, error.type when
// the publish failed), whose parent is the span in msg.Context() (none:
// a new trace), and its traceparent is written into the message metadata
// before the inner publisher sees it, so consumers continue the trace.
//
// Use it for the producer's publishes, for DeadLetterConfig.Publisher (the
// letter's context carries the consumer span, so the DLQ publish joins the
// message's trace and the letter's traceparent names it) and for
// dlq.Config.WrapPublisher (replays). Keep the undecorated publisher for
// adapters.Broker.Scheduler; decorate the scheduler with NewScheduler.
//
// Each call also records messaging.client.sent.messages (one per message)
// and messaging.client.operation.duration (the call's duration) with the
// MeterProvider.
type Publisher struct {
	pub message.Publisher
	p   *producer
}

// NewPublisher fills cfg's defaults, validates it (see
// PublisherConfig.Validate) and wraps pub.
func NewPublisher(pub message.Publisher, cfg PublisherConfig) (*Publisher, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("telemetry: NewPublisher: %w", err)
	}
	if pub == nil {
		return nil, errors.New("telemetry: NewPublisher: the publisher to wrap is nil")
	}
	p, err := newProducer(cfg)
	if err != nil {
		return nil, err
	}
	return &Publisher{pub: pub, p: p}, nil
}

// Publish starts a span per message, publishes them all in one call to the
// inner publisher (keeping its batching), and ends the spans with its
// result. It modifies the messages' metadata (traceparent, tracestate,
// baggage), as every propagating publisher does.
func (p *Publisher) Publish(topic string, msgs ...*message.Message) error {
	pt := p.p.topic(topic)
	if len(msgs) == 1 { // the common case, without a slice
		ctx, span := p.p.start(msgs[0].Context(), pt, msgs[0])
		start := p.p.now()
		err := p.pub.Publish(topic, msgs...)
		p.p.record(ctx, pt, 1, p.p.now().Sub(start), err)
		endSpan(span, err)
		return err
	}
	spans := make([]trace.Span, len(msgs))
	ctx := context.Background()
	for i, msg := range msgs {
		ctx, spans[i] = p.p.start(msg.Context(), pt, msg)
	}
	start := p.p.now()
	err := p.pub.Publish(topic, msgs...)
	p.p.record(ctx, pt, len(msgs), p.p.now().Sub(start), err)
	for _, span := range spans {
		endSpan(span, err)
	}
	return err
}

// Close closes the inner publisher.
func (p *Publisher) Close() error { return p.pub.Close() }

// CheckMessage forwards to the inner publisher's antidote.MessageChecker;
// nil when the inner publisher does not check messages.
func (p *Publisher) CheckMessage(topic string, msg *message.Message) error {
	if c, ok := p.pub.(antidote.MessageChecker); ok {
		return c.CheckMessage(topic, msg)
	}
	return nil
}

// CheckName forwards to the inner publisher's antidote.NameChecker, so
// router.New can check DLQ topic names through the decoration; nil when the
// inner publisher does not check names.
func (p *Publisher) CheckName(name string) error {
	if c, ok := p.pub.(antidote.NameChecker); ok {
		return c.CheckName(name)
	}
	return nil
}

// Scheduler decorates an antidote.Scheduler (DelayedRetry's way to move a
// message to its next retry stage) with a producer span "send <topic>"
// carrying antidote.retry_stage and antidote.retry_delay, the child of the
// span in ctx (DelayedRetry passes the consumer span), else of
// msg.Context(). The message's traceparent then names that span, so the
// next stage's consumer span continues the same trace.
type Scheduler struct {
	s antidote.Scheduler
	p *producer
}

// NewScheduler fills cfg's defaults, validates it (see
// PublisherConfig.Validate) and wraps s.
func NewScheduler(s antidote.Scheduler, cfg PublisherConfig) (*Scheduler, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("telemetry: NewScheduler: %w", err)
	}
	if s == nil {
		return nil, errors.New("telemetry: NewScheduler: the scheduler to wrap is nil")
	}
	p, err := newProducer(cfg)
	if err != nil {
		return nil, err
	}
	return &Scheduler{s: s, p: p}, nil
}

var _ antidote.Scheduler = (*Scheduler)(nil)

// CheckStages forwards to the inner scheduler's antidote.StageChecker; nil
// when it does not check.
func (s *Scheduler) CheckStages(topic string, stages []time.Duration) error {
	if c, ok := s.s.(antidote.StageChecker); ok {
		return c.CheckStages(topic, stages)
	}
	return nil
}

// Relays forwards to the inner scheduler's antidote.Relayer, so
// router.AddRetryRelays finds the Kafka relays through this decorator.
func (s *Scheduler) Relays() (antidote.Relays, bool) {
	if r, ok := s.s.(antidote.Relayer); ok {
		return r.Relays()
	}
	return antidote.Relays{}, false
}

// Schedule starts the span, injects it and calls the inner scheduler.
func (s *Scheduler) Schedule(ctx context.Context, topic string, msg *message.Message, after time.Duration) error {
	parent := ctx
	if !trace.SpanContextFromContext(parent).IsValid() {
		parent = msg.Context()
	}
	extra := []attribute.KeyValue{antidote.AttrRetryDelay.String(after.String())}
	if n, err := strconv.Atoi(msg.Metadata.Get(antidote.MetadataRetryStage)); err == nil && n > 0 {
		extra = append(extra, antidote.AttrRetryStage.Int(n))
	}
	pt := s.p.topic(topic)
	spanCtx, span := s.p.start(parent, pt, msg, extra...)
	// Keep ctx's deadline; add the span so a scheduler that publishes with
	// it (PostgreSQL) passes the trace on.
	start := s.p.now()
	err := s.s.Schedule(trace.ContextWithSpan(ctx, trace.SpanFromContext(spanCtx)), topic, msg, after)
	s.p.record(spanCtx, pt, 1, s.p.now().Sub(start), err)
	endSpan(span, err)
	return err
}
