package adapters

// The consumer's entry on each adapter: what decoding one record costs, for
// a record without any antidote.* key (the hot path; the trust rule must
// not allocate there), and the memory broker's publish-to-handler trip.
// docs/benchmarks.md has the figures and the command.

import (
	"context"
	"testing"

	"github.com/IBM/sarama"
	wamqp "github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp "github.com/rabbitmq/amqp091-go"
)

const (
	benchTraceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	benchPayload     = `{"user_id":42,"msg":"Hello World"}`
)

func BenchmarkEntryKafka(b *testing.B) {
	rec := &sarama.ConsumerMessage{Topic: "orders", Partition: 3, Offset: 12345, Value: []byte(benchPayload), Headers: []*sarama.RecordHeader{
		{Key: []byte(kafka.UUIDHeaderKey), Value: []byte("0b0ba1a5-3c2f-4bb4-9d6e-0e9c1d1c2f3a")},
		{Key: []byte("partition_key"), Value: []byte("user-42")},
		{Key: []byte("traceparent"), Value: []byte(benchTraceparent)},
		{Key: []byte("Idempotency-Key"), Value: []byte("order-42")},
	}}
	u := TolerantKafkaUnmarshaler{Inner: KafkaMarshaler("partition_key")}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := u.Unmarshal(rec); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEntryAMQP(b *testing.B) {
	d := amqp.Delivery{Body: []byte(benchPayload), RoutingKey: "orders", DeliveryTag: 9, Headers: amqp.Table{
		wamqp.DefaultMessageUUIDHeaderKey: "0b0ba1a5-3c2f-4bb4-9d6e-0e9c1d1c2f3a",
		"traceparent":                     benchTraceparent,
		"Idempotency-Key":                 "order-42",
		"x-delivery-count":                int64(1),
	}}
	m := TolerantAMQPMarshaler{Inner: wamqp.DefaultMarshaler{}}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.Unmarshal(d); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEntryPostgres(b *testing.B) {
	row := fakeRow{7, []byte("0b0ba1a5-3c2f-4bb4-9d6e-0e9c1d1c2f3a"), []byte(benchPayload),
		[]byte(`{"traceparent":"` + benchTraceparent + `","Idempotency-Key":"order-42","partition_key":"user-42"}`)}
	s := TolerantPostgresQueueSchema{}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.UnmarshalMessage(wsql.UnmarshalMessageParams{Row: row}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEntryMemory publishes one message and waits for it at the
// subscriber: the memory broker's whole trip, its entry included.
func BenchmarkEntryMemory(b *testing.B) {
	br, err := Open(context.Background(), Config{Broker: KindMemory}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer br.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, err := br.Subscriber.Subscribe(ctx, "orders")
	if err != nil {
		b.Fatal(err)
	}
	msg := message.NewMessage("0b0ba1a5-3c2f-4bb4-9d6e-0e9c1d1c2f3a", []byte(benchPayload))
	msg.Metadata.Set("traceparent", benchTraceparent)
	msg.Metadata.Set("Idempotency-Key", "order-42")
	b.ReportAllocs()
	for b.Loop() {
		if err := br.Publisher.Publish("orders", msg); err != nil {
			b.Fatal(err)
		}
		(<-ch).Ack()
	}
}
