package outbox_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/trace"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/idempotency"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/internal/testenv/brokers"
	"github.com/antidote-mq/antidote/outbox"
	"github.com/antidote-mq/antidote/poison"
	"github.com/antidote-mq/antidote/throttle"
)

type fixture struct {
	pool   *pgxpool.Pool
	ob     *outbox.Outbox
	table  string
	orders string // the business table
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testenv.PostgresURL(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	f := &fixture{pool: pool, table: "ob_" + strings.ToLower(watermill.NewShortUUID())}
	f.orders = f.table + "_orders"
	if f.ob, err = outbox.New(outbox.Config{Table: f.table}); err != nil {
		t.Fatal(err)
	}
	if err := f.ob.CreateTables(ctx, pool); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `CREATE TABLE `+f.orders+` (id TEXT PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = pool.Exec(context.Background(), `DROP TABLE IF EXISTS `+f.table+`, `+f.table+`_dead, `+f.orders+`, `+f.table+`_sent_log CASCADE`)
	})
	return f
}

// order writes one business row and its message in one transaction;
// commit false rolls both back.
func (f *fixture) order(t *testing.T, topic, id string, commit bool) {
	t.Helper()
	ctx := context.Background()
	err := pgx.BeginFunc(ctx, f.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO `+f.orders+` (id) VALUES ($1)`, id); err != nil {
			return err
		}
		if err := f.ob.Add(ctx, tx, topic, message.NewMessage(id, []byte(`{"order":"`+id+`"}`))); err != nil {
			return err
		}
		if !commit {
			return errors.New("rolled back on purpose")
		}
		return nil
	})
	if commit && err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) relay(t *testing.T, pub message.Publisher, mutate ...func(*outbox.RelayConfig)) *outbox.Relay {
	t.Helper()
	cfg := outbox.RelayConfig{Pool: f.pool, Outbox: f.ob, Publisher: pub, Service: "orders-relay", Instance: watermill.NewShortUUID(),
		PollInterval: 10 * time.Millisecond, RetryBackoff: 10 * time.Millisecond, BackpressurePause: 20 * time.Millisecond}
	for _, m := range mutate {
		m(&cfg)
	}
	r, err := outbox.NewRelay(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// receiver counts what a topic receives, by message id.
type receiver struct {
	mu   sync.Mutex
	seen map[string]int
	msgs map[string]*message.Message
}

func receive(t *testing.T, ctx context.Context, sub message.Subscriber, topic string) *receiver {
	t.Helper()
	ch, err := sub.Subscribe(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	r := &receiver{seen: map[string]int{}, msgs: map[string]*message.Message{}}
	go func() {
		for m := range ch {
			r.mu.Lock()
			r.seen[m.UUID]++
			r.msgs[m.UUID] = m
			r.mu.Unlock()
			m.Ack()
		}
	}()
	return r
}

func (r *receiver) distinct() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.seen)
}

func (r *receiver) copies() (dups int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, n := range r.seen {
		dups += n - 1
	}
	return dups
}

// Every committed business transaction's message is sent once; rolled-back
// ones never; each is marked sent; the producer identity and idempotency key
// are stamped. On each broker.
func TestRelaySendsCommittedRowsOnce(t *testing.T) {
	for _, kind := range brokers.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			f := newFixture(t)
			b := brokers.Open(t, brokers.Config(t, kind, brokers.KafkaCluster(2)))
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			topic := brokers.Topic("outbox_")
			got := receive(t, ctx, b.Subscriber, topic)
			const n = 200
			committed := 0
			for i := 0; i < n; i++ {
				commit := i%10 != 3
				f.order(t, topic, fmt.Sprintf("order-%03d", i), commit)
				if commit {
					committed++
				}
			}
			r := f.relay(t, b.Publisher)
			go func() { _ = r.Run(ctx) }()
			testenv.Eventually(t, 60*time.Second, "every committed order sent", func() bool { return got.distinct() >= committed })
			st, err := r.Stats(ctx)
			if err != nil {
				t.Fatal(err)
			}
			testenv.Eventually(t, 30*time.Second, "every row marked", func() bool { st, _ = r.Stats(ctx); return st.Pending == 0 })
			if got.distinct() != committed || got.copies() != 0 || st.Dead != 0 {
				t.Errorf("received %d distinct, %d copies, %d dead; want %d, 0, 0", got.distinct(), got.copies(), st.Dead, committed)
			}
			got.mu.Lock()
			defer got.mu.Unlock()
			for id, m := range got.msgs {
				if p := m.Metadata.Get(poison.KeyProducer); !strings.HasPrefix(p, "orders-relay/") {
					t.Fatalf("%s: producer %q", id, p)
				}
				if k := m.Metadata.Get(idempotency.MetadataKey); k != id {
					t.Fatalf("%s: idempotency key %q, want the message id", id, k)
				}
			}
			for i := 3; i < n; i += 10 {
				if _, ok := got.seen[fmt.Sprintf("order-%03d", i)]; ok {
					t.Errorf("order-%03d was rolled back but sent", i)
				}
			}
		})
	}
}

// The incident's corrupt rows, on each broker: metadata that does not
// decode, a payload the broker refuses, and a row whose marking always
// fails (a duplicate business id in a sent log, as in the incident). The
// first two go to the dead-letter table at once; the third is sent, then
// retried a bounded number of times (each re-send a copy with the same id)
// and dead-lettered; no row behind them waits; nothing floods.
func TestRelayCorruptRows(t *testing.T) {
	for _, kind := range brokers.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			f := newFixture(t)
			cfg := brokers.Config(t, kind, brokers.KafkaCluster(2))
			cfg.Kafka.MaxMessageBytes, cfg.AMQP.MaxMessageBytes, cfg.Postgres.MaxMessageBytes = 1<<20, 1<<20, 1<<20
			b := brokers.Open(t, cfg)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			topic := brokers.Topic("corrupt_")
			got := receive(t, ctx, b.Subscriber, topic)
			// The sent log of the incident: marking a row sent logs its
			// business id, unique.
			if _, err := f.pool.Exec(ctx, fmt.Sprintf(`
CREATE TABLE %[1]s_sent_log (business_id TEXT PRIMARY KEY);
CREATE FUNCTION %[1]s_log() RETURNS trigger AS $$ BEGIN
  INSERT INTO %[1]s_sent_log VALUES (convert_from(NEW.payload, 'UTF8')::json->>'order'); RETURN NEW; END $$ LANGUAGE plpgsql;
CREATE TRIGGER %[1]s_log BEFORE UPDATE ON %[1]s FOR EACH ROW
  WHEN (OLD.sent_at IS NULL AND NEW.sent_at IS NOT NULL) EXECUTE FUNCTION %[1]s_log()`, f.table)); err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 20; i++ {
				f.order(t, topic, fmt.Sprintf("good-%02d", i), true)
				switch i {
				case 5: // metadata that is not JSON, written by a legacy writer
					if _, err := f.pool.Exec(ctx, `INSERT INTO `+f.table+` (message_id, topic, payload, metadata) VALUES ('bad-md', $1, '\x7b7d', '\x00ff')`, topic); err != nil {
						t.Fatal(err)
					}
				case 8: // 2 MiB: over the broker's limit
					err := pgx.BeginFunc(ctx, f.pool, func(tx pgx.Tx) error {
						return f.ob.Add(ctx, tx, topic, message.NewMessage("too-big", []byte(`{"order":"big","x":"`+strings.Repeat("x", 2<<20)+`"}`)))
					})
					if err != nil {
						t.Fatal(err)
					}
				case 11: // the same business id as good-04 under another message id
					err := pgx.BeginFunc(ctx, f.pool, func(tx pgx.Tx) error {
						return f.ob.Add(ctx, tx, topic, message.NewMessage("dup-of-good-04", []byte(`{"order":"good-04"}`)))
					})
					if err != nil {
						t.Fatal(err)
					}
				}
			}
			const maxAttempts = 3
			r := f.relay(t, b.Publisher, func(c *outbox.RelayConfig) { c.MaxAttempts = maxAttempts; c.BatchSize = 7 })
			go func() { _ = r.Run(ctx) }()
			var st outbox.Stats
			testenv.Eventually(t, 60*time.Second, "20 good rows sent and 3 dead", func() bool {
				st, _ = r.Stats(ctx)
				return got.distinct() >= 21 && st.Dead == 3 && st.Pending == 0
			})
			var reasons []string
			rows, err := f.pool.Query(ctx, `SELECT message_id || ': ' || attempts || ': ' || reason FROM `+f.table+`_dead ORDER BY id`)
			if err != nil {
				t.Fatal(err)
			}
			reasons, err = pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				t.Fatal(err)
			}
			want := []string{"bad-md: 1: ", "too-big: 1: ", fmt.Sprintf("dup-of-good-04: %d: ", maxAttempts)}
			for i, w := range want {
				if i >= len(reasons) || !strings.HasPrefix(reasons[i], w) {
					t.Errorf("dead letter %d: %q, want %q...", i, reasons, w)
				}
			}
			if !strings.Contains(strings.Join(reasons, "\n"), "could not be marked sent") || !strings.Contains(strings.Join(reasons, "\n"), "over the limit") {
				t.Errorf("reasons do not say what was wrong: %q", reasons)
			}
			got.mu.Lock()
			defer got.mu.Unlock()
			for i := 0; i < 20; i++ {
				if n := got.seen[fmt.Sprintf("good-%02d", i)]; n != 1 {
					t.Errorf("good-%02d received %d times", i, n)
				}
			}
			// The row that could not be marked went out once per try: bounded.
			if n := got.seen["dup-of-good-04"]; n != maxAttempts {
				t.Errorf("the unmarkable row was sent %d times, want %d (once per try)", n, maxAttempts)
			}
			if got.seen["bad-md"]+got.seen["too-big"] != 0 {
				t.Errorf("a corrupt row was delivered")
			}
			t.Logf("dead letters:\n%s", strings.Join(reasons, "\n"))
		})
	}
}

// Two relays on one outbox, on each broker: every row sent exactly once
// (row locks and leases), shared between them.
func TestTwoRelays(t *testing.T) {
	for _, kind := range brokers.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			f := newFixture(t)
			b := brokers.Open(t, brokers.Config(t, kind, brokers.KafkaCluster(2)))
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			topic := brokers.Topic("two_")
			got := receive(t, ctx, b.Subscriber, topic)
			const n = 400
			for i := 0; i < n; i++ {
				f.order(t, topic, fmt.Sprintf("o-%03d", i), true)
			}
			var sent [2]atomic.Int64
			for i := range 2 {
				pub := countingPublisher{Publisher: b.Publisher, n: &sent[i]}
				r := f.relay(t, pub, func(c *outbox.RelayConfig) { c.BatchSize = 10 })
				go func() { _ = r.Run(ctx) }()
			}
			testenv.Eventually(t, 60*time.Second, "every row sent", func() bool { return got.distinct() >= n })
			if got.copies() != 0 || sent[0].Load()+sent[1].Load() != n {
				t.Errorf("%d copies; relays sent %d + %d, want %d in all", got.copies(), sent[0].Load(), sent[1].Load(), n)
			}
			t.Logf("relays sent %d and %d", sent[0].Load(), sent[1].Load())
		})
	}
}

type countingPublisher struct {
	message.Publisher
	n *atomic.Int64
}

func (c countingPublisher) Publish(topic string, msgs ...*message.Message) error {
	err := c.Publisher.Publish(topic, msgs...)
	if err == nil {
		c.n.Add(int64(len(msgs)))
	}
	return err
}

// A publisher under backpressure: the relay pauses and gives its rows back
// (no try counted, nothing dead-lettered), then sends everything once.
func TestRelayPausesUnderBackpressure(t *testing.T) {
	f := newFixture(t)
	b := brokers.Open(t, brokers.Config(t, adapters.KindPostgres))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	topic := brokers.Topic("bp_")
	got := receive(t, ctx, b.Subscriber, topic)
	for i := 0; i < 50; i++ {
		f.order(t, topic, fmt.Sprintf("o-%02d", i), true)
	}
	var refusals atomic.Int64
	pub := refusingPublisher{Publisher: b.Publisher, refuse: 30, n: &refusals}
	r := f.relay(t, pub, func(c *outbox.RelayConfig) { c.MaxAttempts = 2 })
	go func() { _ = r.Run(ctx) }()
	testenv.Eventually(t, 60*time.Second, "every row sent", func() bool { return got.distinct() >= 50 })
	st, err := r.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if refusals.Load() < 30 || st.Dead != 0 || got.copies() != 0 {
		t.Errorf("%d refusals, %d dead, %d copies; want 30+, 0, 0", refusals.Load(), st.Dead, got.copies())
	}
}

type refusingPublisher struct {
	message.Publisher
	refuse int64
	n      *atomic.Int64
}

func (p refusingPublisher) Publish(topic string, msgs ...*message.Message) error {
	if p.n.Add(1) <= p.refuse {
		return &throttle.BackpressureError{Topic: topic, Backlog: 1000, HighWatermark: 100, LowWatermark: 50}
	}
	return p.Publisher.Publish(topic, msgs...)
}

func TestConfigValidates(t *testing.T) {
	if _, err := outbox.New(outbox.Config{Table: "x; DROP TABLE y"}); err == nil {
		t.Error("a table name with SQL accepted")
	}
	_, err := outbox.NewRelay(context.Background(), outbox.RelayConfig{Lease: time.Millisecond, MaxAttempts: -1})
	testenv.RequireFieldsInOrder(t, err, "Pool", "Outbox", "Publisher", "Service", "Lease", "MaxAttempts")
}

// Add refuses what it cannot store with the reason.
func TestAddRefuses(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	err := pgx.BeginFunc(ctx, f.pool, func(tx pgx.Tx) error {
		return f.ob.Add(ctx, tx, "orders", message.NewMessage("same", nil), message.NewMessage("same", nil))
	})
	if !errors.Is(err, outbox.ErrDuplicate) || !strings.Contains(err.Error(), "same") {
		t.Errorf("duplicate id: %v", err)
	}
	err = pgx.BeginFunc(ctx, f.pool, func(tx pgx.Tx) error { return f.ob.Add(ctx, tx, "", message.NewMessage("a", nil)) })
	if err == nil || !strings.Contains(err.Error(), "topic") {
		t.Errorf("empty topic: %v", err)
	}
	err = pgx.BeginFunc(ctx, f.pool, func(tx pgx.Tx) error { return f.ob.Add(ctx, tx, "orders", &message.Message{}) })
	if err == nil || !strings.Contains(err.Error(), "UUID") {
		t.Errorf("no UUID: %v", err)
	}
}

// The trace starts at the business transaction: a message added under a
// span is sent with that trace's context, so the send (and the consumer)
// continue it.
func TestRelayContinuesTheBusinessTrace(t *testing.T) {
	f := newFixture(t)
	b := brokers.Open(t, brokers.Config(t, adapters.KindPostgres))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	topic := brokers.Topic("trace_")
	got := receive(t, ctx, b.Subscriber, topic)
	traceID, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	spanID, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	business := trace.ContextWithSpanContext(ctx, trace.NewSpanContext(trace.SpanContextConfig{TraceID: traceID, SpanID: spanID, TraceFlags: trace.FlagsSampled}))
	err := pgx.BeginFunc(business, f.pool, func(tx pgx.Tx) error {
		return f.ob.Add(business, tx, topic, message.NewMessage("traced", []byte(`{}`)))
	})
	if err != nil {
		t.Fatal(err)
	}
	r := f.relay(t, b.Publisher)
	go func() { _ = r.Run(ctx) }()
	testenv.Eventually(t, 60*time.Second, "the message sent", func() bool { return got.distinct() == 1 })
	got.mu.Lock()
	defer got.mu.Unlock()
	if tp := got.msgs["traced"].Metadata.Get("traceparent"); !strings.Contains(tp, traceID.String()) {
		t.Errorf("traceparent %q does not continue trace %s", tp, traceID)
	}
}
