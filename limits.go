package antidote

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

// Broker limits. Every adapter refuses what its broker cannot hold with one
// of the errors below, at the first moment it can know: a topic whose name
// (or a name derived from it: its DLQ, retry stages, delay queues, tables)
// cannot exist is refused by Subscribe and Publish; a message that cannot
// fit is refused by Publish, naming its size, the limit and the setting.
// Never a silent truncation, never a loop.

// ErrMessageTooLarge is matched (errors.Is) by the error a publisher returns
// for a message larger than the broker takes. The error is a *TooLargeError.
var ErrMessageTooLarge = errors.New("message too large for the broker")

// TooLargeError says which message did not fit, by how much, and which
// setting holds the limit.
type TooLargeError struct {
	// Broker is the broker's kind ("kafka", "amqp", "postgres").
	Broker string
	Topic  string
	UUID   string
	// What exceeded the limit: "message" (payload and metadata as the broker
	// counts them), "metadata" (AMQP: the headers, which must fit in one
	// frame) or "metadata key".
	What  string
	Size  int
	Limit int
	// Setting names the configuration that holds Limit, e.g.
	// "kafka.max_message_bytes" or "the broker's frame_max".
	Setting string
}

func (e *TooLargeError) Error() string {
	what := e.What
	if what == "" {
		what = "message"
	}
	return fmt.Sprintf("%s: %s %s to %q is %d bytes, over the limit of %d bytes (%s); send less, or raise the limit where the broker allows it",
		e.Broker, what, e.UUID, e.Topic, e.Size, e.Limit, e.Setting)
}

// Is makes errors.Is(err, ErrMessageTooLarge) true.
func (e *TooLargeError) Is(target error) bool { return target == ErrMessageTooLarge }

// ErrInvalidTopic is matched (errors.Is) by the error Subscribe, Publish,
// CheckName and CheckTopic return for a topic whose name, or a name derived
// from it, cannot exist on the broker. The error is a *TopicError.
var ErrInvalidTopic = errors.New("topic name not allowed by the broker")

// IsLimit reports whether err is a broker limit (ErrMessageTooLarge or
// ErrInvalidTopic): publishing the same message to the same topic again can
// never succeed, so holding or retrying it would loop.
func IsLimit(err error) bool {
	return errors.Is(err, ErrMessageTooLarge) || errors.Is(err, ErrInvalidTopic)
}

// TopicError names the topic, the derived name that breaks the rule (the
// DLQ topic, a queue table, a delay queue) and the rule.
type TopicError struct {
	// Broker is the broker's kind ("kafka", "amqp", "postgres").
	Broker string
	Topic  string
	// Name is the broker-side name that breaks Rule: the topic itself or a
	// name derived from it (e.g. the table "antidote_queue_<topic>.dlq").
	Name string
	// Rule says what the broker allows, e.g. "PostgreSQL identifiers are at
	// most 63 bytes".
	Rule string
}

func (e *TopicError) Error() string {
	if e.Name == "" || e.Name == e.Topic {
		return fmt.Sprintf("%s: topic %q cannot be used: %s", e.Broker, e.Topic, e.Rule)
	}
	return fmt.Sprintf("%s: topic %q cannot be used: its name %q breaks a limit: %s", e.Broker, e.Topic, e.Name, e.Rule)
}

// Is makes errors.Is(err, ErrInvalidTopic) true.
func (e *TopicError) Is(target error) bool { return target == ErrInvalidTopic }

// NameChecker is implemented by the publishers and subscribers the adapters
// return: CheckName reports, without touching the broker, whether name can
// exist there as a topic (Kafka), a queue (RabbitMQ) or a queue table
// (PostgreSQL), with a *TopicError naming the rule when it cannot.
// Wrappers (telemetry.NewPublisher, your decorators) should forward it, so
// router.New can check the DLQ topics before consuming.
type NameChecker interface {
	CheckName(name string) error
}

// MessageChecker is implemented by the publishers the adapters return:
// CheckMessage runs every check Publish would run on msg for topic (the
// topic's name, the message's size, metadata and UUID against the broker's
// limits) without sending anything. A letter (WithLetter on msg's context)
// is checked as a letter.
type MessageChecker interface {
	CheckMessage(topic string, msg *message.Message) error
}

// StageChecker is implemented by the schedulers the adapters return:
// CheckStages reports whether every name the scheduler derives from topic
// for the given delays (Kafka retry topics, RabbitMQ delay queues) can
// exist on the broker.
type StageChecker interface {
	CheckStages(topic string, stages []time.Duration) error
}

type letterKey struct{}

// WithLetter marks ctx as the context of a dead letter's publish. A letter
// is its original plus the envelope, so it may be larger than the original
// by up to LetterHeadroom: adapters whose size limit is their own (not the
// server's) allow that much more for it, so the DLQ accepts every message
// its source accepted. middleware.DeadLetter sets it.
func WithLetter(ctx context.Context) context.Context {
	return context.WithValue(ctx, letterKey{}, true)
}

// IsLetter reports whether ctx was marked by WithLetter.
func IsLetter(ctx context.Context) bool {
	v, _ := ctx.Value(letterKey{}).(bool)
	return v
}

// LetterHeadroom is the extra size a dead letter may have over the limit of
// its broker's ordinary messages: the envelope's free text is bounded (error
// 4 KiB, stack 8 KiB) and its other keys take well under 1 KiB.
const LetterHeadroom = 64 << 10

// ErrNotDurable is the error of the log line written when a program opts in
// to something that keeps messages or counts only in its own memory (the
// memory broker, the embedded Kafka broker, an in-memory crash-loop
// tracker): it works, and it loses everything when the process exits.
var ErrNotDurable = errors.New("not durable: everything it holds is lost when the process exits; for tests and demos only")
