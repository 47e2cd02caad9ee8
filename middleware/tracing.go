package middleware

import (
	"context"
	"strconv"
	"sync"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/internal/otelconv"
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
	// message context). If empty, the attribute is left out. Under
	// router.New, System, ConsumerGroup and ServerAddress default to
	// router.Config.Consumer's; set here they override it for spans only.
	ConsumerGroup string
	// ServerAddress is the broker's address, reported as server.address and
	// server.port: "host:port", a comma-separated list of them (the first
	// is reported) or a URL, as adapters.Broker.Addr gives it. If empty,
	// the attributes are left out.
	ServerAddress string
	// KafkaKeyMetadata is the metadata key holding a Kafka message's record
	// key, reported as messaging.kafka.message.key on Kafka (System "kafka",
	// or a message with a Kafka position). Default "partition_key", the
	// Kafka adapter's default (adapters.KafkaConfig.PartitionKey).
	KafkaKeyMetadata string
}

func (c *TracingConfig) setDefaults() {
	if c.TracerProvider == nil {
		c.TracerProvider = otel.GetTracerProvider()
	}
	if c.Propagator == nil {
		c.Propagator = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
	}
	if c.KafkaKeyMetadata == "" {
		c.KafkaKeyMetadata = otelconv.DefaultKafkaKeyMetadata
	}
}

// Validate reports every invalid field of c, after defaults are applied
// (NewTracing applies them first). Every field is optional, so it never
// fails today; it is here so callers validate all configs alike.
func (c TracingConfig) Validate() error { return nil }

// Tracing starts one consumer span per delivery, following the OpenTelemetry
// messaging semantic conventions (semconv v1.43.0, whose schema URL the
// tracer carries), as the child of the producer's span found in the message
// metadata (traceparent), with a span link to that producer span too (as
// the conventions recommend for consumers). Build it with NewTracing.
//
// The span is named "process <topic>" and carries messaging.system,
// messaging.operation.name "process", messaging.operation.type "process",
// messaging.destination.name, messaging.consumer.group.name,
// messaging.message.id, messaging.message.body.size, server.address and
// server.port (TracingConfig.ServerAddress), on Kafka
// messaging.destination.partition.id, messaging.kafka.offset and
// messaging.kafka.message.key, on RabbitMQ
// messaging.rabbitmq.destination.routing_key (the topic: Antidote's AMQP
// adapter publishes to the default exchange with the queue's name), and
// error.type when the delivery failed: the DLQ reason ("permanent",
// "retries_exhausted", "crash_loop", ...) for a dead-lettered message, else
// the error's class (its ErrorType() method, or its Go type).
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
// The middleware's own log lines about a message carry trace_id and span_id.
//
// Put it outermost (docs/design.md, "Middleware order"), so the span covers the
// crash-loop guard and the dead-lettering too.
type Tracing struct {
	cfg    TracingConfig
	tracer trace.Tracer
	topics sync.Map // topic → *tracingTopic, so a delivery does not build them
	server []attribute.KeyValue
	// noop: the tracer is trace/noop's, whose Start only puts the parent's
	// span context back into the context (or a span with none): the
	// extracted context already carries it, so Start is skipped.
	noop bool
}

// tracingTopic is what every consumer span of one topic shares.
type tracingTopic struct {
	name  string               // "process orders"
	attrs []attribute.KeyValue // system, operation, destination, group, server, routing key
}

// producerLinkAttrs are the attributes of the consumer span's link to its
// producer span.
var producerLinkAttrs = []attribute.KeyValue{semconv.OpenTracingRefTypeChildOf}

// consumerSpanOpts is passed as opts... (a slice made per call would
// escape through the Tracer interface: one allocation per delivery).
var consumerSpanOpts = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindConsumer)}

// topic returns the span name and shared attributes of topic's spans:
// "process <topic>", or "process" outside a router.
func (t *Tracing) topic(topic string) *tracingTopic {
	if v, ok := t.topics.Load(topic); ok {
		return v.(*tracingTopic)
	}
	tt := &tracingTopic{name: otelconv.OpProcess}
	if topic != "" {
		tt.name = otelconv.OpProcess + " " + topic
	}
	if t.cfg.System != "" {
		tt.attrs = append(tt.attrs, semconv.MessagingSystemKey.String(t.cfg.System))
	}
	tt.attrs = append(tt.attrs, semconv.MessagingOperationTypeProcess, semconv.MessagingOperationName(otelconv.OpProcess))
	if topic != "" {
		tt.attrs = append(tt.attrs, semconv.MessagingDestinationName(topic))
		if t.cfg.System == otelconv.SystemRabbitMQ {
			tt.attrs = append(tt.attrs, semconv.MessagingRabbitMQDestinationRoutingKey(topic))
		}
	}
	if t.cfg.ConsumerGroup != "" {
		tt.attrs = append(tt.attrs, semconv.MessagingConsumerGroupName(t.cfg.ConsumerGroup))
	}
	tt.attrs = append(tt.attrs, t.server...)
	v, _ := t.topics.LoadOrStore(topic, tt)
	return v.(*tracingTopic)
}

// NewTracing fills cfg's defaults, validates it (see TracingConfig.Validate)
// and returns the middleware.
func NewTracing(cfg TracingConfig) (*Tracing, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	t := &Tracing{
		cfg:    cfg,
		tracer: cfg.TracerProvider.Tracer(antidote.TracerName, trace.WithSchemaURL(semconv.SchemaURL)),
		server: otelconv.ServerAttributes(cfg.ServerAddress),
	}
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
		// Attributes and the links are added once the span is known to
		// record: with tracing off (a no-op provider, a sampled-out trace)
		// building them would be most of the cost. The trade-off: a
		// sampler sees the span kind and name but not these attributes.
		tt := t.topic(message.SubscribeTopicFromCtx(parent))
		ctx, span := t.tracer.Start(parent, tt.name, consumerSpanOpts...)
		if !span.IsRecording() {
			// Still pass the (remote) span context down, so letters and
			// retry stages keep the producer's trace.
			msg.SetContext(ctx)
			defer span.End()
			return h(msg)
		}
		return t.traced(msg, h, ctx, span, tt, trace.SpanContextFromContext(parent))
	}
}

// traced runs h under a recording span (out of Middleware's closure, so the
// frame that stays on the stack while the handler runs is small when
// tracing is off).
func (t *Tracing) traced(msg *message.Message, h message.HandlerFunc, ctx context.Context, span trace.Span, tt *tracingTopic, producer trace.SpanContext) (produced []*message.Message, err error) {
	span.SetAttributes(t.attributes(msg, poison.OriginOf(msg), tt)...)
	if producer.IsValid() {
		// The link names the relation: the producer span is also the
		// parent. Jaeger folds a link to the parent into the parent
		// reference and would otherwise turn it into FOLLOWS_FROM.
		span.AddLink(trace.Link{SpanContext: producer, Attributes: producerLinkAttrs})
	}
	if link, ok := antidote.OriginalTraceLink(msg.Metadata); ok {
		span.AddLink(link)
	}
	st, ctx := joinDelivery(ctx)
	msg.SetContext(ctx)

	defer func() {
		// A panic above Recover (in a middleware) still ends the span,
		// then goes on to the router's recoverer.
		if v := recover(); v != nil {
			span.SetAttributes(semconv.ErrorTypeKey.String(string(poison.ReasonPanic)))
			span.SetStatus(codes.Error, "panic")
			span.End()
			panic(v)
		}
	}()
	produced, err = h(msg)

	outcome, reason := st.final(err)
	switch outcome {
	case OutcomeFailed, OutcomeDeferred:
		span.SetAttributes(antidote.AttrOutcome.String(string(outcome)), semconv.ErrorTypeKey.String(otelconv.ErrorType(err)))
		span.RecordError(err)
		span.SetStatus(codes.Error, traceErrorText(err))
	case OutcomeDeadLettered:
		// The cause is in the "attempt failed" and "dead-lettered"
		// events; error.type is the DLQ reason, the status says where the
		// message went.
		span.SetAttributes(antidote.AttrOutcome.String(string(outcome)), semconv.ErrorTypeKey.String(reasonClass(reason)))
		span.SetStatus(codes.Error, "dead-lettered")
	default:
		span.SetAttributes(antidote.AttrOutcome.String(string(outcome)))
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

func (t *Tracing) attributes(msg *message.Message, o poison.Origin, tt *tracingTopic) []attribute.KeyValue {
	attrs := make([]attribute.KeyValue, 0, len(tt.attrs)+10)
	attrs = append(attrs, tt.attrs...)
	system := t.cfg.System
	if system == "" && o.HasOffset {
		system = otelconv.SystemKafka
		attrs = append(attrs, semconv.MessagingSystemKey.String(system))
	}
	if tt.name == otelconv.OpProcess && o.Topic != "" { // outside a router
		attrs = append(attrs, semconv.MessagingDestinationName(o.Topic))
	}
	attrs = append(attrs,
		semconv.MessagingMessageID(msg.UUID),
		semconv.MessagingMessageBodySize(len(msg.Payload)),
	)
	if o.HasOffset {
		attrs = append(attrs,
			semconv.MessagingDestinationPartitionID(strconv.FormatInt(int64(o.Partition), 10)),
			semconv.MessagingKafkaOffset(int(o.Offset)),
		)
	}
	if system == otelconv.SystemKafka {
		if key := msg.Metadata[t.cfg.KafkaKeyMetadata]; key != "" {
			attrs = append(attrs, semconv.MessagingKafkaMessageKey(key))
		}
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

// reasonClass is error.type of a dead-lettered delivery: its DLQ reason.
func reasonClass(r poison.Reason) string {
	if r == "" {
		return semconv.ErrorTypeOther.Value.AsString()
	}
	return string(r)
}

// Log field names of the trace context the middleware adds to its own log
// lines about a message (watermill.LoggerAdapter has no context), as
// telemetry.NewLogHandler does for slog records: the W3C hex forms.
const (
	LogFieldTraceID = "trace_id"
	LogFieldSpanID  = "span_id"
)

// traceFields adds trace_id and span_id of the span in ctx (the consumer
// span below Tracing, else the producer's remote one) to fields.
func traceFields(ctx context.Context, fields watermill.LogFields) watermill.LogFields {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() {
		return fields
	}
	if fields == nil {
		fields = watermill.LogFields{}
	}
	fields[LogFieldTraceID] = sc.TraceID().String()
	fields[LogFieldSpanID] = sc.SpanID().String()
	return fields
}
