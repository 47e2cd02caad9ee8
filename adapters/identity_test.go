package adapters_test

import (
	"context"
	"testing"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/adapters"
)

// ConsumerIdentity gives router.Config.Consumer what the broker knows: its
// messaging system, the Kafka consumer group (no group elsewhere), its
// address (none in process) and no version (the build's is the default).
func TestBrokerConsumerIdentity(t *testing.T) {
	b, err := adapters.Open(context.Background(), adapters.Config{Broker: adapters.KindMemory}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if got, want := b.ConsumerIdentity(), (antidote.ConsumerIdentity{System: "gochannel"}); got != want {
		t.Errorf("memory: %+v, want %+v", got, want)
	}
	for _, tc := range []struct {
		b    *adapters.Broker
		want antidote.ConsumerIdentity
	}{
		{&adapters.Broker{Kind: adapters.KindKafka, Addr: "k1:9092,k2:9092", Config: adapters.Config{Kafka: adapters.KafkaConfig{ConsumerGroup: "billing"}}},
			antidote.ConsumerIdentity{System: "kafka", Group: "billing", ServerAddress: "k1:9092,k2:9092"}},
		{&adapters.Broker{Kind: adapters.KindAMQP, Addr: "amqp://mq:5672/", Config: adapters.Config{Kafka: adapters.KafkaConfig{ConsumerGroup: "unused"}}},
			antidote.ConsumerIdentity{System: "rabbitmq", ServerAddress: "amqp://mq:5672/"}},
		{&adapters.Broker{Kind: adapters.KindPostgres, Addr: "postgres://db:5432/app"},
			antidote.ConsumerIdentity{System: "postgresql", ServerAddress: "postgres://db:5432/app"}},
	} {
		if got := tc.b.ConsumerIdentity(); got != tc.want {
			t.Errorf("%s: %+v, want %+v", tc.b.Kind, got, tc.want)
		}
	}
}
