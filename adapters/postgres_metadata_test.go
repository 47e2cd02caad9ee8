package adapters_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/adapters"
)

// Rows written by other producers, with every kind of metadata that used to
// fail the subscriber's query (and so block the queue for good): each is
// delivered exactly once, and so is the message behind them.
func TestPostgresForeignMetadataNeverBlocksTheQueue(t *testing.T) {
	b := pgOpen(t, nil)
	topic := "foreignmeta_" + watermill.NewShortUUID()
	conn := pgConn(t, b, topic)
	if err := b.Subscriber.(message.SubscribeInitializer).SubscribeInitialize(topic); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for i := range 10000 {
		keys = append(keys, fmt.Sprintf(`"k%d":"v%d"`, i, i))
	}
	rows := []struct{ uuid, meta string }{
		{"bad-fields", `{"_watermill_delayed_until":"2024-13-45T99:99:99Z"}`},
		{"nul-in-delay", `{"_watermill_delayed_until":"2024-01-01T00:00:00\u0000Z"}`},
		{"surrogate-in-delay", `{"_watermill_delayed_until":"\ud800"}`},
		{"number", `{"_watermill_delayed_until":1700000000}`},
		{"object", `{"_watermill_delayed_until":{"at":"2999-01-01T00:00:00Z"}}`},
		{"array-value", `{"_watermill_delayed_until":["2999-01-01T00:00:00Z"]}`},
		{"null-value", `{"_watermill_delayed_until":null}`},
		{"nul-key-value", `{"k\u0000":"v\u0000"}`},
		{"surrogate-key-value", `{"k\ud800":"v\udc00"}`},
		{"json-array", `[1,2,3]`},
		{"json-null", `null`},
		{"json-string", `"s"`},
		{"many-keys", "{" + strings.Join(keys, ",") + "}"},
		{"1MB-value", `{"big":"` + strings.Repeat("x", 1<<20) + `"}`},
		{"sql-null", ""},
	}
	table := adapters.PostgresTable(b.Config.Postgres, topic)
	for _, r := range rows {
		var meta any
		if r.uuid != "sql-null" {
			meta = r.meta
		}
		if _, err := conn.Exec(context.Background(), "INSERT INTO "+table+" (uuid, payload, metadata) VALUES ($1, $2, $3)", r.uuid, []byte("raw"), meta); err != nil {
			t.Fatalf("%s: %v", r.uuid, err)
		}
	}
	if err := b.Publisher.Publish(topic, message.NewMessage("last", []byte("ok"))); err != nil {
		t.Fatal(err)
	}
	got := map[string]*message.Message{}
	for _, m := range pgReceive(t, b, topic, len(rows)+1) {
		if got[m.UUID] != nil {
			t.Errorf("%s delivered twice", m.UUID)
		}
		got[m.UUID] = m
	}
	for _, r := range append(rows, struct{ uuid, meta string }{"last", ""}) {
		if got[r.uuid] == nil {
			t.Errorf("%s not delivered", r.uuid)
		}
	}
	if m := got["nul-key-value"]; m != nil && m.Metadata.Get("k\x00") != "v\x00" {
		t.Errorf("NUL not kept: %q", m.Metadata)
	}
	if m := got["surrogate-key-value"]; m != nil && m.Metadata.Get("k\uFFFD") != "v\uFFFD" {
		t.Errorf("lone surrogates not U+FFFD: %q", m.Metadata)
	}
	if m := got["many-keys"]; m != nil && (len(m.Metadata) != 10000 || m.Metadata.Get("k9999") != "v9999") {
		t.Errorf("many keys: %d keys", len(m.Metadata))
	}
	if m := got["1MB-value"]; m != nil && len(m.Metadata.Get("big")) != 1<<20 {
		t.Errorf("1MB value: %d bytes", len(m.Metadata.Get("big")))
	}
	if m := got["json-array"]; m != nil && !antidote.IsUndecodable(m) {
		t.Errorf("array metadata not marked undecodable: %q", m.Metadata)
	}
	pgWait(t, 10*time.Second, "rows left in the queue table", func() bool { return pgRows(t, conn, b, topic) == 0 })
}

// A message scheduled with a sub-second delay waits until it is due and no
// longer; a message published after it, not delayed, is not held behind it.
func TestPostgresScheduledMessageWaitsUntilDue(t *testing.T) {
	b := pgOpen(t, nil)
	topic := "scheduled_" + watermill.NewShortUUID()
	pgConn(t, b, topic)
	const after = 1500 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ch, err := b.Subscriber.Subscribe(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := b.Scheduler().Schedule(ctx, topic, message.NewMessage("delayed", []byte("d")), after); err != nil {
		t.Fatal(err)
	}
	if err := b.Publisher.Publish(topic, message.NewMessage("now", []byte("n"))); err != nil {
		t.Fatal(err)
	}
	var order []string
	for len(order) < 2 {
		select {
		case m := <-ch:
			m.Ack()
			order = append(order, m.UUID)
			if m.UUID == "delayed" {
				if early := after - time.Since(start); early > 0 {
					t.Fatalf("the delayed message arrived %s before it was due", early)
				}
				if due := antidote.DueAt(m); due.IsZero() {
					t.Errorf("no %s on the delayed message", antidote.MetadataRetryDue)
				}
			}
		case <-ctx.Done():
			t.Fatalf("received %v; the delayed message never came", order)
		}
	}
	if order[0] != "now" {
		t.Fatalf("order %v: the undelayed message waited behind the delayed one", order)
	}
}
