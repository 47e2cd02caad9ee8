package telemetry

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/poison"
)

// PublisherConfig configures NewPublisher and NewScheduler. The zero value
// is usable.
type PublisherConfig struct {
	// TracerProvider creates the producer spans. Default: the global
	// provider (otel.GetTracerProvider()) as it is at construction, a no-op
	// until a program installs one.
	TracerProvider trace.TracerProvider
	// Propagator writes the span into message metadata. Default
	// Propagator() (W3C Trace Context + Baggage). It should match the
	// consumers' middleware.TracingConfig.Propagator.
	Propagator propagation.TextMapPropagator
	// System is messaging.system (adapters.Kind.MessagingSystem gives it for a broker).
	// Default: left out.
	System string
}

func (c *PublisherConfig) setDefaults() {
	if c.TracerProvider == nil {
		c.TracerProvider = otel.GetTracerProvider()
	}
	if c.Propagator == nil {
		c.Propagator = Propagator()
	}
}

// Validate reports every invalid field of c, after defaults are applied
// (NewPublisher and NewScheduler apply them first). Every field is
// optional, so it never fails today; it is here so callers validate all
// configs alike.
func (c PublisherConfig) Validate() error { return nil }

// producer starts producer spans; shared by Publisher and Scheduler.
type producer struct {
	cfg    PublisherConfig
	tracer trace.Tracer
}

// newProducer takes a config with its defaults applied and validated.
func newProducer(cfg PublisherConfig) producer {
	return producer{cfg: cfg, tracer: cfg.TracerProvider.Tracer(antidote.TracerName)}
}

// start begins the producer span of msg as a child of parent and injects it
// into msg's metadata. A message published with no span in its context and
// poison.KeyOriginalTraceparent in its metadata is a DLQ replay: its span is
// the root of a new trace and links to the original one.
func (p producer) start(parent context.Context, topic string, msg *message.Message, extra ...attribute.KeyValue) (context.Context, trace.Span) {
	attrs := make([]attribute.KeyValue, 0, 8+len(extra))
	if p.cfg.System != "" {
		attrs = append(attrs, semconv.MessagingSystemKey.String(p.cfg.System))
	}
	attrs = append(attrs,
		semconv.MessagingDestinationName(topic),
		semconv.MessagingOperationTypeSend,
		semconv.MessagingOperationName("publish"),
		semconv.MessagingMessageID(msg.UUID),
		semconv.MessagingMessageBodySize(len(msg.Payload)),
	)
	if r := msg.Metadata.Get(poison.KeyReason); r != "" {
		attrs = append(attrs, antidote.AttrReason.String(r)) // a DLQ letter
	}
	if n, err := strconv.Atoi(msg.Metadata.Get(poison.KeyReplayCount)); err == nil && n > 0 {
		attrs = append(attrs, antidote.AttrReplayCount.Int(n))
	}
	attrs = append(attrs, extra...)
	opts := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(attrs...)}
	if !trace.SpanContextFromContext(parent).IsValid() {
		if link, ok := antidote.OriginalTraceLink(msg.Metadata); ok {
			opts = append(opts, trace.WithLinks(link))
		}
	}
	ctx, span := p.tracer.Start(parent, topic+" publish", opts...)
	if msg.Metadata == nil {
		msg.Metadata = message.Metadata{}
	}
	p.cfg.Propagator.Inject(ctx, antidote.MetadataCarrier(msg.Metadata))
	return ctx, span
}

func endSpan(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// Publisher decorates a message.Publisher: each message gets a producer
// span named "<topic> publish" (span kind producer; messaging.system,
// messaging.destination.name, messaging.operation.type "send",
// messaging.message.id), whose parent is the span in msg.Context() (none:
// a new trace), and its traceparent is written into the message metadata
// before the inner publisher sees it, so consumers continue the trace.
//
// Use it for the producer's publishes, for DeadLetterConfig.Publisher (the
// letter's context carries the consumer span, so the DLQ publish joins the
// message's trace and the letter's traceparent names it) and for
// dlq.Config.WrapPublisher (replays). Keep the undecorated publisher for
// adapters.Broker.Scheduler; decorate the scheduler with NewScheduler.
type Publisher struct {
	pub message.Publisher
	p   producer
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
	return &Publisher{pub: pub, p: newProducer(cfg)}, nil
}

// Publish starts a span per message, publishes them all in one call to the
// inner publisher (keeping its batching), and ends the spans with its
// result. It modifies the messages' metadata (traceparent, tracestate,
// baggage), as every propagating publisher does.
func (p *Publisher) Publish(topic string, msgs ...*message.Message) error {
	if len(msgs) == 1 { // the common case, without a slice
		_, span := p.p.start(msgs[0].Context(), topic, msgs[0])
		err := p.pub.Publish(topic, msgs...)
		endSpan(span, err)
		return err
	}
	spans := make([]trace.Span, len(msgs))
	for i, msg := range msgs {
		_, spans[i] = p.p.start(msg.Context(), topic, msg)
	}
	err := p.pub.Publish(topic, msgs...)
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
// message to its next retry stage) with a producer span "<topic> publish"
// carrying antidote.retry_stage and antidote.retry_delay, the child of the
// span in ctx (DelayedRetry passes the consumer span), else of
// msg.Context(). The message's traceparent then names that span, so the
// next stage's consumer span continues the same trace.
type Scheduler struct {
	s antidote.Scheduler
	p producer
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
	return &Scheduler{s: s, p: newProducer(cfg)}, nil
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
	spanCtx, span := s.p.start(parent, topic, msg, extra...)
	// Keep ctx's deadline; add the span so a scheduler that publishes with
	// it (PostgreSQL) passes the trace on.
	err := s.s.Schedule(trace.ContextWithSpan(ctx, trace.SpanFromContext(spanCtx)), topic, msg, after)
	endSpan(span, err)
	return err
}
