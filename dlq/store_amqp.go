package dlq

import (
	"context"
	"errors"
	"fmt"

	wamqp "github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/antidote-mq/antidote/adapters"
)

// amqpStore walks a DLQ queue with basic.get: resolved letters are acked,
// the others are requeued (nack with requeue) when the walk ends, so
// listing changes nothing but the letters' redelivered flag.
type amqpStore struct {
	conn *amqp.Connection
	url  string
}

func newAMQPStore(_ context.Context, cfg Config) (*amqpStore, error) {
	c := adapters.AMQPConfigFor(cfg.Adapters)
	conn, err := amqp.DialConfig(cfg.Adapters.AMQP.URL, *c.Connection.AmqpConfig)
	if err != nil {
		return nil, fmt.Errorf("%w: amqp at %s: %v", adapters.ErrUnreachable, adapters.Redact(cfg.Adapters.AMQP.URL), errors.Unwrap(err))
	}
	return &amqpStore{conn: conn, url: adapters.Redact(cfg.Adapters.AMQP.URL)}, nil
}

func (s *amqpStore) close() error { return s.conn.Close() }

func (s *amqpStore) visit(ctx context.Context, dlqTopic string, fn func(*message.Message) (bool, error)) error {
	ch, err := s.conn.Channel()
	if err != nil {
		return fmt.Errorf("dlq: amqp channel: %w", err)
	}
	defer ch.Close()
	q, err := ch.QueueDeclarePassive(dlqTopic, true, false, false, false, nil)
	if err != nil {
		var aerr *amqp.Error
		if errors.As(err, &aerr) && aerr.Code == amqp.NotFound {
			return nil // no queue: nothing was ever dead-lettered
		}
		return fmt.Errorf("dlq: inspect queue %q: %w", dlqTopic, err)
	}
	unmarshal := adapters.TolerantAMQPMarshaler{Inner: wamqp.DefaultMarshaler{}}
	var keep []amqp.Delivery
	defer func() {
		for _, d := range keep {
			_ = d.Nack(false, true)
		}
	}()
	// Only the letters present at the start: replays that fail again land
	// behind them and are not walked twice.
	for i := 0; i < q.Messages; i++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		d, ok, err := ch.Get(dlqTopic, false)
		if err != nil {
			return fmt.Errorf("dlq: get from %q: %w", dlqTopic, err)
		}
		if !ok {
			return nil
		}
		m, _ := unmarshal.Unmarshal(d)
		resolve, err := fn(m)
		if errors.Is(err, errStop) {
			keep = append(keep, d)
			return nil
		}
		if err != nil {
			keep = append(keep, d)
			return err
		}
		if resolve {
			if err := d.Ack(false); err != nil {
				return fmt.Errorf("dlq: ack letter %s: %w", m.UUID, err)
			}
		} else {
			keep = append(keep, d)
		}
	}
	return nil
}
