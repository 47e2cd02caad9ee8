package adapters_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"maps"
	"strconv"
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/adapters"
)

// pgSized is a message whose payload plus metadata as JSON is exactly size
// bytes.
func pgSized(t *testing.T, uuid string, meta message.Metadata, size int) *message.Message {
	t.Helper()
	enc, err := json.Marshal(meta)
	if err != nil {
		t.Fatal(err)
	}
	if size < len(enc) {
		t.Fatalf("metadata alone is %d bytes", len(enc))
	}
	m := message.NewMessage(uuid, bytes.Repeat([]byte{'p'}, size-len(enc)))
	m.Metadata = meta
	return m
}

// postgres.max_message_bytes: a message of exactly the limit (payload plus
// metadata as JSON, which escapes '<' to six bytes) is published and
// arrives intact; one byte more is refused before the database is touched,
// with an error naming the size, the limit and the setting; a dead letter
// gets antidote.LetterHeadroom more.
func TestPostgresMessageSizeLimit(t *testing.T) {
	const limit = 1000
	b := pgOpen(t, func(p *adapters.PostgresConfig) { p.MaxMessageBytes = limit })
	topic := "size_" + watermill.NewShortUUID()
	refused := "size_refused_" + watermill.NewShortUUID()
	conn := pgConn(t, b, topic, refused)
	meta := message.Metadata{"k": "<v>", "n": "x\x00y"}

	atLimit := pgSized(t, "at-limit", meta, limit)
	if err := b.Publisher.Publish(topic, atLimit); err != nil {
		t.Fatalf("a message of exactly the limit: %v", err)
	}
	over := pgSized(t, "over", meta, limit+1)
	err := b.Publisher.Publish(refused, over)
	var tl *antidote.TooLargeError
	if !errors.Is(err, antidote.ErrMessageTooLarge) || !errors.As(err, &tl) {
		t.Fatalf("one byte over: %v; want a *TooLargeError", err)
	}
	for _, want := range []string{"1001", "1000", "postgres.max_message_bytes", "over"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	if tl.Size != limit+1 || tl.Limit != limit || tl.UUID != "over" || tl.Topic != refused || tl.Broker != string(adapters.KindPostgres) {
		t.Errorf("error fields %+v", tl)
	}
	// Metadata counts as much as payload.
	heavy := message.NewMessage("heavy-metadata", nil)
	heavy.Metadata.Set("k", strings.Repeat("m", limit))
	if err := b.Publisher.Publish(refused, heavy); !errors.Is(err, antidote.ErrMessageTooLarge) {
		t.Errorf("metadata over the limit: %v", err)
	}
	if pgTableExists(t, conn, b, refused) {
		t.Fatal("a refused publish created the topic's table")
	}

	// A dead letter may be antidote.LetterHeadroom larger, and no more.
	letter := pgSized(t, "letter", meta, limit+antidote.LetterHeadroom)
	letter.SetContext(antidote.WithLetter(context.Background()))
	if err := b.Publisher.Publish(topic, letter); err != nil {
		t.Fatalf("a letter within the headroom: %v", err)
	}
	bigLetter := pgSized(t, "big-letter", meta, limit+antidote.LetterHeadroom+1)
	bigLetter.SetContext(antidote.WithLetter(context.Background()))
	if err := b.Publisher.Publish(topic, bigLetter); !errors.Is(err, antidote.ErrMessageTooLarge) || !strings.Contains(err.Error(), strconv.Itoa(limit+antidote.LetterHeadroom)) {
		t.Fatalf("a letter over the headroom: %v", err)
	}

	got := map[string]*message.Message{}
	for _, m := range pgReceive(t, b, topic, 2) {
		got[m.UUID] = m
	}
	for _, sent := range []*message.Message{atLimit, letter} {
		m := got[sent.UUID]
		if m == nil || !bytes.Equal(m.Payload, sent.Payload) || !maps.Equal(m.Metadata, sent.Metadata) {
			t.Errorf("%s did not arrive intact", sent.UUID)
		}
	}
}

// A Publish of several messages with one that cannot be published inserts
// none of them, and says which one and that none was published.
func TestPostgresBatchWithOneBadMessagePublishesNone(t *testing.T) {
	const limit = 1000
	b := pgOpen(t, func(p *adapters.PostgresConfig) { p.MaxMessageBytes = limit })
	topic := "batch_" + watermill.NewShortUUID()
	conn := pgConn(t, b, topic)
	if err := b.Publisher.Publish(topic, message.NewMessage("first", []byte("x"))); err != nil {
		t.Fatal(err)
	}
	for name, bad := range map[string]*message.Message{
		"too large": pgSized(t, "bad", nil, limit+1),
		"long uuid": message.NewMessage(strings.Repeat("u", 37), []byte("x")),
		"NUL uuid":  message.NewMessage("a\x00b", []byte("x")),
	} {
		err := b.Publisher.Publish(topic, message.NewMessage("ok-1", []byte("x")), bad, message.NewMessage("ok-2", []byte("x")))
		if err == nil || !strings.Contains(err.Error(), "message 2 of the 3") || !strings.Contains(err.Error(), "none of them was published") {
			t.Errorf("%s: %v", name, err)
		}
		if n := pgRows(t, conn, b, topic); n != 1 {
			t.Fatalf("%s: %d rows after a refused batch; want only the first message", name, n)
		}
	}
}

// The uuid column is VARCHAR(36): a longer UUID is refused before the
// database with a *antidote.TooLargeError naming that column (PostgreSQL's own
// "value too long" failed the whole batch); 36 characters pass, whatever
// their bytes. A NUL cannot be stored in any text column: refused too.
func TestPostgresUUIDLimit(t *testing.T) {
	b := pgOpen(t, nil)
	topic := "uuid_" + watermill.NewShortUUID()
	pgConn(t, b, topic)
	long := strings.Repeat("u", 37)
	err := b.Publisher.Publish(topic, message.NewMessage(long, []byte("x")))
	var tl *antidote.TooLargeError
	if !errors.Is(err, antidote.ErrMessageTooLarge) || !errors.As(err, &tl) || tl.What != "uuid" || tl.Size != 37 || tl.Limit != 36 ||
		!strings.Contains(err.Error(), "VARCHAR(36)") || !strings.Contains(err.Error(), "uuid column") {
		t.Fatalf("37-character UUID: %v", err)
	}
	wide := strings.Repeat("\u00e9", 37)
	if err := b.Publisher.Publish(topic, message.NewMessage(wide, []byte("x"))); !errors.Is(err, antidote.ErrMessageTooLarge) || !strings.Contains(err.Error(), "characters") {
		t.Fatalf("37 two-byte characters: %v", err)
	}
	if err := b.Publisher.Publish(topic, message.NewMessage("a\x00b", []byte("x"))); err == nil || !strings.Contains(err.Error(), "NUL") {
		t.Fatalf("NUL in the UUID: %v", err)
	}
	ok := []string{strings.Repeat("u", 36), strings.Repeat("\u00e9", 36), watermill.NewUUID()}
	for _, id := range ok {
		if err := b.Publisher.Publish(topic, message.NewMessage(id, []byte("x"))); err != nil {
			t.Fatalf("UUID %q: %v", id, err)
		}
	}
	got := map[string]bool{}
	for _, m := range pgReceive(t, b, topic, len(ok)) {
		got[m.UUID] = true
	}
	for _, id := range ok {
		if !got[id] {
			t.Errorf("%q did not arrive", id)
		}
	}
}
