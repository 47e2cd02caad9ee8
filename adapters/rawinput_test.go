package adapters_test

import (
	"context"
	"fmt"
	"math"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	wamqp "github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/internal/testenv/brokers"
	"github.com/antidote-mq/antidote/poison"
)

// What a raw client can send that Antidote's publisher never would, on each
// broker, through the stack a user builds (router.New): each message ends
// in the handler or in the DLQ as undecodable, once, the message after them
// is handled, and on RabbitMQ no connection is made again (a reconnect
// loop is how a delivery the client cannot read showed).

// rawOutcome is what becomes of one raw message.
type rawOutcome struct {
	// dead: in the DLQ, its reason undecodable and its error containing
	// this; "" for handled.
	dead string
	// check looks at what the handler got (metadata, payload), or the
	// letter's.
	check func(t *testing.T, md message.Metadata, payload []byte)
}

// settleRaw waits for every case (by UUID) and the last message, then checks
// each outcome.
func settleRaw(t *testing.T, s *serviceRig, outcomes map[string]rawOutcome) {
	t.Helper()
	handled, dead := []string{"last"}, []string(nil)
	for id, o := range outcomes {
		if o.dead == "" {
			handled = append(handled, id)
		} else {
			dead = append(dead, id)
		}
	}
	s.await(handled, dead)
	for id, o := range outcomes {
		name := id
		if len(name) > 40 {
			name = fmt.Sprintf("%.20s...(%d bytes)", name, len(name))
		}
		t.Run(name, func(t *testing.T) {
			md, payload := message.Metadata(nil), []byte(nil)
			if o.dead == "" {
				md, payload = s.handled[id][0], s.payloads[id]
			} else {
				letter := s.letters[id][0]
				l, err := poison.ReadEnvelope(letter)
				if err != nil {
					t.Fatalf("letter does not read back: %v", err)
				}
				if l.Reason != poison.ReasonUndecodable || !strings.Contains(l.Error, o.dead) {
					t.Fatalf("letter: reason %s, error %q; want undecodable, %q", l.Reason, l.Error, o.dead)
				}
				md, payload = letter.Metadata, letter.Payload
			}
			if o.check != nil {
				o.check(t, md, payload)
			}
		})
	}
}

func (p *cutProxy) accepted() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns) / 2
}

// viaProxy is url with its host replaced by the proxy's address.
func viaProxy(t *testing.T, raw string, p *cutProxy) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = p.ln.Addr().String()
	return u.String()
}

func body(want string) func(*testing.T, message.Metadata, []byte) {
	return func(t *testing.T, _ message.Metadata, payload []byte) {
		if string(payload) != want {
			t.Errorf("payload %q, want %q", payload, want)
		}
	}
}

func TestAMQPRawDeliveries(t *testing.T) {
	direct := testenv.AMQPURL(t)
	u, _ := url.Parse(direct)
	proxy := startCutProxy(t, u.Host)
	b := brokers.Open(t, adapters.Config{Broker: adapters.KindAMQP, AMQP: adapters.AMQPConfig{URL: viaProxy(t, direct, proxy)}})
	topic := brokers.Topic("raw_amqp_")
	s := startService(t, b, b, topic, nil)
	before := proxy.accepted()

	manyHeaders := func(n int) amqp.Table {
		h := amqp.Table{}
		for i := range n {
			h[fmt.Sprintf("k%05d", i)] = "v"
		}
		return h
	}
	var deep any = "bottom"
	for range 40 {
		deep = amqp.Table{"d": deep}
	}
	type amqpCase struct {
		pub amqp.Publishing
		rawOutcome
	}
	cases := map[string]amqpCase{
		"every-field-type": {amqp.Publishing{Body: []byte("b"), Headers: amqp.Table{
			"decimal": amqp.Decimal{Scale: 2, Value: 12345}, "table": amqp.Table{"n": int32(1), "s": "x"},
			"array": []any{"a", int64(2), amqp.Table{"t": true}}, "bytes": []byte{0, 1, 0xff}, "void": nil,
			"time": time.Unix(1700000000, 0), "max-int64": int64(math.MaxInt64), "min-int64": int64(math.MinInt64),
			// (RabbitMQ refuses a float that is Inf or NaN: INTERNAL_ERROR at publish.)
			"float": 1e300, "bool": false, "int8": int8(-8), "uint8": uint8(8), "int16": int16(-16),
			"uint16": uint16(16), "uint32": uint32(math.MaxUint32), "float32": float32(1.5),
		}}, rawOutcome{check: func(t *testing.T, md message.Metadata, _ []byte) {
			want := map[string]string{"max-int64": "9223372036854775807", "min-int64": "-9223372036854775808", "uint32": "4294967295",
				"void": "", "bool": "false", "time": "2023-11-14T22:13:20Z", "float": "1e+300", "table": `{"n":1,"s":"x"}`}
			for k, v := range want {
				if md[k] != v {
					t.Errorf("%s = %q, want %q", k, md[k], v)
				}
			}
			for _, k := range []string{"decimal", "array", "bytes", "int8", "uint8", "int16", "uint16", "float32"} {
				if _, ok := md[k]; !ok {
					t.Errorf("%s missing", k)
				}
			}
		}}},
		"8000-headers": {amqp.Publishing{Body: []byte("b"), Headers: manyHeaders(8000)}, rawOutcome{check: func(t *testing.T, md message.Metadata, _ []byte) {
			if md["k07999"] != "v" {
				t.Errorf("%d entries, k07999 %q", len(md), md["k07999"])
			}
		}}},
		"9000-headers":  {amqp.Publishing{Body: []byte("kept"), Headers: manyHeaders(9000)}, rawOutcome{dead: "over 8192 entries", check: body("kept")}},
		"nested-40":     {amqp.Publishing{Body: []byte("kept"), Headers: amqp.Table{"deep": deep, "small": "stays"}}, rawOutcome{dead: "nested over 32 deep", check: body("kept")}},
		"empty-gzipped": {amqp.Publishing{ContentEncoding: "gzip", ContentType: "application/json"}, rawOutcome{check: body("")}},
		"100KiB-uuid":   {amqp.Publishing{Body: []byte("b")}, rawOutcome{}},
	}
	// The UUID each arrives under: Watermill's header, but for the one that
	// tests a huge UUID, which is its own.
	conn, err := amqp.Dial(direct)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(topic, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	outcomes := map[string]rawOutcome{}
	hugeUUID := strings.Repeat("u", 100<<10)
	for name, c := range cases {
		id := name
		if name == "100KiB-uuid" {
			id = hugeUUID
		}
		if c.pub.Headers == nil {
			c.pub.Headers = amqp.Table{}
		}
		c.pub.Headers[wamqp.DefaultMessageUUIDHeaderKey] = id
		if err := ch.PublishWithContext(context.Background(), "", topic, false, false, c.pub); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		outcomes[id] = c.rawOutcome
	}
	// A message-id is a shortstr: 255 bytes at most, whoever sends it
	// (amqp091-go closes the connection that tries).
	probe, err := amqp.Dial(direct)
	if err != nil {
		t.Fatal(err)
	}
	if pch, err := probe.Channel(); err != nil {
		t.Fatal(err)
	} else if err := pch.PublishWithContext(context.Background(), "", topic, false, false, amqp.Publishing{MessageId: strings.Repeat("m", 256)}); err == nil {
		t.Error("amqp091-go sent a message-id over 255 bytes")
	}
	_ = probe.Close()
	if err := ch.PublishWithContext(context.Background(), "", topic, false, false, amqp.Publishing{MessageId: strings.Repeat("m", 255), Body: []byte("no uuid header")}); err != nil {
		t.Fatal(err)
	}
	outcomes[strings.Repeat("m", 255)] = rawOutcome{check: body("no uuid header")}
	if err := ch.PublishWithContext(context.Background(), "", topic, false, false, amqp.Publishing{Headers: amqp.Table{wamqp.DefaultMessageUUIDHeaderKey: "last"}, Body: []byte("ok")}); err != nil {
		t.Fatal(err)
	}
	settleRaw(t, s, outcomes)
	if after := proxy.accepted(); after != before {
		t.Fatalf("%d connections to RabbitMQ while consuming (%d before): the consumer reconnected", after, before)
	}
}

func TestKafkaRawRecords(t *testing.T) {
	b, letters := trustBrokers(t, adapters.KindKafka)
	topic := brokers.Topic("raw_kafka_")
	s := startService(t, b, letters, topic, nil)
	uuid := func(id string) sarama.RecordHeader {
		return sarama.RecordHeader{Key: []byte(kafka.UUIDHeaderKey), Value: []byte(id)}
	}
	var many []sarama.RecordHeader
	for i := range 10000 {
		many = append(many, sarama.RecordHeader{Key: []byte(fmt.Sprintf("k%05d", i)), Value: []byte("v")})
	}
	type kafkaCase struct {
		rec   sarama.ProducerMessage
		codec sarama.CompressionCodec
		rawOutcome
	}
	cases := map[string]kafkaCase{
		"null-key-and-value": {rec: sarama.ProducerMessage{}, rawOutcome: rawOutcome{check: body("")}},
		"null-header-value": {rec: sarama.ProducerMessage{Value: sarama.StringEncoder("b"), Headers: []sarama.RecordHeader{{Key: []byte("k"), Value: nil}}},
			rawOutcome: rawOutcome{check: func(t *testing.T, md message.Metadata, _ []byte) {
				if v, ok := md["k"]; !ok || v != "" {
					t.Errorf("k = %q (present %t)", v, ok)
				}
			}}},
		"duplicate-header-keys": {rec: sarama.ProducerMessage{Value: sarama.StringEncoder("b"), Headers: []sarama.RecordHeader{
			{Key: []byte("k"), Value: []byte("first")}, {Key: []byte("k"), Value: []byte("last")}}},
			rawOutcome: rawOutcome{check: func(t *testing.T, md message.Metadata, _ []byte) {
				if md["k"] != "last" {
					t.Errorf("k = %q, want the last (as Kafka clients' lastHeader)", md["k"])
				}
			}}},
		"10000-headers": {rec: sarama.ProducerMessage{Value: sarama.StringEncoder("b"), Headers: many},
			rawOutcome: rawOutcome{check: func(t *testing.T, md message.Metadata, _ []byte) {
				if md["k09999"] != "v" {
					t.Errorf("%d entries", len(md))
				}
			}}},
		"900KB-header": {rec: sarama.ProducerMessage{Value: sarama.StringEncoder("b"), Headers: []sarama.RecordHeader{{Key: []byte("big"), Value: []byte(strings.Repeat("x", 900_000))}}},
			rawOutcome: rawOutcome{check: func(t *testing.T, md message.Metadata, _ []byte) {
				if len(md["big"]) != 900_000 {
					t.Errorf("big: %d bytes", len(md["big"]))
				}
			}}},
	}
	for _, codec := range []sarama.CompressionCodec{sarama.CompressionGZIP, sarama.CompressionSnappy, sarama.CompressionLZ4, sarama.CompressionZSTD} {
		cases["compressed-"+codec.String()] = kafkaCase{rec: sarama.ProducerMessage{Value: sarama.StringEncoder(strings.Repeat("z", 10_000))}, codec: codec, rawOutcome: rawOutcome{check: body(strings.Repeat("z", 10_000))}}
	}
	producers := map[sarama.CompressionCodec]sarama.SyncProducer{}
	producer := func(codec sarama.CompressionCodec) sarama.SyncProducer {
		if p := producers[codec]; p != nil {
			return p
		}
		sc := sarama.NewConfig()
		sc.Version = sarama.V2_1_0_0
		sc.Producer.Return.Successes = true
		sc.Producer.Compression = codec
		sc.Producer.MaxMessageBytes = 2 << 20
		p, err := sarama.NewSyncProducer(b.Config.Kafka.Brokers, sc)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = p.Close() })
		producers[codec] = p
		return p
	}
	outcomes := map[string]rawOutcome{}
	for name, c := range cases {
		rec := c.rec
		rec.Topic = topic
		rec.Headers = append(append([]sarama.RecordHeader(nil), rec.Headers...), uuid(name))
		if _, _, err := producer(c.codec).SendMessage(&rec); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		outcomes[name] = c.rawOutcome
	}
	if _, _, err := producer(sarama.CompressionNone).SendMessage(&sarama.ProducerMessage{Topic: topic, Value: sarama.StringEncoder("ok"), Headers: []sarama.RecordHeader{uuid("last")}}); err != nil {
		t.Fatal(err)
	}
	settleRaw(t, s, outcomes)
}

func TestPostgresRawRows(t *testing.T) {
	b := pgOpen(t, nil)
	topic := brokers.Topic("raw_pg_")
	conn := pgConn(t, b, topic, antidote.DLQTopic(topic))
	s := startService(t, b, b, topic, nil)
	if err := b.Subscriber.(message.SubscribeInitializer).SubscribeInitialize(topic); err != nil {
		t.Fatal(err)
	}
	table := adapters.PostgresTable(b.Config.Postgres, topic)
	deep := strings.Repeat("[", 10_001) + strings.Repeat("]", 10_001) // encoding/json stops at 10,000
	type pgCase struct {
		meta    any // JSON text, or nil for SQL NULL
		payload any
		rawOutcome
	}
	cases := map[string]pgCase{
		"nested-objects": {meta: `{"o":{"a":[1,{"b":null}]},"n":1.5e300,"t":true}`, payload: []byte("b"), rawOutcome: rawOutcome{check: func(t *testing.T, md message.Metadata, _ []byte) {
			if md["o"] != `{"a":[1,{"b":null}]}` || md["n"] != "1.5e+300" || md["t"] != "true" {
				t.Errorf("metadata %v", md)
			}
		}}},
		"duplicate-keys": {meta: `{"k":"first","k":"last"}`, payload: []byte("b"), rawOutcome: rawOutcome{check: func(t *testing.T, md message.Metadata, _ []byte) {
			if md["k"] != "last" {
				t.Errorf("k = %q, want the last (what encoding/json and jsonb keep)", md["k"])
			}
		}}},
		"10MiB-value": {meta: `{"big":"` + strings.Repeat("x", 10<<20) + `"}`, payload: []byte("b"), rawOutcome: rawOutcome{check: func(t *testing.T, md message.Metadata, _ []byte) {
			if len(md["big"]) != 10<<20 {
				t.Errorf("big: %d bytes", len(md["big"]))
			}
		}}},
		"nested-10001-deep": {meta: `{"deep":` + deep + `}`, payload: []byte("kept"), rawOutcome: rawOutcome{dead: "metadata is not a JSON object", check: func(t *testing.T, md message.Metadata, payload []byte) {
			if string(payload) != "kept" || len(md[poison.KeyUndecodableMetadata]) != len(deep)+9 {
				t.Errorf("payload %q, %d bytes of raw metadata", payload, len(md[poison.KeyUndecodableMetadata]))
			}
		}}},
		"null-payload": {meta: `{}`, payload: nil, rawOutcome: rawOutcome{check: body("")}},
	}
	outcomes := map[string]rawOutcome{}
	for name, c := range cases {
		if _, err := conn.Exec(context.Background(), "INSERT INTO "+table+" (uuid, payload, metadata) VALUES ($1, $2, $3)", name, c.payload, c.meta); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		outcomes[name] = c.rawOutcome
	}
	// The table refuses what the queue could not hold.
	for _, bad := range []string{strings.Repeat("u", 37), "\x00"} {
		if _, err := conn.Exec(context.Background(), "INSERT INTO "+table+" (uuid, payload, metadata) VALUES ($1, $2, $3)", bad, []byte("b"), "{}"); err == nil {
			t.Errorf("PostgreSQL took the UUID %q", bad)
		}
	}
	if _, err := conn.Exec(context.Background(), "INSERT INTO "+table+" (uuid, payload, metadata) VALUES ($1, $2, NULL)", "last", []byte("ok")); err != nil {
		t.Fatal(err)
	}
	settleRaw(t, s, outcomes)
}
