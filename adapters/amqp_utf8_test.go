package adapters_test

import (
	"errors"
	"testing"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill"
	wamqp "github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/adapters"
)

func allValidUTF8(t *testing.T, m *message.Message) {
	t.Helper()
	if !utf8.ValidString(m.UUID) {
		t.Errorf("UUID %q is not valid UTF-8", m.UUID)
	}
	for k, v := range m.Metadata {
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			t.Errorf("metadata %q=%q is not valid UTF-8", k, v)
		}
	}
}

// Metadata rule: keys, values and the UUID reach the handler as valid
// UTF-8, each invalid sequence replaced by U+FFFD, NUL kept. A foreign
// producer writes headers with invalid bytes, as string (S) and as byte
// array (x) values; the adapter's subscriber delivers them cleaned.
func TestAMQPMetadataIsValidUTF8(t *testing.T) {
	r := newRabbit(t)
	b := openAMQP(t, nil)
	topic := "antidote_test_utf8_" + watermill.NewShortUUID()
	r.cleanup(topic)
	rcv := receiveAMQP(t, b, topic)

	ch := r.channel()
	publish := func(p amqp.Publishing) {
		t.Helper()
		if err := ch.Publish("", topic, true, false, p); err != nil {
			t.Fatal(err)
		}
	}
	publish(amqp.Publishing{Body: []byte("x"), Headers: amqp.Table{
		wamqp.DefaultMessageUUIDHeaderKey: "id-\xff\x00-end",
		"k\xfe\x00ey":                     "v\xc3\x28\x00al",
		"bytes-\xff":                      []byte("b\xff\xfe\x00c"),
		"ok":                              "fine\x00",
	}})
	m := rcv.next()
	allValidUTF8(t, m)
	if m.UUID != "id-\uFFFD\x00-end" {
		t.Errorf("UUID %q", m.UUID)
	}
	want := map[string]string{
		"k\uFFFD\x00ey": "v\uFFFD(\x00al",
		"bytes-\uFFFD":  "b\uFFFD\x00c", // one run of invalid bytes, one U+FFFD
		"ok":            "fine\x00",
	}
	for k, v := range want {
		if got, ok := m.Metadata[k]; !ok || got != v {
			t.Errorf("metadata %q = %q (present %t), want %q", k, got, ok, v)
		}
	}
	if antidote.IsUndecodable(m) {
		t.Error("marked undecodable")
	}

	// No Watermill UUID header: the message-id becomes the UUID, cleaned.
	publish(amqp.Publishing{Body: []byte("x"), MessageId: "mid-\xff", Headers: amqp.Table{"a": "b"}})
	m = rcv.next()
	allValidUTF8(t, m)
	if m.UUID != "mid-\uFFFD" {
		t.Errorf("UUID from message-id: %q", m.UUID)
	}
}

type failingAMQPUnmarshaler struct{ wamqp.DefaultMarshaler }

func (failingAMQPUnmarshaler) Unmarshal(amqp.Delivery) (*message.Message, error) {
	return nil, errors.New("cannot decode")
}

// The undecodable path (the inner unmarshaler fails) follows the same rule.
func TestAMQPUndecodableMetadataIsValidUTF8(t *testing.T) {
	m, err := adapters.TolerantAMQPMarshaler{Inner: failingAMQPUnmarshaler{}}.Unmarshal(amqp.Delivery{
		Body: []byte("raw"),
		Headers: amqp.Table{
			wamqp.DefaultMessageUUIDHeaderKey: "u\xff\x00",
			"k\xff":                           []byte("v\xfe\x00"),
			"n":                               int32(7),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	allValidUTF8(t, m)
	if !antidote.IsUndecodable(m) || m.UUID != "u\uFFFD\x00" || m.Metadata["k\uFFFD"] != "v\uFFFD\x00" || m.Metadata["n"] != "7" {
		t.Fatalf("UUID %q, metadata %q", m.UUID, m.Metadata)
	}
	// Without a UUID header or message-id, the fallback names the routing
	// key, cleaned too.
	m, _ = adapters.TolerantAMQPMarshaler{Inner: failingAMQPUnmarshaler{}}.Unmarshal(amqp.Delivery{RoutingKey: "q\xff", DeliveryTag: 3})
	allValidUTF8(t, m)
	if m.UUID != "amqp:q\uFFFD/3" {
		t.Fatalf("UUID %q", m.UUID)
	}
}
