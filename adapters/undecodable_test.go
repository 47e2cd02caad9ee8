package adapters_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	wamqp "github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/internal/testenv"
)

// receive reads n messages from topic, acking each.
func receive(t *testing.T, b *adapters.Broker, topic string, n int) []*message.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ch, err := b.Subscriber.Subscribe(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	var out []*message.Message
	for len(out) < n {
		select {
		case m := <-ch:
			m.Ack()
			out = append(out, m)
		case <-ctx.Done():
			t.Fatalf("received %d of %d messages: the queue is blocked", len(out), n)
		}
	}
	return out
}

// RabbitMQ's own headers are not strings: Watermill's marshaler rejects them
// and its subscriber nacks and requeues the delivery forever.
func TestAMQPNonStringHeadersDoNotPoison(t *testing.T) {
	bad := amqp.Delivery{Body: []byte("x"), Headers: amqp.Table{
		wamqp.DefaultMessageUUIDHeaderKey: "u1",
		"x-delivery-count":                int64(2),
	}}
	if _, err := (wamqp.DefaultMarshaler{}).Unmarshal(bad); err == nil {
		t.Fatal("Watermill's marshaler accepted an integer header; this test's premise is gone")
	}

	url := testenv.AMQPURL(t)
	b, err := adapters.Open(context.Background(), adapters.Config{Broker: adapters.KindAMQP, AMQP: adapters.AMQPConfig{URL: url}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	topic := "antidote_test_hdr_" + watermill.NewShortUUID()
	// Declare the queue, then publish as a foreign producer would.
	if err := b.Publisher.Publish(topic, message.NewMessage("first", []byte("ok"))); err != nil {
		t.Fatal(err)
	}
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	err = ch.PublishWithContext(context.Background(), "", topic, false, false, amqp.Publishing{
		Body: []byte(`{"user_id":1}`),
		Headers: amqp.Table{
			wamqp.DefaultMessageUUIDHeaderKey: "foreign",
			"attempt":                         int32(3),
			"x-death":                         []any{amqp.Table{"count": int64(1), "queue": "q"}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	msgs := receive(t, b, topic, 2)
	m := msgs[1]
	if m.UUID != "foreign" || m.Metadata.Get("attempt") != "3" || !strings.Contains(m.Metadata.Get("x-death"), `"count":1`) {
		t.Fatalf("foreign message decoded as %s %v", m.UUID, m.Metadata)
	}
	if antidote.IsUndecodable(m) {
		t.Fatalf("non-string headers marked undecodable: %v", m.Metadata)
	}
}

// A quorum queue adds an integer x-delivery-count to every redelivery, so
// with Watermill's marshaler the first nack turns a message into poison.
func TestAMQPQuorumRedeliveryIsDecoded(t *testing.T) {
	url := testenv.AMQPURL(t)
	b, err := adapters.Open(context.Background(), adapters.Config{Broker: adapters.KindAMQP, AMQP: adapters.AMQPConfig{URL: url, Quorum: true}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	topic := "antidote_test_quorum_" + watermill.NewShortUUID()
	if err := b.Publisher.Publish(topic, message.NewMessage("q1", []byte("again"))); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ch, err := b.Subscriber.Subscribe(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	first := <-ch
	first.Nack()
	select {
	case again := <-ch:
		again.Ack()
		if again.UUID != "q1" || again.Metadata.Get("x-delivery-count") != "1" {
			t.Fatalf("redelivery decoded as %s %v", again.UUID, again.Metadata)
		}
	case <-ctx.Done():
		t.Fatal("the nacked message never came back decodable")
	}
}

// watermill-sql fails the whole query on one row whose metadata is not a JSON
// object of strings, and retries that row forever: the queue is blocked.
func TestPostgresForeignRowsDoNotBlockTheQueue(t *testing.T) {
	if _, err := (wsql.PostgreSQLQueueSchema{}).UnmarshalMessage(wsql.UnmarshalMessageParams{Row: fakeRow{meta: []byte(`{"attempt":1}`)}}); err == nil {
		t.Fatal("watermill-sql accepted non-string metadata; this test's premise is gone")
	}
	url := testenv.PostgresURL(t)
	cfg := adapters.Config{Broker: adapters.KindPostgres, Postgres: adapters.PostgresConfig{URL: url, PollInterval: 10 * time.Millisecond}}
	b, err := adapters.Open(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	topic := "undecodable_" + watermill.NewShortUUID()
	// Create the table the normal way, then insert rows as another producer.
	if err := b.Publisher.Publish(topic, message.NewMessage("first", []byte("ok"))); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	table := adapters.PostgresTable(b.Config.Postgres, topic)
	t.Cleanup(func() { _, _ = conn.Exec(context.Background(), "DROP TABLE IF EXISTS "+table) })
	for _, row := range []struct{ uuid, meta string }{
		{"numbers", `{"attempt":1,"ok":true}`},
		{"array", `[1,2,3]`},
		{"last", `{"k":"v"}`},
	} {
		if _, err := conn.Exec(context.Background(), "INSERT INTO "+table+" (uuid, payload, metadata) VALUES ($1, $2, $3)", row.uuid, []byte("raw "+row.uuid), row.meta); err != nil {
			t.Fatal(err)
		}
	}
	msgs := receive(t, b, topic, 4)
	got := map[string]*message.Message{}
	for _, m := range msgs {
		got[m.UUID] = m
	}
	if m := got["numbers"]; m == nil || m.Metadata.Get("attempt") != "1" || m.Metadata.Get("ok") != "true" || antidote.IsUndecodable(m) {
		t.Fatalf("numbers row: %+v", m)
	}
	if m := got["array"]; m == nil || !antidote.IsUndecodable(m) || m.Metadata.Get(antidote.MetadataRawMetadata) != "[1, 2, 3]" && m.Metadata.Get(antidote.MetadataRawMetadata) != "[1,2,3]" || string(m.Payload) != "raw array" {
		t.Fatalf("array row: %+v", m)
	}
	if m := got["last"]; m == nil || m.Metadata.Get("k") != "v" {
		t.Fatalf("the row after the bad one: %+v", m)
	}
}

type fakeRow struct{ meta []byte }

func (f fakeRow) Scan(dest ...any) error {
	*(dest[0].(*int64)) = 1
	*(dest[1].(*[]byte)) = []byte("u")
	*(dest[2].(*[]byte)) = []byte("p")
	*(dest[3].(*[]byte)) = f.meta
	return nil
}

type rejectingUnmarshaler struct{ inner kafka.Unmarshaler }

var errRejected = errors.New("header reject is set")

func (r rejectingUnmarshaler) Unmarshal(rec *sarama.ConsumerMessage) (*message.Message, error) {
	for _, h := range rec.Headers {
		if string(h.Key) == "reject" {
			return nil, errRejected
		}
	}
	return r.inner.Unmarshal(rec)
}

// watermill-kafka stops a partition's consumer when its unmarshaler fails and
// rejoins at the same offset: the partition is blocked. Ours hands the record
// on as undecodable, and records from non-Watermill producers get a UUID.
func TestKafkaUndecodableRecordsDoNotBlockThePartition(t *testing.T) {
	brokers := embeddedKafka(t)
	cfg := adapters.Config{Broker: adapters.KindKafka, Kafka: adapters.KafkaConfig{
		Brokers: brokers, ConsumerGroup: "undecodable", Partitions: 1,
		Unmarshaler: rejectingUnmarshaler{inner: kafka.DefaultMarshaler{}},
	}}
	b, err := adapters.Open(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	topic := "undecodable_" + watermill.NewShortUUID()
	bad := message.NewMessage("bad", []byte("raw bytes"))
	bad.Metadata.Set("reject", "1")
	bad.Metadata.Set("partition_key", "same")
	good := message.NewMessage("good", []byte("fine"))
	good.Metadata.Set("partition_key", "same")
	if err := b.Publisher.Publish(topic, bad, good); err != nil {
		t.Fatal(err)
	}
	sc := sarama.NewConfig()
	sc.Producer.Return.Successes = true
	prod, err := sarama.NewSyncProducer(brokers, sc)
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	if _, _, err := prod.SendMessage(&sarama.ProducerMessage{Topic: topic, Key: sarama.StringEncoder("same"), Value: sarama.StringEncoder("foreign")}); err != nil {
		t.Fatal(err)
	}
	msgs := receive(t, b, topic, 3)
	if msgs[0].UUID != "bad" || !antidote.IsUndecodable(msgs[0]) || string(msgs[0].Payload) != "raw bytes" ||
		!strings.Contains(msgs[0].Metadata.Get(antidote.MetadataUndecodable), errRejected.Error()) {
		t.Fatalf("rejected record: %s %q %v", msgs[0].UUID, msgs[0].Payload, msgs[0].Metadata)
	}
	if msgs[1].UUID != "good" || antidote.IsUndecodable(msgs[1]) {
		t.Fatalf("record after the bad one: %s %v", msgs[1].UUID, msgs[1].Metadata)
	}
	if !strings.HasPrefix(msgs[2].UUID, "kafka:"+topic+"/") || string(msgs[2].Payload) != "foreign" {
		t.Fatalf("foreign record: %s %q", msgs[2].UUID, msgs[2].Payload)
	}
}

// Messages without a partition key are spread over partitions, not all
// hashed (empty key) onto one.
func TestKafkaMessagesWithoutKeySpread(t *testing.T) {
	cfg := adapters.Config{Broker: adapters.KindKafka, Kafka: adapters.KafkaConfig{Brokers: embeddedKafka(t), ConsumerGroup: "spread"}}
	b, err := adapters.Open(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	topic := "spread_" + watermill.NewShortUUID()
	var msgs []*message.Message
	for i := 0; i < 40; i++ {
		msgs = append(msgs, message.NewMessage(watermill.NewUUID(), []byte("x")))
	}
	if err := b.Publisher.Publish(topic, msgs...); err != nil {
		t.Fatal(err)
	}
	parts := map[int32]int{}
	for _, m := range receive(t, b, topic, 40) {
		p, _ := kafka.MessagePartitionFromCtx(m.Context())
		parts[p]++
	}
	if len(parts) < 2 {
		t.Fatalf("40 keyless messages all on partitions %v", parts)
	}
}
