package telemetry

import (
	"context"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel/propagation"

	"github.com/antidote-mq/antidote"
)

// Propagator is W3C Trace Context plus W3C Baggage: the "traceparent",
// "tracestate" and "baggage" metadata keys, the format every OTel SDK and
// Jaeger understand. It is what middleware.Tracing and NewPublisher use by
// default.
func Propagator() propagation.TextMapPropagator {
	return propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
}

// Inject writes the trace context (and baggage) of ctx into msg's metadata
// with p (nil: Propagator()). Use it when publishing without NewPublisher.
func Inject(ctx context.Context, p propagation.TextMapPropagator, msg *message.Message) {
	if p == nil {
		p = Propagator()
	}
	if msg.Metadata == nil {
		msg.Metadata = message.Metadata{}
	}
	p.Inject(ctx, antidote.MetadataCarrier(msg.Metadata))
}

// Extract returns ctx with the remote span context and baggage found in
// msg's metadata, read with p (nil: Propagator()). middleware.Tracing does
// this for consumers; use it in code that reads messages without a router.
func Extract(ctx context.Context, p propagation.TextMapPropagator, msg *message.Message) context.Context {
	if p == nil {
		p = Propagator()
	}
	return p.Extract(ctx, antidote.MetadataCarrier(msg.Metadata))
}
