package poison

import (
	"strings"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote"
)

// The trust boundary. Antidote writes some metadata keys itself, and takes
// decisions on them: the decoder's antidote.undecodable sends a message to
// the DLQ without running its handler, a letter's antidote.claim_check
// makes the hospital show and replay the payload stored under that key. A
// producer can put the same keys on any message, so where a record enters
// the process they are believed only from whoever writes them:
//
//   - decoder keys (antidote.IsDecoderKey) only from the consuming adapter's
//     decoder, in the process: arriving in any record they are foreign;
//   - letter keys (LetterKeys) only on a dead letter the hospital reads from
//     a DLQ: arriving on a message a service consumes they are foreign.
//
// A foreign key is kept under antidote.MetadataForeignPrefix (see
// antidote.MoveForeign), so the hospital shows what the producer sent and
// nothing believes it. Every other key passes as it is, among them those
// Antidote's own publishers put on the topics services consume (the
// scheduler's antidote.retry_*, antidote.attempts, the hospital's replay
// keys): a consumer cannot tell them from a producer's, so they are read as
// claims that decide nothing a forged value could abuse (see docs/brokers.md, "Keys
// Antidote trusts").

// letterKeys are the keys Envelope, ShrinkEnvelope and ClaimLetter write:
// the one list of them.
var letterKeys = []string{
	KeyOriginalTopic, KeyOriginalPartition, KeyOriginalOffset, KeyHandler,
	KeyConsumerGroup, KeyConsumerVersion, KeyReason, KeyError, KeyErrorType, KeyStack,
	KeyFirstFailedAt, KeyLastFailedAt, KeyShrunk, KeyMalformed, KeyUndecodableMetadata,
	KeyClaimCheck, KeyClaimCheckBytes,
}

// LetterKeys returns the metadata keys that describe a dead letter (where
// it came from, why it died, its claim check): true only on a letter read
// from a DLQ. The slice is a copy.
func LetterKeys() []string { return append([]string(nil), letterKeys...) }

// IsLetterKey reports whether key is one of LetterKeys.
func IsLetterKey(key string) bool {
	switch key {
	case KeyOriginalTopic, KeyOriginalPartition, KeyOriginalOffset, KeyHandler,
		KeyConsumerGroup, KeyConsumerVersion, KeyReason, KeyError, KeyErrorType, KeyStack,
		KeyFirstFailedAt, KeyLastFailedAt, KeyShrunk, KeyMalformed, KeyUndecodableMetadata,
		KeyClaimCheck, KeyClaimCheckBytes:
		return true
	}
	return false
}

// Reader is who reads a record, which decides what of Antidote's own
// metadata it believes. The zero value is the safe one.
type Reader uint8

const (
	// ConsumerReader is a service consuming its topics: decoder keys and
	// letter keys arriving in a record are foreign.
	ConsumerReader Reader = iota
	// LetterReader is the hospital reading a DLQ: letter keys are believed
	// (Envelope wrote them), decoder keys are foreign.
	LetterReader
)

// antidotePrefix starts every key the rule can apply to: a record's other
// keys cost one comparison each.
const antidotePrefix = "antidote."

// Distrust renames, in md, the keys r cannot believe to their foreign keys
// (antidote.MoveForeign); keys that are foreign already are left as they
// are. Adapters call it on each record's metadata before their decoder
// sets its own keys; call it where a record is decoded by other means (a
// DLQ read with SQL: LetterReader.Distrust(md)). It allocates only when
// something is renamed.
func (r Reader) Distrust(md message.Metadata) {
	n := 0
	for k := range md {
		if r.foreign(k) {
			n++
		}
	}
	if n == 0 {
		return
	}
	keys := make([]string, 0, n)
	for k := range md {
		if r.foreign(k) {
			keys = append(keys, k)
		}
	}
	// Each key has a foreign key of its own, and a renamed key never
	// lands on another one to be renamed: the order does not matter.
	for _, k := range keys {
		antidote.MoveForeign(md, k)
	}
}

// foreign reports whether r cannot believe key.
func (r Reader) foreign(key string) bool {
	if !strings.HasPrefix(key, antidotePrefix) {
		return false
	}
	return antidote.IsDecoderKey(key) || r == ConsumerReader && IsLetterKey(key)
}

// isForeignDecoderKey reports whether key is a decoder key under one or more
// foreign prefixes (antidote.foreign.undecodable, ...).
func isForeignDecoderKey(key string) bool {
	rest, ok := strings.CutPrefix(key, antidote.MetadataForeignPrefix)
	if !ok {
		return false
	}
	for {
		next, again := strings.CutPrefix(rest, "foreign.")
		if !again {
			break
		}
		rest = next
	}
	return antidote.IsDecoderKey(antidotePrefix + rest)
}
