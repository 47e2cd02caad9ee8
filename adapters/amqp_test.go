package adapters_test

import (
	"context"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/internal/testenv"
)

// RabbitMQ drops messages routed to a queue that does not exist; a message
// published before any consumer subscribed (a DLQ, a producer started first)
// must still be there when one does.
func TestAMQPKeepsMessagesPublishedBeforeAnySubscriber(t *testing.T) {
	url := testenv.AMQPURL(t)
	for _, quorum := range []bool{false, true} {
		cfg := adapters.Config{Broker: adapters.KindAMQP, AMQP: adapters.AMQPConfig{URL: url, Quorum: quorum}}
		topic := "antidote_test_early_" + watermill.NewShortUUID()
		pub, err := adapters.Open(context.Background(), cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := pub.Publisher.Publish(topic, message.NewMessage("early", []byte("kept"))); err != nil {
			t.Fatal(err)
		}
		_ = pub.Close()

		sub, err := adapters.Open(context.Background(), cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		msgs, err := sub.Subscriber.Subscribe(ctx, topic)
		if err != nil {
			t.Fatal(err)
		}
		select {
		case m := <-msgs:
			if m.UUID != "early" || string(m.Payload) != "kept" {
				t.Fatalf("got %s %q", m.UUID, m.Payload)
			}
			m.Ack()
		case <-ctx.Done():
			t.Fatalf("quorum=%v: message published before the queue existed was lost", quorum)
		}
		cancel()
		_ = sub.Close()
	}
}
