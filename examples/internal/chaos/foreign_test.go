package chaos_test

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/antidote-mq/antidote/adapters"
)

// publishForeign sends the workload's foreign lines the way a producer that
// knows nothing of Watermill does: with the broker's own client, no
// Watermill UUID, and headers of its own (invalid UTF-8, non-string values).
func publishForeign(cfg adapters.Config, topic string, w *workload) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for i, payload := range w.payloads {
		if !w.foreign[i] {
			continue
		}
		user := strconv.Itoa(i + 1)
		var err error
		switch cfg.Broker {
		case adapters.KindKafka:
			err = foreignKafka(cfg.Kafka.Brokers, topic, user, payload)
		case adapters.KindAMQP:
			err = foreignAMQP(ctx, cfg.AMQP.URL, topic, user, payload)
		case adapters.KindPostgres:
			err = foreignPostgres(ctx, cfg, topic, payload)
		}
		if err != nil {
			return fmt.Errorf("line %d: %w", i+1, err)
		}
	}
	return nil
}

func foreignKafka(brokers []string, topic, key string, payload []byte) error {
	sc := sarama.NewConfig()
	sc.Version = sarama.V2_1_0_0
	sc.Producer.Return.Successes = true
	sc.Producer.RequiredAcks = sarama.WaitForAll
	p, err := sarama.NewSyncProducer(brokers, sc)
	if err != nil {
		return err
	}
	defer p.Close()
	_, _, err = p.SendMessage(&sarama.ProducerMessage{Topic: topic, Key: sarama.StringEncoder(key), Value: sarama.ByteEncoder(payload),
		Headers: []sarama.RecordHeader{{Key: []byte("x-foreign"), Value: []byte("\xff\x00")}, {Key: []byte("attempt"), Value: []byte("1")}}})
	return err
}

func foreignAMQP(ctx context.Context, url, queue, id string, payload []byte) error {
	conn, err := amqp.Dial(url)
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	if err := ch.Confirm(false); err != nil {
		return err
	}
	conf, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, true, false, amqp.Publishing{
		Body: payload, DeliveryMode: amqp.Persistent, MessageId: "foreign-" + id + "-" + watermill.NewShortUUID(),
		Headers: amqp.Table{"x-retry": int32(3), "x-foreign": []byte("\xff\x00"), "x-meta": amqp.Table{"a": int64(1)}},
	})
	if err != nil {
		return err
	}
	if ok, err := conf.WaitContext(ctx); err != nil || !ok {
		return fmt.Errorf("not confirmed (%v)", err)
	}
	return nil
}

func foreignPostgres(ctx context.Context, cfg adapters.Config, topic string, payload []byte) error {
	conn, err := pgx.Connect(ctx, cfg.Postgres.URL)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	cfg.SetDefaults()
	_, err = conn.Exec(ctx, `INSERT INTO `+adapters.PostgresTable(cfg.Postgres, topic)+` (uuid, payload, metadata) VALUES ($1, $2, $3::json)`,
		watermill.NewUUID(), payload, `{"attempt": 1, "x-foreign": "\u0000\ud800", "nested": {"a": [1, 2]}}`)
	return err
}
