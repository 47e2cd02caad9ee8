package adapters_test

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/adapters"
)

// sized returns a message of partition key pk whose Kafka record counts
// exactly size bytes.
func sized(t *testing.T, uuid, pk string, size int) *message.Message {
	t.Helper()
	m := message.NewMessage(uuid, nil)
	m.Metadata.Set("partition_key", pk)
	base := adapters.KafkaRecordSize(m, "partition_key")
	if size < base {
		t.Fatalf("size %d below the empty record's %d", size, base)
	}
	m.Payload = bytes.Repeat([]byte{'x'}, size-base)
	return m
}

// A record at kafka.max_message_bytes goes through the real broker intact;
// one byte more, or 5 MB, is refused before anything is sent, naming the
// size, the limit and the setting; a batch with one such message sends
// none of it.
func TestKafkaMessageSizeAtTheLimit(t *testing.T) {
	b, err := adapters.Open(context.Background(), kafkaConfig(t, "size_"+watermill.NewShortUUID()), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	limit := b.Config.Kafka.MaxMessageBytes
	if limit != adapters.DefaultKafkaMaxMessageBytes {
		t.Fatalf("default limit %d", limit)
	}
	topic := "size_" + watermill.NewShortUUID()

	atLimit := sized(t, "at-limit", "k", limit)
	if err := b.Publisher.Publish(topic, atLimit); err != nil {
		t.Fatalf("a record of exactly %d bytes: %v", limit, err)
	}
	for _, tc := range []struct {
		name string
		size int
	}{{"one byte over", limit + 1}, {"5 MB", 5_000_000}} {
		over := sized(t, "over", "k", tc.size)
		err := b.Publisher.Publish(topic, over)
		var tl *antidote.TooLargeError
		if !errors.Is(err, antidote.ErrMessageTooLarge) || !errors.As(err, &tl) {
			t.Fatalf("%s: Publish = %v, want a *TooLargeError", tc.name, err)
		}
		if tl.Size != tc.size || tl.Limit != limit {
			t.Errorf("%s: size %d limit %d, want %d and %d", tc.name, tl.Size, tl.Limit, tc.size, limit)
		}
		for _, want := range []string{strconv.Itoa(tc.size), strconv.Itoa(limit), "kafka.max_message_bytes"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%s: error %q does not name %s", tc.name, err, want)
			}
		}
		if strings.Contains(err.Error(), "invalid configuration") {
			t.Errorf("%s: error %q blames the configuration", tc.name, err)
		}
	}
	// A batch is refused whole: the small message in front of the big one
	// must not arrive (same key, same partition, so it would come first).
	small := sized(t, "batch-small", "k", 200)
	if err := b.Publisher.Publish(topic, small, sized(t, "batch-big", "k", limit+1)); !errors.Is(err, antidote.ErrMessageTooLarge) {
		t.Fatalf("batch with an oversized message: %v", err)
	}
	sentinel := sized(t, "sentinel", "k", 200)
	if err := b.Publisher.Publish(topic, sentinel); err != nil {
		t.Fatal(err)
	}
	got := receive(t, b, topic, 2)
	if got[0].UUID != "at-limit" || !bytes.Equal(got[0].Payload, atLimit.Payload) {
		t.Fatalf("first message %s (%d bytes), want the one at the limit intact", got[0].UUID, len(got[0].Payload))
	}
	if got[1].UUID != "sentinel" {
		t.Fatalf("after the refused batch came %s, want the sentinel: part of a refused batch was sent", got[1].UUID)
	}
}

// kafka.max_message_bytes is the operator's: a lower one is enforced, and a
// topic whose own max.message.bytes is below it makes the broker's refusal
// a *antidote.TooLargeError naming the topic's setting, not Sarama's error.
func TestKafkaMessageSizeConfigurableAndBrokerLimit(t *testing.T) {
	cfg := kafkaConfig(t, "size_"+watermill.NewShortUUID())
	cfg.Kafka.MaxMessageBytes = 10_000
	b, err := adapters.Open(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	topic := "size_cfg_" + watermill.NewShortUUID()
	if err := b.Publisher.Publish(topic, sized(t, "a", "k", 10_001)); !errors.Is(err, antidote.ErrMessageTooLarge) || !strings.Contains(err.Error(), "10000") {
		t.Fatalf("over a configured 10000: %v", err)
	}

	small := "size_topic_" + watermill.NewShortUUID()
	admin, err := sarama.NewClusterAdmin(embeddedKafka(t), sarama.NewConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	v := "5000"
	if err := admin.CreateTopic(small, &sarama.TopicDetail{NumPartitions: 1, ReplicationFactor: 1, ConfigEntries: map[string]*string{"max.message.bytes": &v}}, false); err != nil {
		t.Fatal(err)
	}
	err = b.Publisher.Publish(small, sized(t, "b", "k", 6_000))
	var tl *antidote.TooLargeError
	if !errors.As(err, &tl) || tl.Limit != 5000 || !strings.Contains(err.Error(), "max.message.bytes") {
		t.Fatalf("over the topic's own 5000: %v", err)
	}
}

// Kafka topic names: 249 characters of [a-zA-Z0-9._-]. The topic's DLQ
// topic must fit too, so a topic may have 245; one more is refused by
// Subscribe and Publish before the broker is asked.
func TestKafkaTopicNamesAtTheLimit(t *testing.T) {
	b, err := adapters.Open(context.Background(), kafkaConfig(t, "names_"+watermill.NewShortUUID()), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	prefix := "n" + watermill.NewShortUUID()
	longest := prefix + strings.Repeat("x", 249-len(antidote.DeadLetterSuffix)-len(prefix))
	if err := b.Publisher.Publish(longest, message.NewMessage("m", []byte("x"))); err != nil {
		t.Fatalf("topic of %d characters: %v", len(longest), err)
	}
	if got := receive(t, b, longest, 1); got[0].UUID != "m" {
		t.Fatalf("got %s", got[0].UUID)
	}
	// Its DLQ topic exists on Kafka too (a DLQ topic's own DLQ name is not
	// checked).
	if err := b.Publisher.Publish(longest+antidote.DeadLetterSuffix, message.NewMessage("l", []byte("x"))); err != nil {
		t.Fatalf("DLQ topic of 249 characters: %v", err)
	}
	for name, topic := range map[string]string{
		"one over":     longest + "x",
		"space":        "has space",
		"slash":        "a/b",
		"dot":          ".",
		"empty":        "",
		"non-ascii":    "tópico",
		"nul":          "a\x00b",
		"dlq too long": strings.Repeat("y", 247),
		"over 249":     strings.Repeat("z", 250),
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, serr := b.Subscriber.Subscribe(ctx, topic)
		cancel()
		if !errors.Is(serr, antidote.ErrInvalidTopic) {
			t.Errorf("%s: Subscribe(%q) = %v, want ErrInvalidTopic", name, topic, serr)
		}
		// Publish refuses them too: what could not be dead-lettered is
		// refused before it is sent.
		if perr := b.Publisher.Publish(topic, message.NewMessage("m", []byte("x"))); !errors.Is(perr, antidote.ErrInvalidTopic) {
			t.Errorf("%s: Publish(%q) = %v, want ErrInvalidTopic", name, topic, perr)
		}
		if name == "one over" && !strings.Contains(serr.Error(), "249") {
			t.Errorf("error %q does not name the limit", serr)
		}
	}
	if err := b.CheckTopic(longest + "x"); !errors.Is(err, antidote.ErrInvalidTopic) {
		t.Errorf("CheckTopic = %v", err)
	}
}

// A DLQ topic deleted while the service runs, on a cluster that does not
// create topics on first use: the next letter creates it again (with room
// for the envelope) and arrives, instead of failing forever.
func TestKafkaLetterTopicDeletedWhileRunning(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.DefaultNumPartitions(2))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cfg := adapters.Config{Broker: adapters.KindKafka, Kafka: adapters.KafkaConfig{Brokers: c.ListenAddrs(), ConsumerGroup: "deleted"}}
	b, err := adapters.Open(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	topic := "deleted_" + watermill.NewShortUUID() + antidote.DeadLetterSuffix
	letter := func(id string) *message.Message {
		m := message.NewMessage(id, []byte("x"))
		m.Metadata.Set("partition_key", "k")
		m.SetContext(antidote.WithLetter(context.Background()))
		return m
	}
	if err := b.Publisher.Publish(topic, letter("first")); err != nil {
		t.Fatal(err)
	}
	admin, err := sarama.NewClusterAdmin(c.ListenAddrs(), sarama.NewConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if err := admin.DeleteTopic(topic); err != nil {
		t.Fatal(err)
	}
	if err := b.Publisher.Publish(topic, letter("after-delete")); err != nil {
		t.Fatalf("letter after the DLQ topic was deleted: %v", err)
	}
	got := receive(t, b, topic, 1)
	if got[0].UUID != "after-delete" {
		t.Fatalf("got %s", got[0].UUID)
	}
	entries, err := admin.DescribeConfig(sarama.ConfigResource{Type: sarama.TopicResource, Name: topic, ConfigNames: []string{"max.message.bytes"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Value == "1048588" {
		t.Errorf("the DLQ topic came back without room for the envelope: %+v", entries)
	}
}
