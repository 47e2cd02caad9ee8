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

	"github.com/antidote-mq/antidote"
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
func (b *Broker) Scheduler() antidote.Scheduler {
	switch b.Kind {
	case KindPostgres:
		return postgresScheduler{pub: b.Publisher}
	case KindAMQP:
		return &amqpScheduler{b: b}
	case KindKafka:
		return kafkaScheduler{pub: b.Publisher, sub: b.Subscriber}
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
	msg.Metadata.Set(antidote.MetadataRetryDue, due.Format(time.RFC3339Nano))
	return due
}

type postgresScheduler struct{ pub message.Publisher }

// PostgresDueLayout is how the PostgreSQL scheduler writes watermill's
// _watermill_delayed_until: UTC, always nine fractional digits, so that the
// subscriber's query compares it as text (see postgresDueClause). It is
// still RFC 3339, so Watermill's own readers parse it.
const PostgresDueLayout = "2006-01-02T15:04:05.000000000Z"

// CheckStages implements antidote.StageChecker: the scheduler writes into topic's
// own table, so it allows what the broker's publisher allows.
func (s postgresScheduler) CheckStages(topic string, _ []time.Duration) error {
	if c, ok := s.pub.(antidote.NameChecker); ok {
		return checkTopic(c.CheckName, topic)
	}
	return nil
}

func (s postgresScheduler) Schedule(ctx context.Context, topic string, msg *message.Message, after time.Duration) error {
	due := stampDue(msg, after)
	// watermill's delay keys, with sub-second precision (delay.Message
	// writes whole seconds, which would make short delays vanish).
	msg.Metadata.Set(delay.DelayedUntilKey, due.UTC().Format(PostgresDueLayout))
	msg.Metadata.Set(delay.DelayedForKey, after.String())
	msg.SetContext(ctx)
	return s.pub.Publish(topic, msg)
}

// postgresDueClause hides rows whose metadata says, under watermill's
// _watermill_delayed_until, that they are not due yet. No metadata can make
// it fail, which would fail the subscriber's query and block the queue:
//
//   - It never parses the JSON. PostgreSQL's json operators (->, ->>, #>)
//     de-escape every string of the document, and fail on \u0000 or a lone
//     surrogate (\ud800) in any key or value; ::timestamptz fails on
//     2024-13-45. Here the column's text (json keeps it verbatim) is
//     searched with a regular expression and the time compared as text.
//   - The key counts only as a whole JSON string (the quote before it not
//     escaped: an even run of backslashes) followed by a colon, and its
//     value only as a string of the form
//     YYYY-MM-DDTHH:MM:SS[.fraction of 1-9 digits](Z|±hh:mm) with the
//     fields in range (month 01-12, day 01-31, hour 00-23, ...). Anything
//     else, a number, null, an object, another format, an escaped
//     character, counts as due.
//   - The date and time are compared, with the fraction padded to nine
//     digits, in byte order against NOW() written the same way at the
//     value's own offset. A key nested in an object value would also count.
//
// strpos keeps the regular expression off rows that lack the key.
const postgresDueClause = `(SELECT CASE WHEN d.m IS NULL THEN TRUE
	ELSE (d.m[2] || '.' || rpad(COALESCE(d.m[3], ''), 9, '0')) COLLATE "C"
		<= to_char(NOW() AT TIME ZONE (CASE WHEN d.m[4] = 'Z' THEN '+00:00' ELSE d.m[4] END)::interval, 'YYYY-MM-DD"T"HH24:MI:SS.US') || '999' END
	FROM (SELECT CASE WHEN strpos(metadata::text, '"` + delay.DelayedUntilKey + `"') > 0 THEN
		(SELECT m FROM regexp_matches(metadata::text, $re$` + postgresDuePattern + `$re$, 'g') AS m WHERE length(m[1]) % 2 = 0 LIMIT 1)
	END AS m) AS d)`

// postgresDuePattern captures the backslashes before the key, the date and
// time to the second, the fraction's digits and the offset. The clause
// dollar-quotes it, so its backslashes mean the same whatever
// standard_conforming_strings says.
const postgresDuePattern = `(\\*)"` + delay.DelayedUntilKey + `"\s*:\s*"` +
	`(\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])T(?:[01]\d|2[0-3]):[0-5]\d:(?:[0-5]\d|60))` +
	`(?:\.(\d{1,9}))?(Z|[+-](?:0\d|1[0-5]):[0-5]\d)"`

type kafkaScheduler struct {
	pub message.Publisher
	sub message.Subscriber
}

// Relays implements antidote.Relayer: Kafka cannot hold a message back, so
// each delay is a retry topic whose relay forwards messages once due.
func (s kafkaScheduler) Relays() (antidote.Relays, bool) {
	return antidote.Relays{Subscriber: s.sub, Publisher: s.pub, Topic: KafkaRetryTopic}, true
}

func (s kafkaScheduler) Schedule(_ context.Context, topic string, msg *message.Message, after time.Duration) error {
	stampDue(msg, after)
	msg.Metadata.Set(antidote.MetadataRetryTopic, topic)
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

// CheckStages implements antidote.StageChecker: the delay queue
// "<queue>.delay.<delay>" of each stage must be a name RabbitMQ can
// declare, and a topic whose queue keeps order (amqp.single_active_consumer)
// has no delayed retries.
func (s *amqpScheduler) CheckStages(topic string, stages []time.Duration) error {
	p, err := s.publisher()
	if err != nil {
		return err
	}
	return p.checkStages(topic, stages)
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
	target := p.queue(topic, false)
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
