package adapters

import (
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

// applyMetadataRule rewrites msg's UUID and metadata in place where they are
// not valid UTF-8. Two keys that differ only in invalid bytes become one; the
// value of either may win.
func applyMetadataRule(msg *message.Message) {
	if !utf8.ValidString(msg.UUID) {
		msg.UUID = strings.ToValidUTF8(msg.UUID, "\uFFFD")
	}
	var bad []string
	for k, v := range msg.Metadata {
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			bad = append(bad, k)
		}
	}
	for _, k := range bad {
		v := msg.Metadata[k]
		delete(msg.Metadata, k)
		msg.Metadata[strings.ToValidUTF8(k, "\uFFFD")] = strings.ToValidUTF8(v, "\uFFFD")
	}
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
