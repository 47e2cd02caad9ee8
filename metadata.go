package antidote

import "github.com/ThreeDotsLabs/watermill/message"

// MetadataUndecodable is set on a message whose broker record could not be
// decoded; its value says why. The payload holds the raw bytes. The crash-loop
// and dead-letter middleware send such a message to the DLQ with reason
// "undecodable" without running the handler.
//
// Without this, each adapter turns one bad record into a blocked queue:
// watermill-amqp nacks and requeues it forever (a hot loop), watermill-sql
// fails the whole query and retries the same row forever, and watermill-kafka
// stops the partition's consumer and rejoins at the same offset.
const MetadataUndecodable = "antidote.undecodable"

// MetadataRawMetadata keeps the record's metadata as received, when it could
// not be decoded into string pairs.
const MetadataRawMetadata = "antidote.raw_metadata"

// IsUndecodable reports whether msg came from a record that failed to decode.
func IsUndecodable(msg *message.Message) bool { return msg.Metadata.Get(MetadataUndecodable) != "" }
