package adapters

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/IBM/sarama"
	wamqp "github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/poison"
)

// Each tolerant decoder is where a record enters the process, so it applies
// the trust rule (poison.Reader.Distrust) to the record's metadata before it
// sets keys of its own: a producer's antidote.undecodable, or on a service's
// topic a producer's antidote.claim_check, reaches the handler under
// antidote.MetadataForeignPrefix. The zero Reader is a service's; the
// hospital reads DLQs with poison.LetterReader (Broker.LetterSubscriber).

// TolerantKafkaUnmarshaler never fails: when Inner fails, the record becomes a
// message with its raw value and antidote.MetadataUndecodable set. A record without a
// Watermill UUID header (from a non-Watermill producer) gets a stable UUID
// made of topic, partition and offset.
type TolerantKafkaUnmarshaler struct {
	Inner kafka.Unmarshaler
	// Reader says which of Antidote's keys the records' metadata may carry
	// (see poison.Reader); the zero value is a service consuming its topics,
	// poison.LetterReader the hospital reading a DLQ.
	Reader poison.Reader
}

// Unmarshal implements kafka.Unmarshaler.
func (t TolerantKafkaUnmarshaler) Unmarshal(rec *sarama.ConsumerMessage) (*message.Message, error) {
	msg, err := t.Inner.Unmarshal(rec)
	if err != nil {
		msg = message.NewMessage("", rec.Value)
		for _, h := range rec.Headers {
			if string(h.Key) != kafka.UUIDHeaderKey {
				msg.Metadata.Set(string(h.Key), string(h.Value))
			} else {
				msg.UUID = string(h.Value)
			}
		}
	}
	if msg.UUID == "" {
		msg.UUID = fmt.Sprintf("kafka:%s/%d/%d", rec.Topic, rec.Partition, rec.Offset)
	}
	applyMetadataRule(msg)
	t.Reader.Distrust(msg.Metadata)
	if err != nil {
		msg.Metadata.Set(antidote.MetadataUndecodable, validUTF8(fmt.Sprintf("kafka record %s/%d/%d: %v", rec.Topic, rec.Partition, rec.Offset, err)))
	}
	return msg, nil
}

// tolerantKafkaMarshaler pairs a marshaler with its tolerant unmarshaling.
type tolerantKafkaMarshaler struct {
	kafka.Marshaler
	TolerantKafkaUnmarshaler
}

// TolerantAMQPMarshaler decodes AMQP deliveries without failing. Watermill's
// DefaultMarshaler rejects any header that is not a string, and RabbitMQ
// itself adds such headers: x-delivery-count (an integer) on every quorum-queue
// redelivery, x-death (a list of tables) on dead-lettered messages. Here
// scalars become their decimal or text form and tables and lists become JSON,
// so the message is handled as usual. If Inner fails for any other reason the
// message carries antidote.MetadataUndecodable.
type TolerantAMQPMarshaler struct {
	Inner wamqp.Marshaler
	// Reader says which of Antidote's keys the deliveries' headers may
	// carry (see poison.Reader); the zero value is a service consuming its
	// queues, poison.LetterReader the hospital reading a DLQ.
	Reader poison.Reader
}

// Marshal implements amqp.Marshaler.
func (t TolerantAMQPMarshaler) Marshal(msg *message.Message) (amqp.Publishing, error) {
	return t.Inner.Marshal(msg)
}

// Unmarshal implements amqp.Marshaler. Metadata keys and values and the
// UUID reach the handler as valid UTF-8: each invalid byte sequence
// becomes U+FFFD (NUL is valid and kept). Two header names that differ
// only in invalid bytes become one key; the first in byte order wins.
//
// A delivery the connection's frame guard rewrote (its headers could not
// reach this client whole; see AMQPConfigFor) is undecodable, with the
// guard's reason, and keeps the headers the guard kept.
func (t TolerantAMQPMarshaler) Unmarshal(d amqp.Delivery) (*message.Message, error) {
	guarded, _ := d.Headers[amqpFrameGuardKey].(string)
	names := make([]string, 0, len(d.Headers))
	for k := range d.Headers {
		if k != amqpFrameGuardKey {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	strHeaders := make(amqp.Table, len(d.Headers))
	for _, k := range names {
		key := validUTF8(k)
		if _, dup := strHeaders[key]; !dup {
			strHeaders[key] = validUTF8(headerString(d.Headers[k]))
		}
	}
	clean := d
	clean.Headers = strHeaders
	msg, err := t.Inner.Unmarshal(clean)
	if err == nil {
		if msg.UUID == "" {
			// A foreign producer set no Watermill UUID header: fall back to
			// the AMQP message-id, which survives redeliveries.
			msg.UUID = d.MessageId
		}
		applyMetadataRule(msg)
		t.Reader.Distrust(msg.Metadata)
		if guarded != "" {
			msg.Metadata.Set(antidote.MetadataUndecodable, amqpGuardedDetail(d, guarded))
		}
		return msg, nil
	}
	uuid := d.MessageId
	if v, ok := strHeaders[wamqp.DefaultMessageUUIDHeaderKey].(string); ok && v != "" {
		uuid = v
	}
	if uuid == "" {
		uuid = fmt.Sprintf("amqp:%s/%d", d.RoutingKey, d.DeliveryTag)
	}
	msg = message.NewMessage(uuid, d.Body)
	for k, v := range strHeaders {
		if s, ok := v.(string); ok && k != wamqp.DefaultMessageUUIDHeaderKey {
			msg.Metadata.Set(k, s)
		}
	}
	applyMetadataRule(msg)
	t.Reader.Distrust(msg.Metadata)
	detail := validUTF8("amqp delivery: " + err.Error())
	if guarded != "" {
		detail = amqpGuardedDetail(d, guarded)
	}
	msg.Metadata.Set(antidote.MetadataUndecodable, detail)
	return msg, nil
}

// amqpGuardedDetail says why the frame guard rewrote d's headers.
func amqpGuardedDetail(d amqp.Delivery, why string) string {
	return validUTF8(fmt.Sprintf("amqp delivery (exchange %q, routing key %q): %s", d.Exchange, d.RoutingKey, why))
}

func headerString(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case []byte:
		return string(x)
	case int:
		return strconv.Itoa(x)
	case int8, int16, int32, int64, uint8, uint16, uint32, uint64:
		return fmt.Sprintf("%d", x)
	case float32, float64, bool, amqp.Decimal:
		return fmt.Sprint(x)
	case time.Time:
		return x.UTC().Format(time.RFC3339Nano)
	case nil:
		return ""
	default:
		b, err := json.Marshal(x)
		if err != nil {
			return fmt.Sprint(x)
		}
		return string(b)
	}
}

// TolerantPostgresQueueSchema decodes rows without failing. watermill-sql
// requires the metadata column to be a JSON object of strings; one row
// written by another producer with {"attempt": 1} or [] fails the whole
// query, and the subscriber retries that same row forever: the queue is
// blocked. Here scalar values become strings, and a row whose metadata still
// cannot be read becomes a message with its raw payload, antidote.MetadataUndecodable
// and antidote.MetadataRawMetadata.
type TolerantPostgresQueueSchema struct {
	wsql.PostgreSQLQueueSchema
	// Reader says which of Antidote's keys the rows' metadata may carry
	// (see poison.Reader); the zero value is a service consuming its
	// queues, poison.LetterReader the hospital reading a DLQ.
	Reader poison.Reader
	// stashRecord: Open's subscribers, whose forwarding moves each row's
	// offset and created_at into its message's context (takePostgresRecord).
	stashRecord bool
}

// SelectQuery implements sql.SchemaAdapter: watermill-sql's, reading each
// row's created_at too, which names the row (with its offset) for the
// hospital: a table dropped and made again restarts its offsets.
func (s TolerantPostgresQueueSchema) SelectQuery(params wsql.SelectQueryParams) (wsql.Query, error) {
	q, err := s.PostgreSQLQueueSchema.SelectQuery(params)
	if err != nil {
		return q, err
	}
	const cols = `SELECT "offset", uuid, payload, metadata FROM`
	if !strings.Contains(q.Query, cols) {
		return q, fmt.Errorf("adapters: watermill-sql's select query changed shape; cannot add created_at: %s", q.Query)
	}
	q.Query = strings.Replace(q.Query, cols, `SELECT "offset", uuid, payload, metadata, created_at FROM`, 1)
	return q, nil
}

// UnmarshalMessage implements sql.SchemaAdapter.
func (s TolerantPostgresQueueSchema) UnmarshalMessage(params wsql.UnmarshalMessageParams) (wsql.Row, error) {
	var r wsql.Row
	var created time.Time
	if err := params.Row.Scan(&r.Offset, &r.UUID, &r.Payload, &r.Metadata, &created); err != nil {
		return wsql.Row{}, fmt.Errorf("could not scan message row: %w", err)
	}
	msg := message.NewMessage(string(r.UUID), r.Payload)
	if len(r.Metadata) > 0 {
		if md, err := tolerantMetadata(r.Metadata); err != nil {
			msg.Metadata.Set(antidote.MetadataUndecodable, fmt.Sprintf("postgres row %d: metadata is not a JSON object: %v", r.Offset, err))
			msg.Metadata.Set(antidote.MetadataRawMetadata, string(r.Metadata))
		} else {
			s.Reader.Distrust(md)
			msg.Metadata = md
		}
	}
	if s.stashRecord {
		stashPostgresRecord(msg, r.Offset, created)
	}
	r.Msg = msg
	return r, nil
}

func tolerantMetadata(raw []byte) (message.Metadata, error) {
	var obj map[string]any
	if err := json.Unmarshal(raw, &obj); err != nil {
		return nil, err
	}
	if obj == nil {
		return message.Metadata{}, nil
	}
	md := make(message.Metadata, len(obj))
	for k, v := range obj {
		switch x := v.(type) {
		case string:
			md[k] = x
		case nil:
			md[k] = ""
		case float64, bool:
			md[k] = fmt.Sprint(x)
		default:
			b, _ := json.Marshal(x)
			md[k] = string(b)
		}
	}
	return md, nil
}
