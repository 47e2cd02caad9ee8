package outbox_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/internal/testenv/brokers"
	"github.com/antidote-mq/antidote/outbox"
)

func (f *fixture) keyHashes(t *testing.T) map[string][]byte {
	t.Helper()
	rows, err := f.pool.Query(context.Background(), `SELECT message_id, key_hash FROM `+f.table)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	var id string
	var h []byte
	if _, err := pgx.ForEachRow(rows, []any{&id, &h}, func() error { out[id] = h; return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

func sum(s string) []byte { h := sha256.Sum256([]byte(s)); return h[:] }

// Keys at the edges: absent and empty are keyless; a 10 KB key, keys with
// NUL bytes and keys of invalid UTF-8 (which the metadata's JSON turns into
// U+FFFD, so two such keys are one on the broker and one order here) are
// stored, ordered and published unchanged; rows of old writers (a raw
// INSERT without key_hash) are keyless; a raw INSERT with
// sha256(convert_to(key, 'UTF8')) shares the order of Add's rows of key.
func TestKeysAtTheEdges(t *testing.T) {
	f := newFixture(t)
	b := brokers.Open(t, brokers.Config(t, adapters.KindPostgres))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	topic := brokers.Topic("edges_")
	ch, err := b.Subscriber.Subscribe(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var order []string          // message ids as they arrived
	keys := map[string]string{} // message id -> partition_key received
	go func() {
		for m := range ch {
			mu.Lock()
			order = append(order, m.UUID)
			keys[m.UUID] = m.Metadata.Get("partition_key")
			mu.Unlock()
			m.Ack()
		}
	}()
	big := strings.Repeat("k", 10<<10)
	cases := []struct{ id, key string }{
		{"absent", "\x01absent"}, // no metadata at all (below)
		{"empty", ""},
		{"big-1", big},
		{"nul-1", "a\x00b"},
		{"big-other", big[:len(big)-1] + "j"},
		{"nul-other", "a\x00c"},
		{"bad-utf8-1", "\xff"},
		{"big-2", big},
		{"nul-2", "a\x00b"},
		{"bad-utf8-2", "\xfe"},
		{"acct-raw-1", "acct-raw"},
	}
	for _, c := range cases {
		m := message.NewMessage(c.id, []byte(`{}`))
		if c.key != "\x01absent" {
			m.Metadata.Set("partition_key", c.key)
		}
		f.addEach(t, topic, m)
	}
	// An old writer, and a writer of its own hashing the key in SQL.
	if _, err := f.pool.Exec(ctx, `INSERT INTO `+f.table+` (message_id, topic, payload, metadata) VALUES ('old-writer', $1, '\x7b7d', convert_to('{"partition_key":"acct-raw"}', 'UTF8'))`, topic); err != nil {
		t.Fatal(err)
	}
	if _, err := f.pool.Exec(ctx, `INSERT INTO `+f.table+` (message_id, topic, payload, metadata, key_hash)
VALUES ('acct-raw-2', $1, '\x7b7d', convert_to('{"partition_key":"acct-raw"}', 'UTF8'), sha256(convert_to('acct-raw', 'UTF8')))`, topic); err != nil {
		t.Fatal(err)
	}
	h := f.keyHashes(t)
	for id, want := range map[string][]byte{
		"absent": nil, "empty": nil, "old-writer": nil,
		"big-1": sum(big), "big-2": sum(big), "big-other": sum(big[:len(big)-1] + "j"),
		"nul-1": sum("a\x00b"), "nul-2": sum("a\x00b"), "nul-other": sum("a\x00c"),
		"bad-utf8-1": sum("\uFFFD"), "bad-utf8-2": sum("\uFFFD"),
		"acct-raw-1": sum("acct-raw"), "acct-raw-2": sum("acct-raw"),
	} {
		if got := h[id]; !slices.Equal(got, want) || (want == nil) != (got == nil) {
			t.Errorf("%s: key_hash %x, want %x", id, got, want)
		}
	}
	r := f.relay(t, b.Publisher)
	go func() { _ = r.Run(ctx) }()
	n := len(cases) + 2
	testenv.Eventually(t, 60*time.Second, "every row sent", func() bool { mu.Lock(); defer mu.Unlock(); return len(order) >= n })
	mu.Lock()
	defer mu.Unlock()
	if len(order) != n {
		t.Errorf("%d arrivals, want %d: %v", len(order), n, order)
	}
	before := func(a, b string) {
		if i, j := slices.Index(order, a), slices.Index(order, b); i < 0 || j < 0 || i > j {
			t.Errorf("%s arrived at %d, %s at %d: want it before", a, i, b, j)
		}
	}
	before("big-1", "big-2")
	before("nul-1", "nul-2")
	before("bad-utf8-1", "bad-utf8-2")
	before("acct-raw-1", "acct-raw-2")
	for id, want := range map[string]string{"big-1": big, "nul-1": "a\x00b", "nul-other": "a\x00c", "bad-utf8-2": "\uFFFD", "empty": "", "absent": ""} {
		if keys[id] != want {
			t.Errorf("%s published with partition_key %q (%d bytes), want %d bytes", id, keys[id][:min(len(keys[id]), 20)], len(keys[id]), len(want))
		}
	}
}

// oldSchema is the outbox table as CreateTables made it before ordering
// keys (commit 5c9327c).
const oldSchema = `CREATE TABLE %[1]s (
  id              BIGSERIAL PRIMARY KEY,
  message_id      TEXT NOT NULL UNIQUE,
  topic           TEXT NOT NULL,
  payload         BYTEA NOT NULL,
  metadata        BYTEA NOT NULL,
  created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
  attempts        INTEGER NOT NULL DEFAULT 0,
  last_error      TEXT NOT NULL DEFAULT '',
  next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  locked_by       TEXT,
  locked_until    TIMESTAMPTZ,
  sent_at         TIMESTAMPTZ
);
CREATE INDEX %[1]s_pending ON %[1]s (id) WHERE sent_at IS NULL;
CREATE TABLE %[1]s_dead (
  id         BIGINT PRIMARY KEY,
  message_id TEXT NOT NULL,
  topic      TEXT NOT NULL,
  payload    BYTEA NOT NULL,
  metadata   BYTEA NOT NULL,
  created_at TIMESTAMPTZ NOT NULL,
  attempts   INTEGER NOT NULL,
  reason     TEXT NOT NULL,
  dead_at    TIMESTAMPTZ NOT NULL DEFAULT now()
)`

// A table of the previous schema, with rows of old writers: Add of a keyed
// message before the upgrade goes in keyless instead of failing the
// business transaction; two relays starting at once upgrade the table (the
// column and the indexes); rows added after are keyed; everything is sent.
func TestOldSchemaIsUpgraded(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pool := newFixture(t).pool
	table := "ob_old_" + strings.ToLower(watermill.NewShortUUID())
	if _, err := pool.Exec(ctx, fmt.Sprintf(oldSchema, table)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = pool.Exec(context.Background(), `DROP TABLE IF EXISTS `+table+`, `+table+`_dead`) })
	b := brokers.Open(t, brokers.Config(t, adapters.KindPostgres))
	topic := brokers.Topic("old_")
	got := receiveOrder(t, ctx, b.Subscriber, topic)
	if _, err := pool.Exec(ctx, `INSERT INTO `+table+` (message_id, topic, payload, metadata) SELECT 'old-'||i, $1, '\x7b7d', '\x7b7d' FROM generate_series(1, 20) i`, topic); err != nil {
		t.Fatal(err)
	}
	writer, err := outbox.New(outbox.Config{Table: table})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{pool: pool, ob: writer, table: table}
	f.addEach(t, topic, keyed("acct-1", 0), keyed("", 0))
	var rowsIn int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM `+table).Scan(&rowsIn); err != nil || rowsIn != 22 {
		t.Fatalf("%d rows (%v), want 22", rowsIn, err)
	}
	relayOb, err := outbox.New(outbox.Config{Table: table})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	relays := make([]*outbox.Relay, 2)
	errs := make([]error, 2)
	for i := range relays {
		wg.Add(1)
		go func() {
			defer wg.Done()
			relays[i], errs[i] = outbox.NewRelay(ctx, outbox.RelayConfig{Pool: pool, Outbox: relayOb, Publisher: b.Publisher, Service: "old-relay",
				Instance: watermill.NewShortUUID(), PollInterval: 10 * time.Millisecond})
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	var indexes []string
	rows, err := pool.Query(ctx, `SELECT indexname FROM pg_indexes WHERE tablename = $1 ORDER BY indexname`, table)
	if err != nil {
		t.Fatal(err)
	}
	if indexes, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{table + "_keyed", table + "_keyless", table + "_pending"} {
		if !slices.Contains(indexes, want) {
			t.Errorf("indexes %v: no %s", indexes, want)
		}
	}
	// The writer learns of the column by itself.
	f.addEach(t, topic, keyed("acct-1", 1), keyed("acct-1", 2))
	h := f.keyHashes(t)
	if h["acct-1/0000"] != nil || h["-/0000"] != nil || !slices.Equal(h["acct-1/0001"], sum("acct-1")) || !slices.Equal(h["acct-1/0002"], sum("acct-1")) {
		t.Errorf("key hashes before and after the upgrade: %x %x %x %x", h["acct-1/0000"], h["-/0000"], h["acct-1/0001"], h["acct-1/0002"])
	}
	for _, r := range relays {
		go func() { _ = r.Run(ctx) }()
	}
	testenv.Eventually(t, 60*time.Second, "every row sent", func() bool { return got.distinct() >= 24 })
	testenv.Eventually(t, 30*time.Second, "every row marked", func() bool { st, _ := relays[0].Stats(ctx); return st.Pending == 0 })
	if got.distinct() != 24 || got.dups() != 0 {
		t.Errorf("%d distinct, %d copies; want 24, 0", got.distinct(), got.dups())
	}
	// acct-1/0000 went in keyless: anywhere.
	if a := slices.DeleteFunc(got.of("acct-1"), func(s int) bool { return s == 0 }); !slices.Equal(a, []int{1, 2}) {
		t.Errorf("acct-1 arrived %v: want 1 before 2", got.of("acct-1"))
	}
}

// A key with many rows waiting goes out a batch per round, in order, not a
// row per round.
func TestHotKeyIsRelayedInBatches(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	var msgs []*message.Message
	for i := 0; i < 250; i++ {
		msgs = append(msgs, keyed("hot", i))
	}
	if err := pgx.BeginFunc(ctx, f.pool, func(tx pgx.Tx) error { return f.ob.Add(ctx, tx, "hot", msgs...) }); err != nil {
		t.Fatal(err)
	}
	pub := &gatePublisher{Publisher: discard{}}
	r := f.relay(t, pub, func(c *outbox.RelayConfig) { c.BatchSize = 100 })
	var claimed []int
	for range 4 {
		round, err := r.RunOnce(ctx)
		if err != nil {
			t.Fatal(err)
		}
		claimed = append(claimed, round.Published)
	}
	if !slices.Equal(claimed, []int{100, 100, 50, 0}) {
		t.Errorf("rounds published %v, want [100 100 50 0]", claimed)
	}
	pub.mu.Lock()
	defer pub.mu.Unlock()
	for i, e := range pub.log {
		if want := fmt.Sprintf("sent hot/%04d", i); e != want {
			t.Fatalf("publish %d: %q, want %q", i, e, want)
		}
	}
}

type discard struct{}

func (discard) Publish(string, ...*message.Message) error { return nil }
func (discard) Close() error                              { return nil }
