package poison_test

import (
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/assert"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/poison"
)

func TestReplayMovesTraceparentToOriginal(t *testing.T) {
	letter := message.NewMessage("uuid-1", []byte(`{}`))
	letter.Metadata.Set(poison.KeyTraceparent, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	letter.Metadata.Set("tracestate", "vendor=1")
	letter.Metadata.Set("baggage", "tenant=acme")
	letter.Metadata.Set(poison.KeyReason, string(poison.ReasonPermanent))
	letter.Metadata.Set(poison.KeyAttempts, "3")
	letter.Metadata.Set(poison.KeyReplayCount, "1")
	now := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)

	out := poison.Replay(letter, now)
	assert.Equal(t, "uuid-1", out.UUID)
	assert.Empty(t, out.Metadata.Get(poison.KeyTraceparent), "the replay starts a new trace")
	assert.Empty(t, out.Metadata.Get("tracestate"))
	assert.Equal(t, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", out.Metadata.Get(poison.KeyOriginalTraceparent))
	assert.Equal(t, "tenant=acme", out.Metadata.Get("baggage"), "baggage is the user's and travels")
	assert.Empty(t, out.Metadata.Get(poison.KeyReason))
	assert.Empty(t, out.Metadata.Get(poison.KeyAttempts))
	assert.Equal(t, "2", out.Metadata.Get(poison.KeyReplayCount))
	assert.Equal(t, "2026-11-23T10:00:00Z", out.Metadata.Get(poison.KeyReplayedAt))
	assert.Equal(t, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", letter.Metadata.Get(poison.KeyTraceparent), "the letter is not modified")

	// A letter without a traceparent keeps the link it had.
	again := message.NewMessage("uuid-1", nil)
	again.Metadata.Set(poison.KeyOriginalTraceparent, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	assert.Equal(t, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", poison.Replay(again, now).Metadata.Get(poison.KeyOriginalTraceparent))
}

// A letter dead-lettered as undecodable is replayed after the decoder (or
// the producer) was fixed: the replay must reach the handler, so the
// decoder's flag does not travel with it, nor the raw metadata the letter
// kept (at the consumer it would be a foreign key no producer sent).
func TestReplayForgetsUndecodable(t *testing.T) {
	letter := message.NewMessage("uuid-1", []byte(`{}`))
	letter.Metadata.Set(antidote.MetadataUndecodable, "postgres row 7: metadata is not a JSON object")
	letter.Metadata.Set(antidote.MetadataRawMetadata, `[1,2]`)
	letter.Metadata.Set(poison.KeyUndecodableMetadata, `[1,2]`)
	letter.Metadata.Set(poison.KeyReason, string(poison.ReasonUndecodable))
	out := poison.Replay(letter, time.Now())
	assert.False(t, antidote.IsUndecodable(out), "the replay is decoded afresh")
	for _, k := range []string{antidote.MetadataRawMetadata, poison.KeyUndecodableMetadata} {
		_, ok := out.Metadata[k]
		assert.False(t, ok, "%s travels with the replay", k)
	}
	assert.True(t, antidote.IsUndecodable(letter), "the letter is not modified")
}
