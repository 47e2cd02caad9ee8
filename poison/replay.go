package poison

import (
	"math"
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
// partition key, producer, baggage, and what a producer sent that the
// consumer kept under antidote.MetadataForeignPrefix), and KeyReplayedAt and
// KeyReplayCount (one more than the letter's).
//
// Left out is what described the message's last life and would mislead its
// next one: the letter keys (LetterKeys: at the consumer they would become
// foreign copies a producer never sent), KeyAttempts, the decoder's keys
// and their foreign copies (on a letter those may be an older Antidote's
// decoder's, which the hospital's reader makes foreign: not the
// producer's), and the scheduler's keys (a replay carrying the retry stage
// it died in would skip the delayed stages at its first transient failure).
//
// The letter's traceparent moves to KeyOriginalTraceparent (tracestate is
// dropped with it): the replay begins a fresh trace that links to the one
// the message died in. A letter without a traceparent keeps whatever
// KeyOriginalTraceparent it had.
func Replay(letter *message.Message, now time.Time) *message.Message {
	out := message.NewMessage(letter.UUID, append([]byte(nil), letter.Payload...))
	for k, v := range letter.Metadata {
		if !isForeignDecoderKey(k) {
			out.Metadata.Set(k, v)
		}
	}
	for _, k := range letterKeys {
		delete(out.Metadata, k)
	}
	for _, k := range []string{
		KeyAttempts,
		// The consumer's decoder says afresh whether the record decodes: a
		// letter dead-lettered as undecodable, replayed after the fix, must
		// reach its handler, not go straight back to the DLQ.
		antidote.MetadataUndecodable, antidote.MetadataRawMetadata,
		antidote.MetadataRetryStage, antidote.MetadataRetryDue, antidote.MetadataRetryTopic,
	} {
		delete(out.Metadata, k)
	}
	if tp := letter.Metadata.Get(KeyTraceparent); tp != "" {
		out.Metadata.Set(KeyOriginalTraceparent, tp)
	}
	delete(out.Metadata, KeyTraceparent)
	delete(out.Metadata, keyTracestate)
	n, err := strconv.Atoi(letter.Metadata.Get(KeyReplayCount))
	if err != nil || n < 0 || n == math.MaxInt {
		n = 0 // malformed (the letter's KeyMalformed has it): counting starts over
	}
	out.Metadata.Set(KeyReplayCount, strconv.Itoa(n+1))
	out.Metadata.Set(KeyReplayedAt, now.UTC().Format(time.RFC3339Nano))
	return out
}
