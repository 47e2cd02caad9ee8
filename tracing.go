package antidote

import (
	"context"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// TracerName is the instrumentation scope of Antidote's spans and metrics.
const TracerName = "github.com/antidote-mq/antidote"

// Span attribute keys of Antidote's own (the messaging.* ones are OTel's).
const (
	AttrHandler     = attribute.Key("antidote.handler")
	AttrOutcome     = attribute.Key("antidote.outcome")
	AttrAttempt     = attribute.Key("antidote.attempt")
	AttrErrorClass  = attribute.Key("antidote.error_class")
	AttrRetryDelay  = attribute.Key("antidote.retry_delay")
	AttrReason      = attribute.Key("antidote.reason")
	AttrDLQTopic    = attribute.Key("antidote.dlq_topic")
	AttrRetryStage  = attribute.Key("antidote.retry_stage")
	AttrReplayCount = attribute.Key("antidote.replay_count")
	AttrLinkType    = attribute.Key("antidote.link")
	// AttrHold is which hold of the message this is (1 for the first); 0
	// for a message without a UUID, whose holds are not tracked (it then
	// has no AttrHeldSince nor AttrDecideBy).
	AttrHold = attribute.Key("antidote.hold")
	// AttrHeldSince is the message's first hold (RFC 3339, UTC).
	AttrHeldSince = attribute.Key("antidote.held_since")
	// AttrDecideBy is AttrHeldSince + MaxHoldTime: a transient failure
	// after it sends the message to the DLQ (RFC 3339, UTC).
	AttrDecideBy = attribute.Key("antidote.decide_by")
	// AttrHoldReason says why the breaker holds the message.
	AttrHoldReason = attribute.Key("antidote.hold_reason")
)

// Trace context metadata keys.
const (
	// MetadataTraceparent is the W3C trace context of a message.
	MetadataTraceparent = "traceparent"
	// MetadataOriginalTraceparent is the trace context a replayed letter was
	// dead-lettered in; a replay starts a new trace linked to it.
	MetadataOriginalTraceparent = "antidote.original_traceparent"
)

// MetadataCarrier adapts message.Metadata to propagation.TextMapCarrier, so
// any OTel propagator reads and writes trace context in message metadata.
// A nil MetadataCarrier can be read but not written.
type MetadataCarrier message.Metadata

var _ propagation.TextMapCarrier = MetadataCarrier(nil)

// Get returns the value of key, "" when absent.
func (c MetadataCarrier) Get(key string) string { return c[key] }

// Set stores key.
func (c MetadataCarrier) Set(key, value string) { c[key] = value }

// Keys lists the keys present.
func (c MetadataCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// OriginalTraceLink returns a span link to the trace a replayed message was
// dead-lettered in (MetadataOriginalTraceparent), with attribute
// antidote.link=original. ok is false when the key is absent or malformed.
// middleware.Tracing adds it to the consumer span; telemetry.NewPublisher
// to the replay's producer span.
func OriginalTraceLink(md message.Metadata) (trace.Link, bool) {
	tp := md[MetadataOriginalTraceparent]
	if tp == "" {
		return trace.Link{}, false
	}
	carrier := propagation.MapCarrier{MetadataTraceparent: tp}
	sc := trace.SpanContextFromContext(propagation.TraceContext{}.Extract(context.Background(), carrier))
	if !sc.IsValid() {
		return trace.Link{}, false
	}
	return trace.Link{SpanContext: sc, Attributes: []attribute.KeyValue{AttrLinkType.String("original")}}, true
}
