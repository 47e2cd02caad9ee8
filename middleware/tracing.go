package middleware

import (
	"context"
	"strconv"
	"sync"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/poison"
)

// TracingConfig configures Tracing. The zero value is usable.
type TracingConfig struct {
	// TracerProvider creates the consumer spans. Default: the global
	// provider (otel.GetTracerProvider()) as it is when NewTracing runs;
	// until a program installs one that is a no-op, so tracing costs next to
	// nothing unless it is set up (telemetry.SetupFromEnv returns one).
	TracerProvider trace.TracerProvider
	// Propagator reads the producer's trace context from message metadata.
	// Default: W3C Trace Context + Baggage (the "traceparent", "tracestate"
	// and "baggage" keys), not the global propagator, which is a no-op until
	// set: messages carry W3C headers on every broker, whatever the program
	// configured globally.
	Propagator propagation.TextMapPropagator
	// System is messaging.system: "kafka", "rabbitmq", or your own name such
	// as "postgresql" (telemetry.MessagingSystem maps an adapters.Kind).
	// Default: "kafka" when the message context carries a Kafka partition
	// and offset, otherwise the attribute is left out.
	System string
	// ConsumerGroup is messaging.consumer.group.name (it is not in the
	// message context). If empty, the attribute is left out.
	ConsumerGroup string
}

func (c *TracingConfig) setDefaults() {
	if c.TracerProvider == nil {
		c.TracerProvider = otel.GetTracerProvider()
	}
	if c.Propagator == nil {
		c.Propagator = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
	}
}

// Validate reports every invalid field of c, after defaults are applied
// (NewTracing applies them first). Every field is optional, so it never
// fails today; it is here so callers validate all configs alike.
func (c TracingConfig) Validate() error { return nil }

// Tracing starts one consumer span per delivery, following the OpenTelemetry
// messaging semantic conventions, as the child of the producer's span found
// in the message metadata (traceparent). Build it with NewTracing.
//
// The span goes into msg.Context(), so everything below sees it: Retry adds
// an "attempt failed" event per failed attempt and a "retry" event per
// retry, DeadLetter a "dead-lettered" event, DelayedRetry a "retry
// scheduled" event and Breaker an "antidote.held" event per delivery it
// holds back; their publishes (the letter, the retry-stage message)
// carry the span as their parent, so a publisher decorated with
// telemetry.NewPublisher / telemetry.NewScheduler adds producer spans to the
// same trace. The span status is Error when the delivery failed (nacked) or
// ended in the DLQ. A replayed message (poison.KeyOriginalTraceparent)
// starts a new trace whose consumer span links to the trace it died in.
//
// Put it outermost (docs/design.md, "Middleware order"), so the span covers the
// crash-loop guard and the dead-lettering too.
type Tracing struct {
	cfg    TracingConfig
	tracer trace.Tracer
	names  sync.Map // topic → span name, so a delivery does not build it
	// noop: the tracer is trace/noop's, whose Start only puts the parent's
	// span context back into the context (or a span with none): the
	// extracted context already carries it, so Start is skipped.
	noop bool
}

// consumerSpanOpts is passed as opts... (a slice made per call would
// escape through the Tracer interface: one allocation per delivery).
var consumerSpanOpts = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindConsumer)}

// spanName is "<topic> process", or "process" outside a router.
func (t *Tracing) spanName(topic string) string {
	if topic == "" {
		return "process"
	}
	if v, ok := t.names.Load(topic); ok {
		return v.(string)
	}
	name := topic + " process"
	t.names.Store(topic, name)
	return name
}

// NewTracing fills cfg's defaults, validates it (see TracingConfig.Validate)
// and returns the middleware.
func NewTracing(cfg TracingConfig) (*Tracing, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	t := &Tracing{cfg: cfg, tracer: cfg.TracerProvider.Tracer(antidote.TracerName)}
	switch t.tracer.(type) {
	case tracenoop.Tracer, *tracenoop.Tracer:
		t.noop = true
	}
	return t, nil
}

// Middleware returns the tracing handler.
func (t *Tracing) Middleware(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) (produced []*message.Message, err error) {
		parent := t.cfg.Propagator.Extract(msg.Context(), antidote.MetadataCarrier(msg.Metadata))
		if t.noop {
			// Pass the (remote) span context down, so letters and retry
			// stages keep the producer's trace.
			msg.SetContext(parent)
			return h(msg)
		}
		// Attributes and the replay link are added once the span is known
		// to record: with tracing off (a no-op provider, a sampled-out
		// trace) building them would be most of the cost. The trade-off: a
		// sampler sees the span kind and name but not these attributes.
		ctx, span := t.tracer.Start(parent, t.spanName(message.SubscribeTopicFromCtx(parent)), consumerSpanOpts...)
		if !span.IsRecording() {
			// Still pass the (remote) span context down, so letters and
			// retry stages keep the producer's trace.
			msg.SetContext(ctx)
			defer span.End()
			return h(msg)
		}
		return t.traced(msg, h, ctx, span)
	}
}

// traced runs h under a recording span (out of Middleware's closure, so the
// frame that stays on the stack while the handler runs is small when
// tracing is off).
func (t *Tracing) traced(msg *message.Message, h message.HandlerFunc, ctx context.Context, span trace.Span) (produced []*message.Message, err error) {
	span.SetAttributes(t.attributes(msg, poison.OriginOf(msg))...)
	if link, ok := antidote.OriginalTraceLink(msg.Metadata); ok {
		span.AddLink(link)
	}
	st, ctx := joinDelivery(ctx)
	msg.SetContext(ctx)

	defer func() {
		// A panic above Recover (in a middleware) still ends the span,
		// then goes on to the router's recoverer.
		if v := recover(); v != nil {
			span.SetStatus(codes.Error, "panic")
			span.End()
			panic(v)
		}
	}()
	produced, err = h(msg)

	outcome, _ := st.final(err)
	span.SetAttributes(antidote.AttrOutcome.String(string(outcome)))
	switch outcome {
	case OutcomeFailed, OutcomeDeferred:
		span.RecordError(err)
		span.SetStatus(codes.Error, traceErrorText(err))
	case OutcomeDeadLettered:
		// The cause is in the "attempt failed" and "dead-lettered"
		// events; the status says where the message went.
		span.SetStatus(codes.Error, "dead-lettered")
	}
	span.End()

	// Messages the handler produced are published by the router after
	// this returns; parent them on this span so a decorated publisher
	// keeps them in the trace (unless the handler chose a context).
	for _, p := range produced {
		if p != nil && !trace.SpanContextFromContext(p.Context()).IsValid() {
			p.SetContext(trace.ContextWithSpan(p.Context(), span))
		}
	}
	return produced, err
}

func (t *Tracing) attributes(msg *message.Message, o poison.Origin) []attribute.KeyValue {
	attrs := make([]attribute.KeyValue, 0, 12)
	system := t.cfg.System
	if system == "" && o.HasOffset {
		system = "kafka"
	}
	if system != "" {
		attrs = append(attrs, semconv.MessagingSystemKey.String(system))
	}
	attrs = append(attrs,
		semconv.MessagingOperationTypeProcess,
		semconv.MessagingOperationName("process"),
		semconv.MessagingMessageID(msg.UUID),
		semconv.MessagingMessageBodySize(len(msg.Payload)),
	)
	if o.Topic != "" {
		attrs = append(attrs, semconv.MessagingDestinationName(o.Topic))
	}
	if t.cfg.ConsumerGroup != "" {
		attrs = append(attrs, semconv.MessagingConsumerGroupName(t.cfg.ConsumerGroup))
	}
	if o.HasOffset {
		attrs = append(attrs,
			semconv.MessagingDestinationPartitionID(strconv.FormatInt(int64(o.Partition), 10)),
			semconv.MessagingKafkaOffset(int(o.Offset)),
		)
	}
	if o.Handler != "" {
		attrs = append(attrs, antidote.AttrHandler.String(o.Handler))
	}
	if n := metadataInt(msg.Metadata, antidote.MetadataRetryStage); n > 0 {
		attrs = append(attrs, antidote.AttrRetryStage.Int(n))
	}
	if n := metadataInt(msg.Metadata, poison.KeyReplayCount); n > 0 {
		attrs = append(attrs, antidote.AttrReplayCount.Int(n))
	}
	return attrs
}
