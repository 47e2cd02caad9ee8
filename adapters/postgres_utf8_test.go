package adapters_test

import (
	"bytes"
	"maps"
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
)

// The metadata rule every adapter keeps: keys, values and the UUID reach the
// handler as valid UTF-8, each invalid byte sequence as U+FFFD, NUL kept.
func TestPostgresMetadataUTF8Rule(t *testing.T) {
	b := pgOpen(t, nil)
	topic := "utf8_" + watermill.NewShortUUID()
	pgConn(t, b, topic)
	sent := message.Metadata{
		"plain":         "value",
		"bad\xffkey":    "v\xfe\xfdv",
		"nul\x00key":    "nul\x00value",
		"\x00":          "\x00",
		"mixed":         "a\xc3(b\x00c\xed\xa0\x80d",
		"cut":           "\xe2\x82",
		"\u00e9\u20ac":  "\U0001F600",
		"overlong\xc0":  "\xc0\xaf",
		"html<>&\u2028": "<>&\u2028",
	}
	uuid := "id-\xff-\x80x"
	msg := message.NewMessage(uuid, []byte("payload \xff\x00 any bytes"))
	msg.Metadata = sent
	if err := b.Publisher.Publish(topic, msg); err != nil {
		t.Fatal(err)
	}
	if msg.UUID != uuid {
		t.Fatal("Publish changed the caller's message")
	}
	m := pgReceive(t, b, topic, 1)[0]
	if want := strings.ToValidUTF8(uuid, "\uFFFD"); m.UUID != want {
		t.Errorf("UUID %q; want %q", m.UUID, want)
	}
	if !bytes.Equal(m.Payload, msg.Payload) {
		t.Errorf("payload %q", m.Payload)
	}
	want := message.Metadata{}
	for k, v := range sent {
		want[strings.ToValidUTF8(k, "\uFFFD")] = strings.ToValidUTF8(v, "\uFFFD")
	}
	if !maps.Equal(m.Metadata, want) {
		t.Errorf("metadata\n got %q\nwant %q", m.Metadata, want)
	}
}
