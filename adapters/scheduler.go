package adapters

import (
	"context"
	"errors"
	"fmt"
	"time"

	wamqp "github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/components/delay"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp "github.com/rabbitmq/amqp091-go"
)

// Scheduler publishes a message so that the consumers of a topic get it no
// earlier than a delay from now, each broker by its natural means. It is
// how non-blocking retries (middleware.DelayedRetry) move a failing message
// out of the way: the original is acked and the queue keeps flowing; order
// per key is given up for that message.
type Scheduler interface {
	Schedule(ctx context.Context, topic string, msg *message.Message, after time.Duration) error
}

// Metadata keys of a scheduled message.
const (
	// MetadataRetryDue is when a scheduled message is due (RFC 3339, UTC).
	MetadataRetryDue = "antidote.retry_due"
	// MetadataRetryTopic is the topic a Kafka retry-topic relay forwards to.
	MetadataRetryTopic = "antidote.retry_topic"
)

// Scheduler returns the broker's scheduler:
//
//   - PostgreSQL: watermill-sql's delayed messages. The message is inserted
//     into the topic's own table with watermill's delay metadata
//     (_watermill_delayed_until); the subscriber's query skips rows that are
//     not due yet, so nothing waits at the head of the queue.
//   - RabbitMQ: a per-delay queue "<topic>.delay.<delay>" with a message TTL
//     and a dead-letter exchange that routes expired messages back to the
//     topic's queue. RabbitMQ does the waiting; nothing runs in the consumer.
//   - Kafka: a retry topic per delay, "<topic>.retry.<delay>", whose relay
//     (router.AddRetryRelays registers it) waits until each message is due
//     and forwards it to the topic. Each retry topic holds one delay, so its
//     messages come due in order; a relay waits in its own partition only.
//   - memory: a timer in the process (not durable, for tests and demos).
func (b *Broker) Scheduler() Scheduler {
	switch b.Kind {
	case KindPostgres:
		return postgresScheduler{pub: b.Publisher}
	case KindAMQP:
		return &amqpScheduler{b: b}
	case KindKafka:
		return kafkaScheduler{pub: b.Publisher}
	default:
		return &memoryScheduler{pub: b.Publisher, b: b}
	}
}

// KafkaRetryTopic names the retry topic of topic for one delay.
func KafkaRetryTopic(topic string, after time.Duration) string {
	return topic + ".retry." + after.String()
}

// AMQPDelayQueue names the delay queue of topic for one delay.
func AMQPDelayQueue(topic string, after time.Duration) string {
	return topic + ".delay." + after.String()
}

func stampDue(msg *message.Message, after time.Duration) time.Time {
	due := time.Now().Add(after).UTC()
	msg.Metadata.Set(MetadataRetryDue, due.Format(time.RFC3339Nano))
	return due
}

type postgresScheduler struct{ pub message.Publisher }

func (s postgresScheduler) Schedule(ctx context.Context, topic string, msg *message.Message, after time.Duration) error {
	due := stampDue(msg, after)
	// watermill's delay keys, with sub-second precision (delay.Message
	// writes whole seconds, which would make short delays vanish).
	msg.Metadata.Set(delay.DelayedUntilKey, due.Format(time.RFC3339Nano))
	msg.Metadata.Set(delay.DelayedForKey, after.String())
	msg.SetContext(ctx)
	return s.pub.Publish(topic, msg)
}

// postgresDueClause hides rows that carry watermill's delay metadata and are
// not due yet. A malformed value (a foreign producer) counts as due rather
// than failing the query, which would block the whole queue.
const postgresDueClause = `(CASE WHEN (metadata->>'` + delay.DelayedUntilKey + `') ~ '^\d{4}-\d{2}-\d{2}T'
	THEN (metadata->>'` + delay.DelayedUntilKey + `')::timestamptz <= NOW() ELSE TRUE END)`

type kafkaScheduler struct{ pub message.Publisher }

func (s kafkaScheduler) Schedule(_ context.Context, topic string, msg *message.Message, after time.Duration) error {
	stampDue(msg, after)
	msg.Metadata.Set(MetadataRetryTopic, topic)
	return s.pub.Publish(KafkaRetryTopic(topic, after), msg)
}

type amqpScheduler struct {
	b *Broker
}

func (s *amqpScheduler) publisher() (*amqpPublisher, error) {
	p, ok := s.b.Publisher.(*amqpPublisher)
	if !ok {
		return nil, errors.New("amqp scheduler: broker publisher is not the adapter's")
	}
	return p, nil
}

// CheckStages implements StageChecker: the delay queue
// "<queue>.delay.<delay>" of each stage must be a name RabbitMQ can declare.
func (s *amqpScheduler) CheckStages(topic string, stages []time.Duration) error {
	p, err := s.publisher()
	if err != nil {
		return err
	}
	return amqpCheckStages(topic, stages, p.cfg.Queue.GenerateName)
}

// Schedule publishes msg to the delay queue of topic for after, declaring
// it (and topic's queue, where the message goes when it expires) first.
// The publish is mandatory and confirmed like every publish of the
// adapter: a delay queue deleted while the service runs is declared again,
// never confirmed into nowhere.
func (s *amqpScheduler) Schedule(ctx context.Context, topic string, msg *message.Message, after time.Duration) error {
	p, err := s.publisher()
	if err != nil {
		return err
	}
	if err := amqpCheckStages(topic, []time.Duration{after}, p.cfg.Queue.GenerateName); err != nil {
		return err
	}
	target := p.queue(topic)
	delayQueue := amqpQueue{name: AMQPDelayQueue(target.name, after), args: amqp.Table{
		"x-message-ttl":             after.Milliseconds(),
		"x-dead-letter-exchange":    "",
		"x-dead-letter-routing-key": target.name,
	}}
	stampDue(msg, after)
	msg.SetContext(ctx)
	if err := p.publish(ctx, topic, delayQueue, []amqpQueue{target}, []*message.Message{msg}); err != nil {
		return fmt.Errorf("amqp scheduler: %w", err)
	}
	return nil
}

var _ wamqp.Marshaler = TolerantAMQPMarshaler{}

type memoryScheduler struct {
	pub message.Publisher
	b   *Broker
}

func (s *memoryScheduler) Schedule(_ context.Context, topic string, msg *message.Message, after time.Duration) error {
	stampDue(msg, after)
	time.AfterFunc(after, func() { _ = s.pub.Publish(topic, msg) })
	return nil
}

// DueAt reads MetadataRetryDue; zero when absent or malformed.
func DueAt(msg *message.Message) time.Time {
	t, err := time.Parse(time.RFC3339Nano, msg.Metadata.Get(MetadataRetryDue))
	if err != nil {
		return time.Time{}
	}
	return t
}
