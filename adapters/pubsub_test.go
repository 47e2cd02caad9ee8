package adapters_test

import (
	"context"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/tests"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/devkafka"
	"github.com/antidote-mq/antidote/internal/testenv"
)

// Watermill's universal Pub/Sub suite, against each adapter exactly as
// adapters.Open builds it. CI runs it with ForceShort (fewer messages per
// test); ANTIDOTE_PUBSUB_FULL=1 runs the whole suite.

func fullSuite() bool { return os.Getenv("ANTIDOTE_PUBSUB_FULL") == "1" }

func openForSuite(t *testing.T, cfg adapters.Config) (message.Publisher, message.Subscriber) {
	t.Helper()
	b, err := adapters.Open(context.Background(), cfg, watermill.NopLogger{})
	if err != nil {
		t.Fatalf("open %s: %v", cfg.Broker, err)
	}
	// The suite closes publisher and subscriber itself; Close releases the
	// rest (pools, connections) and is safe after that.
	t.Cleanup(func() { _ = b.Close() })
	return b.Publisher, b.Subscriber
}

func TestPubSubMemory(t *testing.T) {
	tests.TestPubSub(t, tests.Features{
		ConsumerGroups:        false,
		ExactlyOnceDelivery:   true,
		GuaranteedOrder:       false,
		Persistent:            false,
		RequireSingleInstance: true,
		ForceShort:            !fullSuite(),
	}, func(t *testing.T) (message.Publisher, message.Subscriber) {
		return openForSuite(t, adapters.Config{Broker: adapters.KindMemory})
	}, nil)
}

var (
	sharedKafkaOnce sync.Once
	sharedKafka     *devkafka.Broker
	sharedKafkaErr  error
)

// The suite needs messages to outlive one publisher/subscriber pair, so all
// pairs share one embedded broker, as separate processes would.
func embeddedKafka(t *testing.T) []string {
	sharedKafkaOnce.Do(func() {
		sharedKafka, sharedKafkaErr = devkafka.Start(devkafka.Config{Partitions: 4})
	})
	if sharedKafkaErr != nil {
		t.Fatalf("embedded kafka: %v", sharedKafkaErr)
	}
	return sharedKafka.Addrs()
}

func kafkaConfig(t *testing.T, group string) adapters.Config {
	return adapters.Config{Broker: adapters.KindKafka, Kafka: adapters.KafkaConfig{
		Brokers:       embeddedKafka(t),
		ConsumerGroup: group,
	}}
}

func TestPubSubKafka(t *testing.T) {
	tests.TestPubSub(t, tests.Features{
		ConsumerGroups:      true,
		ExactlyOnceDelivery: false,
		// Order holds per partition key, which the suite does not set.
		GuaranteedOrder: false,
		Persistent:      true,
		ForceShort:      !fullSuite(),
	}, func(t *testing.T) (message.Publisher, message.Subscriber) {
		return openForSuite(t, kafkaConfig(t, "suite"))
	}, func(t *testing.T, group string) (message.Publisher, message.Subscriber) {
		return openForSuite(t, kafkaConfig(t, group))
	})
}

func TestPubSubAMQP(t *testing.T) {
	url := testenv.AMQPURL(t)
	tests.TestPubSub(t, tests.Features{
		ConsumerGroups:                      false,
		ExactlyOnceDelivery:                 false,
		GuaranteedOrder:                     true,
		GuaranteedOrderWithSingleSubscriber: true,
		Persistent:                          true,
		ForceShort:                          !fullSuite(),
	}, func(t *testing.T) (message.Publisher, message.Subscriber) {
		return openForSuite(t, adapters.Config{Broker: adapters.KindAMQP, AMQP: adapters.AMQPConfig{URL: url}})
	}, nil)
}

func TestPubSubPostgres(t *testing.T) {
	url := testenv.PostgresURL(t)
	tests.TestPubSub(t, tests.Features{
		ConsumerGroups:      false,
		ExactlyOnceDelivery: true,
		GuaranteedOrder:     true,
		Persistent:          true,
		ForceShort:          !fullSuite(),
		// Table names must stay under PostgreSQL's 63-byte identifier limit.
		GenerateTopicFunc: func(tctx tests.TestContext) string {
			return "s_" + strings.ReplaceAll(string(tctx.TestID), "-", "")[:20]
		},
	}, func(t *testing.T) (message.Publisher, message.Subscriber) {
		return openForSuite(t, adapters.Config{Broker: adapters.KindPostgres, Postgres: adapters.PostgresConfig{
			URL: url, TablePrefix: "antidote_suite_", PollInterval: 5 * 1e6, ResendInterval: 10 * 1e6,
		}})
	}, nil)
}
