package adapters_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/adapters"
)

func utf8Valid(s string) string { return strings.ToValidUTF8(s, "\uFFFD") }

// The metadata rule on Kafka: a foreign record's headers with invalid UTF-8
// and NUL in keys and values, and a UUID header with invalid bytes, reach
// the handler as valid UTF-8 (U+FFFD for each bad sequence, NUL kept), as
// they do on PostgreSQL.
func TestKafkaMetadataRule(t *testing.T) {
	brokers := embeddedKafka(t)
	b, err := adapters.Open(context.Background(), kafkaConfig(t, "rule_"+watermill.NewShortUUID()), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	topic := "rule_" + watermill.NewShortUUID()
	sc := sarama.NewConfig()
	sc.Producer.Return.Successes = true
	prod, err := sarama.NewSyncProducer(brokers, sc)
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	headers := map[string]string{"k\xff": "v\xfe\x00w", "nul\x00": "\x00", "ok": "fine", "bad\xc3": "\xc3("}
	rec := &sarama.ProducerMessage{Topic: topic, Value: sarama.StringEncoder("payload \xff kept")}
	for k, v := range headers {
		rec.Headers = append(rec.Headers, sarama.RecordHeader{Key: []byte(k), Value: []byte(v)})
	}
	rec.Headers = append(rec.Headers, sarama.RecordHeader{Key: []byte(kafka.UUIDHeaderKey), Value: []byte("id\xff")})
	if _, _, err := prod.SendMessage(rec); err != nil {
		t.Fatal(err)
	}
	m := receive(t, b, topic, 1)[0]
	checkRule(t, m, headers, "id\xff")
	if string(m.Payload) != "payload \xff kept" {
		t.Errorf("payload %q: the rule touched it", m.Payload)
	}
}

// The metadata rule on the memory broker; the publisher's own message is
// not modified.
func TestMemoryMetadataRule(t *testing.T) {
	b, err := adapters.Open(context.Background(), adapters.Config{Broker: adapters.KindMemory}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	headers := map[string]string{"k\xff": "v\xfe\x00w", "ok": "fine"}
	m := message.NewMessage("id\xff", []byte("p\xff"))
	for k, v := range headers {
		m.Metadata.Set(k, v)
	}
	if err := b.Publisher.Publish("rule", m); err != nil {
		t.Fatal(err)
	}
	if m.UUID != "id\xff" || m.Metadata.Get("k\xff") != "v\xfe\x00w" {
		t.Fatal("Publish modified the caller's message")
	}
	got := receive(t, b, "rule", 1)[0]
	checkRule(t, got, headers, "id\xff")
}

func checkRule(t *testing.T, m *message.Message, headers map[string]string, uuid string) {
	t.Helper()
	if m.UUID != utf8Valid(uuid) {
		t.Errorf("UUID %q, want %q", m.UUID, utf8Valid(uuid))
	}
	for k, v := range headers {
		if got, ok := m.Metadata[utf8Valid(k)]; !ok || got != utf8Valid(v) {
			t.Errorf("metadata %q = %q (present %t), want %q", utf8Valid(k), got, ok, utf8Valid(v))
		}
	}
	if len(m.Metadata) != len(headers) {
		t.Errorf("metadata %q, want %d keys", m.Metadata, len(headers))
	}
}

// The PostgreSQL size check skips marshalling below this bound: it must
// never be under what encoding/json writes.
func TestJSONMetadataBoundIsAnUpperBound(t *testing.T) {
	for _, md := range []message.Metadata{
		nil, {}, {"a": "b"}, {"\x00\x01<>&": "\u2028\u2029\"\\"}, {"k\xff": "v\xfe"},
		{strings.Repeat("\x1f", 100): strings.Repeat("<", 1000)},
	} {
		b, err := json.Marshal(md)
		if err != nil {
			t.Fatal(err)
		}
		if bound := adapters.JSONMetadataBound(md); bound < len(b) {
			t.Errorf("bound %d under the %d bytes json writes for %q", bound, len(b), md)
		}
	}
}
