package poison

import (
	"strconv"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote"
)

// KeyOriginalTraceparent is set by Replay: the W3C traceparent the letter
// carried, i.e. the trace the message was dead-lettered in. The replay
// itself starts a new trace (an operator's replay days later is not part of
// the original request); middleware.Tracing and telemetry.NewPublisher link
// their spans to this one, so the two traces lead to each other.
const KeyOriginalTraceparent = antidote.MetadataOriginalTraceparent

// keyTracestate is the W3C tracestate that belongs to KeyTraceparent.
const keyTracestate = "tracestate"

// Replay builds the message that sends a dead letter back for another try:
// the same UUID (so an idempotent consumer that already processed it skips
// it), the payload byte for byte, the original metadata (idempotency key,
// partition key, producer, baggage) without the failure keys and
// antidote.MetadataUndecodable, and
// KeyReplayedAt and KeyReplayCount (one more than the letter's).
//
// The letter's traceparent moves to KeyOriginalTraceparent (tracestate is
// dropped with it): the replay begins a fresh trace that links to the one
// the message died in. A letter without a traceparent keeps whatever
// KeyOriginalTraceparent it had.
func Replay(letter *message.Message, now time.Time) *message.Message {
	out := message.NewMessage(letter.UUID, append([]byte(nil), letter.Payload...))
	for k, v := range letter.Metadata {
		out.Metadata.Set(k, v)
	}
	for _, k := range failureKeys {
		delete(out.Metadata, k)
	}
	delete(out.Metadata, KeyAttempts)
	// The consumer's decoder says afresh whether the record decodes: a
	// letter dead-lettered as undecodable, replayed after the fix, must
	// reach its handler, not go straight back to the DLQ.
	delete(out.Metadata, antidote.MetadataUndecodable)
	if tp := letter.Metadata.Get(KeyTraceparent); tp != "" {
		out.Metadata.Set(KeyOriginalTraceparent, tp)
	}
	delete(out.Metadata, KeyTraceparent)
	delete(out.Metadata, keyTracestate)
	n, _ := strconv.Atoi(letter.Metadata.Get(KeyReplayCount))
	out.Metadata.Set(KeyReplayCount, strconv.Itoa(n+1))
	out.Metadata.Set(KeyReplayedAt, now.UTC().Format(time.RFC3339Nano))
	return out
}
