package poison

import (
	"strconv"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

// Replay builds the message that sends a dead letter back for another try:
// the same UUID (so an idempotent consumer that already processed it skips
// it), the payload byte for byte, the original metadata (idempotency key,
// partition key, traceparent, producer) without the failure keys, and
// KeyReplayedAt and KeyReplayCount (one more than the letter's).
func Replay(letter *message.Message, now time.Time) *message.Message {
	out := message.NewMessage(letter.UUID, append([]byte(nil), letter.Payload...))
	for k, v := range letter.Metadata {
		out.Metadata.Set(k, v)
	}
	for _, k := range failureKeys {
		delete(out.Metadata, k)
	}
	delete(out.Metadata, KeyAttempts)
	n, _ := strconv.Atoi(letter.Metadata.Get(KeyReplayCount))
	out.Metadata.Set(KeyReplayCount, strconv.Itoa(n+1))
	out.Metadata.Set(KeyReplayedAt, now.UTC().Format(time.RFC3339Nano))
	return out
}
