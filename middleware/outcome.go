package middleware

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/internal/textcut"
	"github.com/antidote-mq/antidote/poison"
)

// Outcome is how one delivery of a message ended, as Tracing (span
// attribute "antidote.outcome") and Metrics (label "outcome") report it.
//
// Several outcomes return nil to the router (the message is acked) although
// the handler did not succeed: only the middleware that settled the message
// knows, so DeadLetter, DelayedRetry and Metrics.RecordDuplicate note it on
// the delivery, and Tracing and Metrics, which sit outermost, read it back.
type Outcome string

// The outcomes of a delivery.
const (
	// OutcomeProcessed: the handler succeeded; the message is acked.
	OutcomeProcessed Outcome = "processed"
	// OutcomeFailed: an error reached the router; the message is nacked and
	// delivered again (a DLQ publish that failed, a shutdown mid-retry).
	OutcomeFailed Outcome = "failed"
	// OutcomeDeferred: the DLQ-storm breaker held the message back
	// (poison.Defer); nacked and delivered again after a backoff.
	OutcomeDeferred Outcome = "deferred"
	// OutcomeDeadLettered: the message is in the DLQ; the original is acked.
	OutcomeDeadLettered Outcome = "dead_lettered"
	// OutcomeRetryScheduled: moved to a delayed retry stage; acked here.
	OutcomeRetryScheduled Outcome = "retry_scheduled"
	// OutcomeDuplicate: the idempotency key was already done; acked without
	// running the handler.
	OutcomeDuplicate Outcome = "duplicate"
)

// deliveryState is what the middleware below Tracing and Metrics tell them
// about one delivery. It travels in msg.Context() as a pointer, so it
// survives Retry resetting the context between attempts.
type deliveryState struct {
	mu      sync.Mutex
	outcome Outcome
	reason  poison.Reason
	// metrics, when set, counts retries as they happen (a message can wait
	// seconds between attempts; counting only at the end would hide a retry
	// storm until it is over).
	metrics *Metrics
	handler string
	// guard is the crash-loop guard's counted delivery (CrashLoopGuard), so
	// Retry can take its count back between attempts; zero when none.
	guard inFlight
}

type deliveryStateKey struct{}

// deliveryStateOf returns the state in ctx, or nil outside Tracing/Metrics.
func deliveryStateOf(ctx context.Context) *deliveryState {
	st, _ := ctx.Value(deliveryStateKey{}).(*deliveryState)
	return st
}

// joinDelivery returns the delivery state in ctx, creating it (and a
// context carrying it) when there is none yet. Tracing and Metrics share
// one: whichever is outer creates it.
func joinDelivery(ctx context.Context) (*deliveryState, context.Context) {
	if st := deliveryStateOf(ctx); st != nil {
		return st, ctx
	}
	c := &deliveryCtx{Context: ctx}
	return &c.st, c
}

// deliveryCtx is a context carrying a deliveryState: the state and the
// context node are one allocation (context.WithValue would be a second).
type deliveryCtx struct {
	context.Context
	st deliveryState
}

func (c *deliveryCtx) Value(key any) any {
	if _, ok := key.(deliveryStateKey); ok {
		return &c.st
	}
	return c.Context.Value(key)
}

func (c *deliveryCtx) String() string { return "antidote.deliveryCtx" }

func (s *deliveryState) set(o Outcome, reason poison.Reason) {
	s.mu.Lock()
	s.outcome, s.reason = o, reason
	s.mu.Unlock()
}

// final decides the outcome from what was noted and the error the chain
// returned. An error always wins: a letter noted as published but whose
// delivery still failed (a middleware above DeadLetter turned it into a
// nack) is delivered again, so it is not "dead_lettered" yet.
func (s *deliveryState) final(err error) (Outcome, poison.Reason) {
	if err != nil {
		if errors.Is(err, poison.ErrDeferred) {
			return OutcomeDeferred, ""
		}
		return OutcomeFailed, ""
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.outcome == "" {
		return OutcomeProcessed, ""
	}
	return s.outcome, s.reason
}

// Span event names, for readers of traces and for tests.
const (
	// EventAttemptFailed is added by Retry for every failed attempt.
	EventAttemptFailed = "attempt failed"
	// EventRetry is added by Retry before it waits for the next attempt.
	EventRetry = "retry"
	// EventDeadLettered is added by DeadLetter once the letter is published.
	EventDeadLettered = "dead-lettered"
	// EventRetryScheduled is added by DelayedRetry once the message is in
	// its next stage.
	EventRetryScheduled = "retry scheduled"
	// EventDuplicate is added by Metrics.RecordDuplicate.
	EventDuplicate = "duplicate skipped"
	// EventHeld is added by Breaker to each delivery it holds back (nacks
	// after a backoff instead of dead-lettering), with antidote.AttrHold,
	// antidote.AttrHeldSince, antidote.AttrDecideBy and antidote.AttrHoldReason.
	EventHeld = "antidote.held"
)

// Exception attribute keys, as the OTel exception semantic conventions name
// them (spelled out so this file needs no semconv import).
const (
	attrExceptionType    = attribute.Key("exception.type")
	attrExceptionMessage = attribute.Key("exception.message")
)

// maxTraceErrorBytes bounds error texts put on spans: an error that embeds a
// whole payload must not turn every span into megabytes.
const maxTraceErrorBytes = 1 << 10

func traceErrorText(err error) string { return traceText(err.Error()) }

// traceText cuts s to maxTraceErrorBytes.
func traceText(s string) string {
	return textcut.Truncate(s, maxTraceErrorBytes, "...[truncated]")
}

func errorAttrs(err error) []attribute.KeyValue {
	return []attribute.KeyValue{
		attrExceptionType.String(poison.ErrorType(err)),
		attrExceptionMessage.String(traceErrorText(err)),
	}
}

// noteAttemptFailed records a failed attempt on the consumer span; retrying
// says whether Retry will try again (and after what delay).
func noteAttemptFailed(ctx context.Context, attempt int, err error, class poison.Class) {
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return // no allocation when tracing is off
	}
	attrs := append(errorAttrs(err), antidote.AttrAttempt.Int(attempt), antidote.AttrErrorClass.String(class.String()))
	span.AddEvent(EventAttemptFailed, trace.WithAttributes(attrs...))
}

// noteRetry records that Retry will run attempt next after delay.
func noteRetry(ctx context.Context, next int, delay time.Duration) {
	if st := deliveryStateOf(ctx); st != nil {
		st.mu.Lock()
		m, handler := st.metrics, st.handler
		st.mu.Unlock()
		if m != nil {
			m.retried.Add(recordContext(ctx), 1, m.handlerOpt(handler).add...)
		}
	}
	if span := trace.SpanFromContext(ctx); span.IsRecording() {
		span.AddEvent(EventRetry, trace.WithAttributes(antidote.AttrAttempt.Int(next), antidote.AttrRetryDelay.String(delay.String())))
	}
}

// noteDeadLettered marks the delivery as dead-lettered; ctx is the original
// message's context.
func noteDeadLettered(ctx context.Context, reason poison.Reason, dlqTopic string, err error) {
	if st := deliveryStateOf(ctx); st != nil {
		st.set(OutcomeDeadLettered, reason)
	}
	if span := trace.SpanFromContext(ctx); span.IsRecording() {
		attrs := []attribute.KeyValue{antidote.AttrReason.String(string(reason)), antidote.AttrDLQTopic.String(dlqTopic)}
		if err != nil {
			attrs = append(attrs, errorAttrs(err)...)
		}
		span.AddEvent(EventDeadLettered, trace.WithAttributes(attrs...))
	}
}

// noteRetryScheduled marks the delivery as moved to a delayed stage.
func noteRetryScheduled(ctx context.Context, stage int, after time.Duration, err error) {
	if st := deliveryStateOf(ctx); st != nil {
		st.set(OutcomeRetryScheduled, "")
	}
	if span := trace.SpanFromContext(ctx); span.IsRecording() {
		attrs := append(errorAttrs(err), antidote.AttrRetryStage.Int(stage), antidote.AttrRetryDelay.String(after.String()))
		span.AddEvent(EventRetryScheduled, trace.WithAttributes(attrs...))
	}
}

// noteHeld records on the consumer span that the breaker holds this
// delivery back; hold 0 is an untracked message (no UUID).
func noteHeld(ctx context.Context, since time.Time, hold int, decideBy time.Time, why string) {
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	attrs := []attribute.KeyValue{antidote.AttrHold.Int(hold), antidote.AttrHoldReason.String(traceText(why))}
	if hold > 0 {
		attrs = append(attrs, antidote.AttrHeldSince.String(logTime(since)), antidote.AttrDecideBy.String(logTime(decideBy)))
	}
	span.AddEvent(EventHeld, trace.WithAttributes(attrs...))
}

// withTraceOf returns ctx carrying the span and baggage of from when ctx has
// none. DeadLetter and DelayedRetry publish under their own contexts (so a
// cancelled message context cannot stop a DLQ publish), which would cut the
// trace: this keeps the cancellation of ctx and the trace of the message, so
// a decorated publisher (telemetry.NewPublisher) starts the DLQ or
// retry-stage producer span as a child of the consumer span.
func withTraceOf(ctx, from context.Context) context.Context {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		if span := trace.SpanFromContext(from); span.SpanContext().IsValid() {
			ctx = trace.ContextWithSpan(ctx, span)
		}
	}
	if baggage.FromContext(ctx).Len() == 0 {
		if b := baggage.FromContext(from); b.Len() > 0 {
			ctx = baggage.ContextWithBaggage(ctx, b)
		}
	}
	return ctx
}

// stampTraceparent points the traceparent of an outgoing copy (a letter, a
// retry-stage message) at the span in ctx, when there is one, so the trace
// continues from where the message was given up even if the publisher is not
// decorated. A decorated publisher overwrites it with its producer span.
// Without a span (no Tracing) the copy keeps the original's traceparent.
func stampTraceparent(ctx context.Context, md message.Metadata) {
	if trace.SpanContextFromContext(ctx).IsValid() {
		propagation.TraceContext{}.Inject(ctx, antidote.MetadataCarrier(md))
	}
}

// metadataInt reads a non-negative decimal metadata value (0 when absent).
func metadataInt(md message.Metadata, key string) int {
	v := md[key]
	if v == "" {
		return 0 // strconv's error for "" allocates
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0
	}
	return n
}
