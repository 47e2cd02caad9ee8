package adapters

// Fuzz targets for what a foreign producer or a config author controls:
// config YAML, PostgreSQL queue rows, AMQP headers and Kafka headers. Seed
// corpora are in testdata/fuzz/<FuzzName>. Run one with
//
//	go test -run '^$' -fuzz FuzzParseYAML -fuzztime 60s ./adapters/

import (
	"encoding/json"
	"errors"
	"math"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/IBM/sarama"
	wamqp "github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/poison"
)

// arrivedAs is the metadata key a record's key k reaches a service's
// handler under: Antidote's decoder and letter keys are foreign.
func arrivedAs(k string) string {
	if antidote.IsDecoderKey(k) || poison.IsLetterKey(k) {
		return antidote.ForeignKey(k)
	}
	return k
}

// FuzzParseYAML: ParseYAML, then SetDefaults and Validate, never panic, and
// every error they return wraps ErrInvalidConfig. A config that validates
// names a known broker.
func FuzzParseYAML(f *testing.F) {
	f.Add([]byte("broker: kafka\nkafka:\n  brokers: [127.0.0.1:9092]\n"))
	f.Add([]byte("broker: memory\n"))
	f.Add([]byte("broker: kafka\nkafka:\n  brokers: a:1, b:2\n"))
	f.Add([]byte("broker: kafka\nkafka:\n  brokres: &x [a:1]\namqp: *x\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseYAML(data)
		if err != nil {
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("ParseYAML error does not wrap ErrInvalidConfig: %v", err)
			}
			return
		}
		c.SetDefaults()
		if err := c.Validate(); err != nil {
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("Validate error does not wrap ErrInvalidConfig: %v", err)
			}
			return
		}
		if !slices.Contains(Kinds, c.Broker) {
			t.Fatalf("valid config with unknown broker %q", c.Broker)
		}
		again := c
		again.SetDefaults()
		if again.Validate() != nil {
			t.Fatal("SetDefaults twice broke a valid config")
		}
	})
}

// fakeRow is a PostgreSQL queue row as watermill-sql scans it.
type fakeRow struct {
	offset                  int64
	uuid, payload, metadata []byte
}

func (r fakeRow) Scan(dest ...any) error {
	if len(dest) != 5 {
		return errors.New("fakeRow: want 5 columns (offset, uuid, payload, metadata, created_at)")
	}
	*dest[4].(*time.Time) = time.Unix(1, 0)
	*dest[0].(*int64) = r.offset
	*dest[1].(*[]byte) = r.uuid
	*dest[2].(*[]byte) = r.payload
	*dest[3].(*[]byte) = r.metadata
	return nil
}

// FuzzTolerantPostgresMetadata: any metadata column decodes without error
// (the row never blocks the queue); the payload and UUID are kept; metadata
// that is not a JSON object is marked undecodable with the raw bytes kept;
// a JSON object of strings is kept exactly.
func FuzzTolerantPostgresMetadata(f *testing.F) {
	f.Add(int64(1), []byte("uuid-1"), []byte(`{"user_id":1}`), []byte(`{"a":"b"}`))
	f.Add(int64(2), []byte("uuid-2"), []byte(`x`), []byte(`{"attempt":1}`))
	f.Add(int64(3), []byte("uuid-3"), []byte(`x`), []byte(`{"antidote.undecodable":"forged","antidote.foreign.undecodable":"too","antidote.claim_check":"k"}`))
	f.Fuzz(func(t *testing.T, offset int64, uuid, payload, metadata []byte) {
		s := TolerantPostgresQueueSchema{}
		row, err := s.UnmarshalMessage(wsql.UnmarshalMessageParams{Row: fakeRow{offset, uuid, payload, metadata}})
		if err != nil {
			t.Fatalf("UnmarshalMessage failed: %v", err)
		}
		msg := row.Msg
		if msg == nil || msg.UUID != string(uuid) || string(msg.Payload) != string(payload) || row.Offset != offset {
			t.Fatalf("row not kept: %+v", row)
		}
		var obj map[string]any
		isObject := json.Unmarshal(metadata, &obj) == nil
		undecodable := antidote.IsUndecodable(msg)
		switch {
		case len(metadata) == 0:
			if len(msg.Metadata) != 0 {
				t.Fatalf("empty metadata column gave %v", msg.Metadata)
			}
		case isObject == undecodable: // a producer's antidote.undecodable makes nothing undecodable
			t.Fatalf("metadata %q: JSON object=%t but undecodable=%t", metadata, isObject, undecodable)
		case undecodable:
			if msg.Metadata.Get(antidote.MetadataRawMetadata) != string(metadata) {
				t.Fatal("raw metadata not kept")
			}
		default:
			if len(msg.Metadata) != len(obj) {
				t.Fatalf("metadata %q: %d keys, want %d", metadata, len(msg.Metadata), len(obj))
			}
			var strs map[string]string
			if json.Unmarshal(metadata, &strs) == nil {
				for k, v := range strs {
					if _, clash := strs[arrivedAs(k)]; clash && arrivedAs(k) != k {
						continue // both kept, under a key further along (antidote.MoveForeign)
					}
					if msg.Metadata.Get(arrivedAs(k)) != v {
						t.Fatalf("key %q: %q, want %q", k, msg.Metadata.Get(arrivedAs(k)), v)
					}
				}
			}
		}
	})
}

// amqpValue maps a fuzzed kind to one of the header types RabbitMQ and
// other producers put in AMQP tables.
func amqpValue(kind uint8, s string, i int64, fl float64, b bool) any {
	switch kind % 14 {
	case 0:
		return s
	case 1:
		return []byte(s)
	case 2:
		return int32(i)
	case 3:
		return i
	case 4:
		return int(i)
	case 5:
		return fl
	case 6:
		return float32(fl)
	case 7:
		return b
	case 8:
		return nil
	case 9:
		return time.Unix(i%(1<<40), 0)
	case 10:
		return amqp.Decimal{Scale: uint8(i), Value: int32(i >> 8)}
	case 11:
		return amqp.Table{"count": i, "reason": s, "f": fl}
	case 12:
		return []any{s, i, amqp.Table{"x": b}}
	default:
		return uint8(i)
	}
}

// FuzzTolerantAMQPHeaders: any mix of header types decodes without error;
// each header becomes its string form in metadata, the UUID header the
// message UUID, both by the metadata rule (valid UTF-8), and the body is
// kept.
func FuzzTolerantAMQPHeaders(f *testing.F) {
	f.Add("x-delivery-count", uint8(3), "s", int64(2), 1.5, true, uint8(0), "uuid-1", []byte("body"))
	f.Add("x-death", uint8(12), "rejected", int64(1), math.NaN(), false, uint8(2), "", []byte{})
	f.Add(antidote.MetadataUndecodable, uint8(0), "forged", int64(0), 0.0, false, uint8(0), "uuid-2", []byte("body"))
	f.Add(poison.KeyClaimCheck, uint8(1), "sha256:other", int64(0), 0.0, false, uint8(0), "uuid-3", []byte("body"))
	f.Fuzz(func(t *testing.T, key string, kind uint8, s string, i int64, fl float64, b bool, uuidKind uint8, uuid string, body []byte) {
		headers := amqp.Table{key: amqpValue(kind, s, i, fl, b)}
		if uuid != "" {
			headers[wamqp.DefaultMessageUUIDHeaderKey] = amqpValue(uuidKind, uuid, i, fl, b)
		}
		m := TolerantAMQPMarshaler{Inner: wamqp.DefaultMarshaler{}}
		msg, err := m.Unmarshal(amqp.Delivery{Headers: headers, Body: body, RoutingKey: "q", DeliveryTag: 7})
		if err != nil || msg == nil {
			t.Fatalf("Unmarshal: %v", err)
		}
		if string(msg.Payload) != string(body) {
			t.Fatal("body not kept")
		}
		// The metadata rule: valid UTF-8, invalid sequences as U+FFFD.
		valid := func(s string) string { return strings.ToValidUTF8(s, "\uFFFD") }
		for k, v := range headers {
			if k == wamqp.DefaultMessageUUIDHeaderKey {
				if want := valid(headerString(v)); want != "" && msg.UUID != want {
					t.Fatalf("UUID %q, want %q", msg.UUID, want)
				}
				continue
			}
			if got, ok := msg.Metadata[arrivedAs(valid(k))]; !ok || got != valid(headerString(v)) {
				t.Fatalf("header %q = %#v: metadata %q (present %t), want %q", k, v, got, ok, valid(headerString(v)))
			}
		}
		if !utf8.ValidString(msg.UUID) {
			t.Fatalf("UUID %q is not valid UTF-8", msg.UUID)
		}
		for k, v := range msg.Metadata {
			if !utf8.ValidString(k) || !utf8.ValidString(v) {
				t.Fatalf("metadata %q=%q is not valid UTF-8", k, v)
			}
		}
		if antidote.IsUndecodable(msg) {
			t.Fatalf("a decodable delivery is undecodable: %v", msg.Metadata)
		}
	})
}

// rejecting fails on records whose value starts with "!", as a custom
// Unmarshaler might on a record it does not understand.
type rejecting struct{ kafka.DefaultMarshaler }

func (r rejecting) Unmarshal(rec *sarama.ConsumerMessage) (*message.Message, error) {
	if len(rec.Value) > 0 && rec.Value[0] == '!' {
		return nil, errors.New("rejected")
	}
	return r.DefaultMarshaler.Unmarshal(rec)
}

// FuzzTolerantKafkaHeaders: any record decodes without error and with a
// non-empty UUID; the value is kept, headers by the metadata rule (valid
// UTF-8, invalid sequences as U+FFFD); a record the inner
// unmarshaler rejects is marked undecodable.
func FuzzTolerantKafkaHeaders(f *testing.F) {
	f.Add("partition_key", []byte("k"), true, []byte("uuid-1"), []byte(`{"user_id":1}`), int32(0), int64(5))
	f.Add("", []byte{}, false, []byte{}, []byte("!bad"), int32(3), int64(-1))
	f.Add(antidote.MetadataUndecodable, []byte("forged"), true, []byte("uuid-2"), []byte("fine"), int32(0), int64(1))
	f.Add(antidote.MetadataRawMetadata, []byte("forged"), true, []byte("uuid-3"), []byte("!bad"), int32(0), int64(2))
	f.Fuzz(func(t *testing.T, key string, value []byte, withUUID bool, uuid, body []byte, partition int32, offset int64) {
		rec := &sarama.ConsumerMessage{Topic: "t", Partition: partition, Offset: offset, Value: body,
			Headers: []*sarama.RecordHeader{{Key: []byte(key), Value: value}}}
		if withUUID {
			rec.Headers = append(rec.Headers, &sarama.RecordHeader{Key: []byte(kafka.UUIDHeaderKey), Value: uuid})
		}
		msg, err := TolerantKafkaUnmarshaler{Inner: rejecting{}}.Unmarshal(rec)
		if err != nil || msg == nil {
			t.Fatalf("Unmarshal: %v", err)
		}
		if msg.UUID == "" {
			t.Fatal("empty UUID")
		}
		// The metadata rule: valid UTF-8, invalid sequences as U+FFFD.
		valid := func(b []byte) string { return strings.ToValidUTF8(string(b), "\uFFFD") }
		if withUUID && len(uuid) > 0 && msg.UUID != valid(uuid) {
			t.Fatalf("UUID %q, want %q", msg.UUID, valid(uuid))
		}
		if !utf8.ValidString(msg.UUID) {
			t.Fatalf("UUID %q is not valid UTF-8", msg.UUID)
		}
		if string(msg.Payload) != string(body) {
			t.Fatal("value not kept")
		}
		if got := msg.Metadata.Get(arrivedAs(valid([]byte(key)))); key != kafka.UUIDHeaderKey && got != valid(value) {
			t.Fatalf("header %q: %q, want %q", key, got, valid(value))
		}
		for k, v := range msg.Metadata {
			if !utf8.ValidString(k) || !utf8.ValidString(v) {
				t.Fatalf("metadata %q=%q is not valid UTF-8", k, v)
			}
		}
		if rejected := len(body) > 0 && body[0] == '!'; rejected != antidote.IsUndecodable(msg) {
			t.Fatalf("rejected=%t undecodable=%t", rejected, antidote.IsUndecodable(msg))
		}
	})
}
