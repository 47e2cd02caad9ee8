package devkafka_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/devkafka"
)

func TestStartValidates(t *testing.T) {
	if _, err := devkafka.Start(devkafka.Config{Partitions: -1}); err == nil || !strings.Contains(err.Error(), "negative") {
		t.Fatalf("negative partitions: %v", err)
	}
	if _, err := devkafka.Start(devkafka.Config{Addr: "no-port"}); err == nil || !strings.Contains(err.Error(), "host:port") {
		t.Fatalf("bad address: %v", err)
	}
}

// Importing devkafka makes adapters.Open honour kafka.embedded: the broker
// starts, messages go through it, Close stops it.
func TestOpenEmbedded(t *testing.T) {
	b, err := adapters.Open(t.Context(), adapters.Config{Broker: adapters.KindKafka,
		Kafka: adapters.KafkaConfig{Embedded: true, ConsumerGroup: "devkafka-test"}}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	if !b.Embedded || len(b.Config.Kafka.Brokers) == 0 || b.Config.Kafka.Embedded {
		t.Fatalf("Embedded %t, brokers %v, config still embedded %t", b.Embedded, b.Config.Kafka.Brokers, b.Config.Kafka.Embedded)
	}
	msgs, err := b.Subscriber.Subscribe(t.Context(), "devkafka_topic")
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Publisher.Publish("devkafka_topic", message.NewMessage("1", []byte("x"))); err != nil {
		t.Fatal(err)
	}
	msg := <-msgs
	msg.Ack()
	if msg.UUID != "1" {
		t.Fatalf("got %s", msg.UUID)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Publisher.Publish("devkafka_topic", message.NewMessage("2", nil)); !errors.Is(err, adapters.ErrPublisherClosed) {
		t.Fatalf("publish after Close: %v", err)
	}
}
