package adapters_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/devkafka"
	"github.com/antidote-mq/antidote/internal/testenv/brokers"
)

// Broker and adapter disagree on partitions, so that a test sees who made
// a topic: the broker auto-creates with brokerPartitions, the adapter with
// kafka.partitions = adapterPartitions.
const (
	brokerPartitions  = 2
	adapterPartitions = 3
)

func topicsBroker(t *testing.T) (adapters.Config, sarama.ClusterAdmin) {
	t.Helper()
	k, err := devkafka.Start(devkafka.Config{Partitions: brokerPartitions})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Close)
	cfg := adapters.Config{Broker: adapters.KindKafka, Kafka: adapters.KafkaConfig{Brokers: k.Addrs(), Partitions: adapterPartitions}}
	admin, err := sarama.NewClusterAdmin(k.Addrs(), sarama.NewConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = admin.Close() })
	return cfg, admin
}

// partitions of topic, or -1 when it does not exist.
func partitions(t *testing.T, admin sarama.ClusterAdmin, topic string) int {
	t.Helper()
	metas, err := admin.DescribeTopics([]string{topic})
	if err != nil {
		t.Fatal(err)
	}
	if metas[0].Err == sarama.ErrUnknownTopicOrPartition {
		return -1
	}
	if metas[0].Err != sarama.ErrNoError {
		t.Fatal(metas[0].Err)
	}
	return len(metas[0].Partitions)
}

// topicRoundTrip subscribes to topic, publishes one message to it and
// receives it.
func topicRoundTrip(ctx context.Context, b *adapters.Broker, topic string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	msgs, err := b.Subscriber.Subscribe(ctx, topic)
	if err != nil {
		return err
	}
	if err := b.Publisher.Publish(topic, message.NewMessage("1", []byte("x"))); err != nil {
		return err
	}
	select {
	case msg := <-msgs:
		msg.Ack()
		return nil
	case <-ctx.Done():
		return fmt.Errorf("nothing received from %s: %w", topic, ctx.Err())
	}
}

// The topics the adapter subscribes and publishes to are created with
// kafka.partitions when missing, not left to the broker's auto-creation
// (which gives brokerPartitions).
func TestKafkaCreatesSourceTopics(t *testing.T) {
	cfg, admin := topicsBroker(t)
	b := brokers.Open(t, cfg)

	sub, pub := brokers.Topic("sub_"), brokers.Topic("pub_")
	if _, err := b.Subscriber.Subscribe(t.Context(), sub); err != nil {
		t.Fatal(err)
	}
	if err := b.Publisher.Publish(pub, message.NewMessage("1", nil)); err != nil {
		t.Fatal(err)
	}
	for _, topic := range []string{sub, pub} {
		if got := partitions(t, admin, topic); got != adapterPartitions {
			t.Errorf("topic %s has %d partitions, want kafka.partitions %d", topic, got, adapterPartitions)
		}
	}
}

// A topic that exists is used as it is: its partitions are not changed,
// and messages go through it.
func TestKafkaLeavesExistingTopics(t *testing.T) {
	cfg, admin := topicsBroker(t)
	topic := brokers.Topic("existing_")
	const existing = 5
	if err := admin.CreateTopic(topic, &sarama.TopicDetail{NumPartitions: existing, ReplicationFactor: 1}, false); err != nil {
		t.Fatal(err)
	}
	b := brokers.Open(t, cfg)
	if err := topicRoundTrip(t.Context(), b, topic); err != nil {
		t.Fatal(err)
	}
	if got := partitions(t, admin, topic); got != existing {
		t.Errorf("existing topic has %d partitions, want its %d", got, existing)
	}
}

// Several processes starting at once on a new topic (each its own Open,
// admin client and producer) all get going; the topic is made once, with
// kafka.partitions.
func TestKafkaCreatesTopicsConcurrently(t *testing.T) {
	cfg, admin := topicsBroker(t)
	topic := brokers.Topic("together_")
	const processes = 4
	var bs []*adapters.Broker
	for range processes {
		c := cfg
		c.Kafka.ConsumerGroup = brokers.Topic("group_") // each receives every message
		bs = append(bs, brokers.Open(t, c))
	}
	var wg sync.WaitGroup
	for _, b := range bs {
		wg.Go(func() {
			if err := topicRoundTrip(t.Context(), b, topic); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if got := partitions(t, admin, topic); got != adapterPartitions {
		t.Errorf("topic has %d partitions, want kafka.partitions %d", got, adapterPartitions)
	}
}
