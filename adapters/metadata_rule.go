package adapters

import (
	"maps"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill/message"
)

// The metadata rule, the same on every adapter: metadata keys and values and
// the message UUID reach the handler as valid UTF-8. Each invalid byte
// sequence becomes U+FFFD, which is what encoding/json (and so the
// PostgreSQL queue's JSON metadata column) does anyway; NUL and every other
// valid character are kept. Kafka and RabbitMQ headers carry raw bytes, so
// without the rule the same handler would see different metadata per
// broker. Payloads are never touched.

// validUTF8 is s with each invalid UTF-8 sequence replaced by U+FFFD.
func validUTF8(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}

// applyMetadataRule rewrites msg's UUID and metadata in place where they are
// not valid UTF-8; for a message the caller owns (one just decoded). Two
// keys that differ only in invalid bytes become one: the first in byte
// order of the original keys wins.
func applyMetadataRule(msg *message.Message) {
	if metadataRuleHolds(msg) {
		return
	}
	msg.UUID = validUTF8(msg.UUID)
	md := make(message.Metadata, len(msg.Metadata))
	for _, k := range slices.Sorted(maps.Keys(msg.Metadata)) {
		key := validUTF8(k)
		if _, dup := md[key]; !dup {
			md[key] = validUTF8(msg.Metadata[k])
		}
	}
	msg.Metadata = md
}

// withMetadataRule is msg when the rule holds for it, otherwise a copy (same
// payload and context) with the rule applied: the caller's message is never
// modified (publishers).
func withMetadataRule(msg *message.Message) *message.Message {
	if metadataRuleHolds(msg) {
		return msg
	}
	c := message.NewMessage(msg.UUID, msg.Payload)
	c.Metadata = msg.Metadata
	c.SetContext(msg.Context())
	applyMetadataRule(c)
	return c
}

// metadataRuleHolds reports whether msg needs no rewriting.
func metadataRuleHolds(msg *message.Message) bool {
	if !utf8.ValidString(msg.UUID) {
		return false
	}
	for k, v := range msg.Metadata {
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			return false
		}
	}
	return true
}
