package antidote

import (
	"strings"

	"github.com/ThreeDotsLabs/watermill/message"
)

// MetadataUndecodable is set on a message whose broker record could not be
// decoded; its value says why. The payload holds the raw bytes. The crash-loop
// and dead-letter middleware send such a message to the DLQ with reason
// "undecodable" without running the handler.
//
// Without this, each adapter turns one bad record into a blocked queue:
// watermill-amqp nacks and requeues it forever (a hot loop), watermill-sql
// fails the whole query and retries the same row forever, and watermill-kafka
// stops the partition's consumer and rejoins at the same offset.
//
// It is a decoder key: only the consuming adapter's decoder sets it, in the
// process. The same key arriving in a record is foreign (see
// MetadataForeignPrefix).
const MetadataUndecodable = "antidote.undecodable"

// MetadataRawMetadata keeps the record's metadata as received, when it could
// not be decoded into string pairs. A decoder key, like MetadataUndecodable.
const MetadataRawMetadata = "antidote.raw_metadata"

// IsUndecodable reports whether msg came from a record that failed to decode.
func IsUndecodable(msg *message.Message) bool { return msg.Metadata.Get(MetadataUndecodable) != "" }

// IsDecoderKey reports whether key is one only a consuming adapter's decoder
// writes (MetadataUndecodable, MetadataRawMetadata).
func IsDecoderKey(key string) bool { return key == MetadataUndecodable || key == MetadataRawMetadata }

// MetadataForeignPrefix is where a key of Antidote's own goes when it
// arrives from outside and cannot be believed: a producer's
// antidote.undecodable reaches the handler as antidote.foreign.undecodable,
// so nothing takes it for the decoder's verdict and the hospital still shows
// what was sent. Which keys are foreign where is poison.Reader's rule; the
// adapters apply it where a record enters the process. A key that already
// has the prefix is left as it is.
const MetadataForeignPrefix = "antidote.foreign."

// metadataPrefix starts every key of Antidote's own.
const metadataPrefix = "antidote."

// ForeignKey is the key a foreign value of key is kept under:
// antidote.undecodable becomes antidote.foreign.undecodable, and a key that
// is foreign already gets the prefix once more
// (antidote.foreign.foreign.undecodable), which is where a second value goes
// when the first place is taken.
func ForeignKey(key string) string {
	return MetadataForeignPrefix + strings.TrimPrefix(key, metadataPrefix)
}

// MoveForeign renames md[key], when present, to ForeignKey(key), or, when a
// value is there already, to the first free key of ForeignKey applied
// again: nothing a producer sent is lost.
func MoveForeign(md message.Metadata, key string) {
	v, ok := md[key]
	if !ok {
		return
	}
	delete(md, key)
	to := ForeignKey(key)
	for {
		if _, taken := md[to]; !taken {
			break
		}
		to = ForeignKey(to)
	}
	md[to] = v
}
