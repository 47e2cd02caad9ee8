package poison_test

import (
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/poison"
)

// LetterKeys is the one list of what the envelope writes: every antidote.*
// key Envelope, ShrinkEnvelope and ClaimLetter add is in it, except those
// that also travel on live messages (attempts, carried across retries).
func TestLetterKeysAreWhatTheEnvelopeWrites(t *testing.T) {
	msg := message.NewMessage("u", []byte(strings.Repeat("p", 100)))
	msg.Metadata.Set(antidote.MetadataUndecodable, "kafka record t/0/1: bad")
	msg.Metadata.Set(antidote.MetadataRawMetadata, "[1]")
	msg.Metadata.Set(poison.KeyReplayCount, "x") // malformed: KeyMalformed
	now := time.Now()
	letter := poison.Envelope(msg,
		poison.Origin{Topic: "t", Handler: "h", ConsumerGroup: "g", ConsumerVersion: "v1", Partition: 1, Offset: 2, HasOffset: true},
		poison.Failure{Err: poison.NewPanicError("boom"), Attempts: 3, FirstFailedAt: now, LastFailedAt: now})
	_, _, claimed, err := poison.ClaimLetter(poison.ShrinkEnvelope(letter))
	require.NoError(t, err)

	written := map[string]bool{}
	for _, m := range []*message.Message{letter, claimed} {
		for k := range m.Metadata {
			if strings.HasPrefix(k, "antidote.") && !strings.HasPrefix(k, antidote.MetadataForeignPrefix) {
				written[k] = true
			}
		}
	}
	delete(written, poison.KeyAttempts) // a live message's too (Retry keeps it)
	for k := range written {
		assert.True(t, poison.IsLetterKey(k), "the envelope writes %s, which LetterKeys lacks", k)
	}
	for _, k := range poison.LetterKeys() {
		assert.True(t, written[k], "LetterKeys has %s, which no letter here carries", k)
		assert.True(t, poison.IsLetterKey(k))
	}
	assert.False(t, poison.IsLetterKey(poison.KeyAttempts))
	assert.False(t, poison.IsLetterKey(poison.KeyProducer))
	assert.False(t, poison.IsLetterKey(antidote.MetadataUndecodable))
}

func TestReaderDistrust(t *testing.T) {
	arriving := func() message.Metadata {
		return message.Metadata{
			antidote.MetadataUndecodable:                      "spoofed",
			antidote.MetadataRawMetadata:                      "[]",
			poison.KeyClaimCheck:                              "sha256:someone-else",
			poison.KeyReason:                                  "permanent",
			antidote.ForeignKey(poison.KeyReason):             "sent as foreign already",
			poison.KeyAttempts:                                "7",
			poison.KeyReplayCount:                             "1",
			antidote.MetadataRetryStage:                       "2",
			poison.KeyProducer:                                "checkout",
			"antidote":                                        "no dot",
			"partition_key":                                   "k",
			antidote.ForeignKey(antidote.MetadataUndecodable): "sent as foreign already",
		}
	}

	md := arriving()
	poison.ConsumerReader.Distrust(md)
	assert.Equal(t, message.Metadata{
		"antidote.foreign.undecodable":         "sent as foreign already",
		"antidote.foreign.foreign.undecodable": "spoofed", // the first place was taken: nothing is lost
		"antidote.foreign.raw_metadata":        "[]",
		"antidote.foreign.claim_check":         "sha256:someone-else",
		"antidote.foreign.reason":              "sent as foreign already",
		"antidote.foreign.foreign.reason":      "permanent",
		poison.KeyAttempts:                     "7",
		poison.KeyReplayCount:                  "1",
		antidote.MetadataRetryStage:            "2",
		poison.KeyProducer:                     "checkout",
		"antidote":                             "no dot",
		"partition_key":                        "k",
	}, md)

	md = arriving()
	poison.LetterReader.Distrust(md)
	assert.Equal(t, "sha256:someone-else", md[poison.KeyClaimCheck], "a letter reader believes letter keys")
	assert.Equal(t, "permanent", md[poison.KeyReason])
	assert.Equal(t, "spoofed", md["antidote.foreign.foreign.undecodable"], "decoder keys are foreign to every reader")
	assert.Equal(t, "[]", md["antidote.foreign.raw_metadata"])
	_, ok := md[antidote.MetadataUndecodable]
	assert.False(t, ok)

	var zero poison.Reader
	assert.Equal(t, poison.ConsumerReader, zero, "the zero value is the safe one")
}

// The hot path: a message without keys to rename costs no allocation, also
// with the antidote.* keys that are believed.
func TestReaderDistrustAllocatesNothingWhenNothingIsForeign(t *testing.T) {
	md := message.Metadata{"partition_key": "k", "traceparent": "00-x", "Idempotency-Key": "i",
		poison.KeyAttempts: "1", poison.KeyProducer: "p", antidote.MetadataRetryStage: "1"}
	before := maps.Clone(md)
	allocs := testing.AllocsPerRun(100, func() { poison.ConsumerReader.Distrust(md) })
	assert.Zero(t, allocs)
	assert.Equal(t, before, md)
}

// A message that skipped the adapters (a custom subscriber) carries a whole
// forged envelope: the letter describes this consumer's failure, the forged
// values stay in it as foreign, and the decoder's keys are not copied as
// they are.
func TestEnvelopeBelievesNothingOnTheMessage(t *testing.T) {
	msg := message.NewMessage("u", []byte("own payload"))
	forged := map[string]string{
		poison.KeyReason: "crash_loop", poison.KeyError: "forged", poison.KeyErrorType: "*forged.Error",
		poison.KeyOriginalTopic: "elsewhere", poison.KeyHandler: "someone", poison.KeyClaimCheck: "sha256:other-letter",
		poison.KeyClaimCheckBytes: "99", poison.KeyShrunk: "true", poison.KeyMalformed: "forged",
		poison.KeyUndecodableMetadata: "forged",
	}
	for k, v := range forged {
		msg.Metadata.Set(k, v)
	}
	msg.Metadata.Set(antidote.MetadataUndecodable, "kafka record t/0/9: bad header")
	msg.Metadata.Set(antidote.MetadataRawMetadata, `[1,2]`)

	letter := poison.Envelope(msg, poison.Origin{Topic: "orders", Handler: "charge"},
		poison.Failure{Reason: poison.ReasonUndecodable, Err: &poison.UndecodableError{Detail: "kafka record t/0/9: bad header"}, Attempts: 1})
	md := letter.Metadata
	assert.Equal(t, "undecodable", md[poison.KeyReason])
	assert.Equal(t, "orders", md[poison.KeyOriginalTopic])
	assert.Equal(t, "charge", md[poison.KeyHandler])
	assert.Contains(t, md[poison.KeyError], "bad header", "the error says what the decoder said")
	assert.Equal(t, `[1,2]`, md[poison.KeyUndecodableMetadata])
	for _, k := range []string{poison.KeyClaimCheck, poison.KeyClaimCheckBytes, poison.KeyShrunk, poison.KeyMalformed,
		antidote.MetadataUndecodable, antidote.MetadataRawMetadata} {
		_, ok := md[k]
		assert.False(t, ok, "%s on the letter", k)
	}
	for k, v := range forged {
		assert.Equal(t, v, md[antidote.ForeignKey(k)], "the forged %s is kept as foreign", k)
	}
	assert.Equal(t, "own payload", string(letter.Payload))
	l, err := poison.ReadEnvelope(letter)
	require.NoError(t, err)
	assert.Equal(t, poison.ReasonUndecodable, l.Reason)

	// The hospital's reader leaves it all as it is.
	read := maps.Clone(md)
	poison.LetterReader.Distrust(read)
	assert.Equal(t, md, read)
}

// Values of the keys Antidote reads on live messages are validated in the
// letter: a malformed one is moved to antidote.malformed.
func TestEnvelopeMovesMalformedSchedulerAndTraceKeys(t *testing.T) {
	msg := message.NewMessage("u", nil)
	msg.Metadata.Set(antidote.MetadataRetryStage, "99x")
	msg.Metadata.Set(antidote.MetadataRetryDue, "tomorrow")
	msg.Metadata.Set(antidote.MetadataOriginalTraceparent, "00-zz")
	msg.Metadata.Set(antidote.MetadataRetryTopic, "anything")
	letter := poison.Envelope(msg, poison.Origin{Topic: "t"}, poison.Failure{Err: errors.New("e")})
	for _, k := range []string{antidote.MetadataRetryStage, antidote.MetadataRetryDue, antidote.MetadataOriginalTraceparent} {
		_, ok := letter.Metadata[k]
		assert.False(t, ok, k)
		assert.Contains(t, letter.Metadata[poison.KeyMalformed], k+"=")
	}
	assert.Equal(t, "anything", letter.Metadata[antidote.MetadataRetryTopic], "read by nothing: kept")

	ok := message.NewMessage("u", nil)
	ok.Metadata.Set(antidote.MetadataRetryStage, "2")
	ok.Metadata.Set(antidote.MetadataRetryDue, "2026-01-02T03:04:05.5Z")
	ok.Metadata.Set(antidote.MetadataOriginalTraceparent, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	letter = poison.Envelope(ok, poison.Origin{Topic: "t"}, poison.Failure{Err: errors.New("e")})
	assert.Empty(t, letter.Metadata[poison.KeyMalformed])
	assert.Equal(t, "2", letter.Metadata[antidote.MetadataRetryStage])
}

// A replay starts a new life: nothing of the last one that a consumer
// would read as its own (or make a foreign copy of that no producer sent),
// everything the producer sent, foreign copies included.
func TestReplayCarriesOnlyWhatTheProducerSent(t *testing.T) {
	letter := message.NewMessage("u", []byte("p"))
	for _, k := range poison.LetterKeys() {
		letter.Metadata.Set(k, "x")
	}
	letter.Metadata.Set(poison.KeyReason, "permanent")
	letter.Metadata.Set(antidote.MetadataRetryStage, "3")
	letter.Metadata.Set(antidote.MetadataRetryDue, "2026-01-02T03:04:05Z")
	letter.Metadata.Set(antidote.MetadataRetryTopic, "orders")
	letter.Metadata.Set(antidote.ForeignKey(antidote.MetadataUndecodable), "an older decoder's, or a producer's")
	letter.Metadata.Set(antidote.ForeignKey(antidote.ForeignKey(antidote.MetadataRawMetadata)), "{}")
	letter.Metadata.Set(antidote.ForeignKey(poison.KeyClaimCheck), "sha256:a producer's")
	letter.Metadata.Set(poison.KeyProducer, "checkout")
	letter.Metadata.Set("partition_key", "k")

	out := poison.Replay(letter, time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	keys := slices.Sorted(maps.Keys(out.Metadata))
	assert.Equal(t, []string{"antidote.foreign.claim_check", poison.KeyProducer, poison.KeyReplayCount, poison.KeyReplayedAt, "partition_key"}, keys)

	// What a consumer's entry then does to it: nothing.
	md := maps.Clone(out.Metadata)
	poison.ConsumerReader.Distrust(md)
	assert.Equal(t, out.Metadata, md)
}

func TestReplayCountMalformedStartsOver(t *testing.T) {
	for in, want := range map[string]string{"": "1", "2": "3", "abc": "1", "-4": "1", "9223372036854775807": "1"} {
		letter := message.NewMessage("u", nil)
		if in != "" {
			letter.Metadata.Set(poison.KeyReplayCount, in)
		}
		assert.Equal(t, want, poison.Replay(letter, time.Now()).Metadata[poison.KeyReplayCount], "replay_count %q", in)
	}
}
