package adapters

import (
	"fmt"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/internal/textcut"
)

// RabbitMQ's limits, as the adapter checks them before a message or a
// queue name reaches the server:
//
//   - queue names are AMQP shortstr: at most 255 bytes, not empty, and
//     names starting with "amq." are reserved (RabbitMQ refuses to declare
//     them and closes the channel);
//   - header field names are shortstr too: at most 255 bytes (amqp091-go
//     refuses a longer one mid-publish and closes the whole connection);
//   - the headers (metadata plus the message UUID) travel in one content
//     header frame, which cannot be split: RabbitMQ closes the connection
//     with FRAME_ERROR when the frame exceeds the negotiated frame_max, and
//     amqp091-go's reader refuses a delivery whose frame exceeds it or whose
//     headers have more than 8192 entries (see amqpHeaderBudget; on
//     Antidote's own connections the frame guard turns such a delivery into
//     an undecodable one, see amqpFrameGuard);
//   - the body may not exceed the server's max_message_size (RabbitMQ
//     closes the channel), which AMQPConfig.MaxMessageBytes mirrors.

// amqpMaxNameBytes is the longest queue name or header field name AMQP
// allows (shortstr).
const amqpMaxNameBytes = 255

const (
	// A frame's header (type, channel, size: 7 bytes) and end octet.
	amqpFrameOverhead = 8
	// A content header frame's payload before the properties: class id,
	// weight, body size, property flags.
	amqpContentHeaderFixed = 2 + 2 + 8 + 2
)

// amqpCheckQueueName reports whether RabbitMQ can declare a queue named name.
func amqpCheckQueueName(topic, name string) error {
	rule := ""
	switch {
	case name == "":
		rule = "RabbitMQ queue names cannot be empty (an empty name asks RabbitMQ to invent one)"
	case len(name) > amqpMaxNameBytes:
		rule = fmt.Sprintf("RabbitMQ queue names are at most %d bytes (AMQP shortstr); this one is %d", amqpMaxNameBytes, len(name))
	case strings.HasPrefix(name, "amq."):
		rule = `RabbitMQ reserves queue names starting with "amq."`
	default:
		return nil
	}
	return &antidote.TopicError{Broker: string(KindAMQP), Topic: topic, Name: name, Rule: rule}
}

func truncateName(s string) string { return textcut.Truncate(s, 40, "...") }

// amqpCheckName checks that the queue of name can be declared.
func amqpCheckName(name string, queueName func(string) string) error {
	if name == "" {
		return &antidote.TopicError{Broker: string(KindAMQP), Topic: name, Rule: "the topic is empty; RabbitMQ queue names cannot be empty"}
	}
	return amqpCheckQueueName(name, queueName(name))
}

// amqpCheckStages checks the delay queue names of topic for each stage.
func amqpCheckStages(topic string, stages []time.Duration, queueName func(string) string) error {
	if err := checkTopic(func(n string) error { return amqpCheckName(n, queueName) }, topic); err != nil {
		return err
	}
	target := queueName(topic)
	for _, d := range stages {
		if d < 0 {
			return fmt.Errorf("amqp: delay %s for topic %q is negative; RabbitMQ cannot hold a message for it", d, topic)
		}
		if err := amqpCheckQueueName(topic, AMQPDelayQueue(target, d)); err != nil {
			return err
		}
	}
	return nil
}

// Header budget. The content header frame RabbitMQ accepts at publish is
// not the last word: RabbitMQ adds headers of its own when it dead-letters
// a message (x-death, x-first-death-*, and from 3.13 x-last-death-*: a
// delay queue's expiry does that), and the DLQ letter of a message carries
// its metadata plus the envelope. A delivery whose header frame exceeds
// frame_max, or whose headers table has more than 8192 entries, is
// rejected by amqp091-go's reader, which closes the consumer's connection;
// RabbitMQ redelivers it and a consumer without the frame guard loops on
// it (one with it dead-letters it, its headers mostly lost). So an
// ordinary message must leave room for both, and a letter
// (antidote.WithLetter) for RabbitMQ's headers.
const (
	// amqpMaxHeaderEntries is the most entries amqp091-go reads in one
	// table (its maxContainerElements, v1.13+).
	amqpMaxHeaderEntries = 8192
	// Entries and bytes kept for headers RabbitMQ adds when it
	// dead-letters a message.
	amqpBrokerHeaderEntries = 16
	amqpBrokerHeaderBytes   = 16 << 10
	// Entries kept for the dead-letter envelope (poison has 16 keys).
	amqpLetterHeaderEntries = 32
	// amqpDefaultFrameMax is amqp091-go's and RabbitMQ's default frame_max.
	amqpDefaultFrameMax = 131072
)

// amqpHeaderBudget is the largest headers table (encoded, with its length)
// and the most entries a message may have with the negotiated frameMax and
// props bytes of other properties; letter: the message is a dead letter.
func amqpHeaderBudget(frameMax, props int, letter bool) (bytes, entries int) {
	broker, envelope := amqpBrokerHeaderBytes, antidote.LetterHeadroom
	if frameMax < amqpDefaultFrameMax {
		// A server with a smaller frame_max keeps the same proportions.
		broker = broker * frameMax / amqpDefaultFrameMax
		envelope = envelope * frameMax / amqpDefaultFrameMax
	}
	bytes = frameMax - amqpFrameOverhead - amqpContentHeaderFixed - props - broker
	entries = amqpMaxHeaderEntries - amqpBrokerHeaderEntries
	if !letter {
		bytes -= envelope
		entries -= amqpLetterHeaderEntries
	}
	return bytes, entries
}

// amqpCheckPublishing reports whether RabbitMQ takes pub, and a consumer
// can read it back, given the body limit maxBody and the negotiated frame
// size frameMax, with a *antidote.TooLargeError naming what does not fit. letter:
// pub is a dead letter, which may use the room kept for its envelope.
func amqpCheckPublishing(topic string, msg *message.Message, pub amqp.Publishing, maxBody, frameMax int, letter bool) error {
	uuid := msg.UUID
	if len(uuid) > amqpMaxNameBytes {
		// The error names the message; a huge UUID would make a huge error.
		uuid = uuid[:64] + fmt.Sprintf("...(%d bytes)", len(uuid))
	}
	tooLarge := func(what string, size, limit int, setting string) *antidote.TooLargeError {
		return &antidote.TooLargeError{Broker: string(KindAMQP), Topic: topic, UUID: uuid, What: what, Size: size, Limit: limit, Setting: setting}
	}
	if len(pub.Body) > maxBody {
		return tooLarge("message", len(pub.Body), maxBody, "amqp.max_message_bytes")
	}
	for k := range pub.Headers {
		if len(k) > amqpMaxNameBytes {
			return tooLarge("metadata key", len(k), amqpMaxNameBytes, fmt.Sprintf("AMQP header names are shortstr; key %q", truncateName(k)))
		}
	}
	props, err := amqpOtherPropertiesSize(pub)
	if err != nil {
		return fmt.Errorf("amqp: message %s to %q: %w", msg.UUID, topic, err)
	}
	headers := 0
	if len(pub.Headers) > 0 {
		if headers, err = amqpTableSize(pub.Headers); err != nil {
			return fmt.Errorf("amqp: message %s to %q: metadata: %w", msg.UUID, topic, err)
		}
	}
	if frameMax <= 0 || !letter && frameMax > amqpDefaultFrameMax {
		// Every connection Antidote dials takes the server's frame_max,
		// but other consumers of the queue may read at the default: an
		// ordinary message stays within what they read, as it did before
		// the connections took more. A letter may use the whole frame
		// (the hospital's connection takes it too).
		frameMax = amqpDefaultFrameMax
	}
	maxBytes, maxEntries := amqpHeaderBudget(frameMax, props, letter)
	kept := "headers RabbitMQ adds (x-death)"
	if !letter {
		kept += " and the dead-letter envelope"
	}
	if headers > maxBytes {
		return tooLarge("metadata", headers, maxBytes, fmt.Sprintf("RabbitMQ frame_max (%d): metadata and UUID travel as AMQP headers in one frame, less room kept for %s", frameMax, kept))
	}
	if len(pub.Headers) > maxEntries {
		return &amqpTooManyHeaders{tooLarge("metadata entries", len(pub.Headers), maxEntries,
			fmt.Sprintf("amqp091-go consumers read at most %d headers per message; %d are kept for %s", amqpMaxHeaderEntries, amqpMaxHeaderEntries-maxEntries, kept))}
	}
	return nil
}

// amqpTooManyHeaders counts entries, not bytes: its text says so; it
// unwraps to the *antidote.TooLargeError.
type amqpTooManyHeaders struct{ *antidote.TooLargeError }

func (e *amqpTooManyHeaders) Error() string {
	return fmt.Sprintf("%s: metadata of %s to %q has %d entries (with the UUID), over the limit of %d (%s); send fewer",
		e.Broker, e.UUID, e.Topic, e.Size, e.Limit, e.Setting)
}

func (e *amqpTooManyHeaders) Unwrap() error { return e.TooLargeError }

// amqpOtherPropertiesSize is the encoded size of pub's properties other
// than the headers table, as amqp091-go writes them.
func amqpOtherPropertiesSize(pub amqp.Publishing) (int, error) {
	n := 0
	for _, s := range []struct{ name, v string }{
		{"content-type", pub.ContentType}, {"content-encoding", pub.ContentEncoding},
		{"correlation-id", pub.CorrelationId}, {"reply-to", pub.ReplyTo},
		{"expiration", pub.Expiration}, {"message-id", pub.MessageId},
		{"type", pub.Type}, {"user-id", pub.UserId}, {"app-id", pub.AppId},
	} {
		if s.v == "" {
			continue
		}
		if len(s.v) > amqpMaxNameBytes {
			return 0, fmt.Errorf("AMQP property %s is %d bytes, over the %d bytes of a shortstr", s.name, len(s.v), amqpMaxNameBytes)
		}
		n += 1 + len(s.v)
	}
	if pub.DeliveryMode > 0 {
		n++
	}
	if pub.Priority > 0 {
		n++
	}
	if !pub.Timestamp.IsZero() {
		n += 8
	}
	return n, nil
}

// amqpTableSize is the encoded size of t (with its 4-byte length), as
// amqp091-go writes it.
func amqpTableSize(t amqp.Table) (int, error) {
	n := 4
	for k, v := range t {
		if len(k) > amqpMaxNameBytes {
			return 0, fmt.Errorf("field name %q is %d bytes, over the %d bytes of a shortstr", truncateName(k), len(k), amqpMaxNameBytes)
		}
		f, err := amqpFieldSize(v)
		if err != nil {
			return 0, fmt.Errorf("field %q: %w", truncateName(k), err)
		}
		n += 1 + len(k) + f
	}
	return n, nil
}

func amqpFieldSize(v any) (int, error) {
	switch x := v.(type) {
	case nil:
		return 1, nil
	case bool, byte, int8:
		return 2, nil
	case int16, uint16:
		return 3, nil
	case int, int32, uint32, float32:
		return 5, nil
	case int64, float64, time.Time:
		return 9, nil
	case amqp.Decimal:
		return 6, nil
	case string:
		return 5 + len(x), nil
	case []byte:
		return 5 + len(x), nil
	case amqp.Table:
		n, err := amqpTableSize(x)
		return 1 + n, err
	case []any:
		n := 5
		for _, e := range x {
			f, err := amqpFieldSize(e)
			if err != nil {
				return 0, err
			}
			n += f
		}
		return n, nil
	default:
		return 0, fmt.Errorf("type %T cannot be an AMQP header value", v)
	}
}
