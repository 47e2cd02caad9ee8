// Package brokers opens the real brokers for integration tests: the config
// of each kind (addresses from testenv, which skips a test whose server is
// unreachable, or fails it under ANTIDOTE_REQUIRE_SERVICES=1), opening a
// broker closed when the test ends, and unique topic names.
//
// It is a package of its own, not part of testenv, because it imports
// adapters, whose in-package tests import testenv.
package brokers

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/devkafka"
	"github.com/antidote-mq/antidote/internal/testenv"
)

// Kinds are the real brokers, in the order the tests run them.
var Kinds = []adapters.Kind{adapters.KindKafka, adapters.KindAMQP, adapters.KindPostgres}

// Option changes the config Config returns.
type Option func(testing.TB, *adapters.Config)

// FastRedelivery makes a nacked message come back after 50ms instead of
// the adapters' defaults: PostgreSQL's ResendInterval and Kafka's
// NackResendSleep.
func FastRedelivery() Option {
	return func(_ testing.TB, c *adapters.Config) {
		c.Postgres.ResendInterval = 50 * time.Millisecond
		c.Kafka.NackResendSleep = 50 * time.Millisecond
	}
}

// KafkaCluster runs one embedded Kafka cluster whose topics have partitions
// partitions, for the whole test, shared by every Open of the config
// (without it each Open starts its own). It does nothing to other kinds.
func KafkaCluster(partitions int) Option {
	return func(t testing.TB, c *adapters.Config) {
		if c.Broker != adapters.KindKafka {
			return
		}
		k, err := devkafka.Start(devkafka.Config{Partitions: partitions})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(k.Close)
		// The adapter creates the topics it uses with kafka.partitions.
		c.Kafka = adapters.KafkaConfig{Brokers: k.Addrs(), Partitions: partitions, NackResendSleep: c.Kafka.NackResendSleep}
	}
}

// Config returns the adapters config of kind for tests: RabbitMQ at
// testenv.AMQPURL, PostgreSQL at testenv.PostgresURL polling every 10ms,
// Kafka embedded (each Open starts its own broker; see KafkaCluster); then
// opts, in order.
func Config(t testing.TB, kind adapters.Kind, opts ...Option) adapters.Config {
	t.Helper()
	c := adapters.Config{Broker: kind}
	switch kind {
	case adapters.KindAMQP:
		c.AMQP = adapters.AMQPConfig{URL: testenv.AMQPURL(t)}
	case adapters.KindPostgres:
		c.Postgres = adapters.PostgresConfig{URL: testenv.PostgresURL(t), PollInterval: 10 * time.Millisecond}
	case adapters.KindKafka:
		c.Kafka = adapters.KafkaConfig{Embedded: true}
	}
	for _, o := range opts {
		o(t, &c)
	}
	return c
}

// Open opens the broker of cfg (with watermill's default logger, as
// adapters.Open(ctx, cfg, nil)) and closes it when the test ends.
func Open(t testing.TB, cfg adapters.Config) *adapters.Broker {
	t.Helper()
	b, err := adapters.Open(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// Topic returns prefix followed by a short random suffix in lower case, a
// topic no other test or run uses (and a valid PostgreSQL table name part
// and RabbitMQ queue name).
func Topic(prefix string) string {
	return prefix + strings.ToLower(watermill.NewShortUUID())
}
