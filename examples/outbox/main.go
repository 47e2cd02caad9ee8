// Command outbox replays the outbox incident: an order service writes its
// orders and their messages in one transaction (a transactional outbox);
// one order is written twice under two message ids (the corrupt row, a
// duplicate business id), and the marking of a row as sent logs its order
// id, unique, as the incident's sweeper did.
//
//	go run ./examples/outbox --incident --json   # the naive sweeper: the flood, named
//	go run ./examples/outbox --json              # Antidote's relay: every row once
//
// With --incident a naive sweeper reads ten rows, publishes them and marks
// the ten sent in one statement, swallowing any error: the corrupt row makes
// the marking fail every time and the same ten messages go out again and
// again. The consumer (router.New with the flood guard and idempotency)
// names the flooding producer within seconds and dead-letters the flood;
// the message hospital ingests the DLQ and groups the flood letters under
// that producer. Without it, outbox.Relay marks each row on its own: every
// row is sent once, the corrupt row is retried a bounded number of times
// (its copies skipped by the consumer's idempotency) and lands in the
// outbox's dead-letter table.
//
// The broker is picked like the other examples' (ANTIDOTE_BROKER, default
// kafka with an embedded broker); the outbox, its order table and the
// hospital store live in PostgreSQL (ANTIDOTE_POSTGRES_URL, default the
// test database). The last stdout line with --json is the summary: the
// other examples' fields, and outbox_dead_lettered, duplicates_delivered,
// flood_producer, flood_detected_ms and hospital_groups.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/antidote-mq/antidote/adapters"
	_ "github.com/antidote-mq/antidote/devkafka"
	"github.com/antidote-mq/antidote/hospital"
	"github.com/antidote-mq/antidote/idempotency"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/outbox"
	"github.com/antidote-mq/antidote/pgstore"
	"github.com/antidote-mq/antidote/poison"
	"github.com/antidote-mq/antidote/router"
)

// Summary is the run's account; with --json it is the last stdout line.
type Summary struct {
	Broker              string          `json:"broker"`
	Mode                string          `json:"mode"`
	Published           int64           `json:"published"`
	Processed           int64           `json:"processed"`
	DeadLettered        int64           `json:"dead_lettered"`
	DuplicatesSkipped   int64           `json:"duplicates_skipped"`
	Retries             int64           `json:"retries"`
	ElapsedMS           int64           `json:"elapsed_ms"`
	OutboxDeadLettered  int64           `json:"outbox_dead_lettered"`
	DuplicatesDelivered int64           `json:"duplicates_delivered"`
	FloodProducer       string          `json:"flood_producer,omitempty"`
	FloodDetectedMS     int64           `json:"flood_detected_ms,omitempty"`
	HospitalGroups      []hospitalGroup `json:"hospital_groups,omitempty"`
}

type hospitalGroup struct {
	Reason   string `json:"reason"`
	Producer string `json:"producer"`
	Count    int64  `json:"count"`
}

type options struct {
	incident bool
	jsonOut  bool
	orders   int
	duration time.Duration
}

func main() {
	var o options
	fs := flag.NewFlagSet("outbox", flag.ContinueOnError)
	fs.BoolVar(&o.incident, "incident", false, "run the incident's naive sweeper (batch marking, errors swallowed) instead of outbox.Relay")
	fs.BoolVar(&o.jsonOut, "json", false, "print the summary as one JSON line")
	fs.IntVar(&o.orders, "orders", 100, "orders written (one of them a second time under another message id: the corrupt row)")
	fs.DurationVar(&o.duration, "duration", 4*time.Second, "how long the naive sweeper runs (--incident)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		os.Exit(2)
	}
	if o.orders < 12 {
		fmt.Fprintln(os.Stderr, "--orders must be at least 12 (the corrupt row is the 8th, within the sweeper's first ten)")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	s, err := run(ctx, o, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
	if o.jsonOut {
		line, _ := json.Marshal(s)
		fmt.Println(string(line))
		return
	}
	fmt.Printf("%s (%s): published %d, processed %d, dead-lettered %d, duplicates skipped %d, duplicates delivered %d, outbox dead-lettered %d in %s\n",
		s.Broker, s.Mode, s.Published, s.Processed, s.DeadLettered, s.DuplicatesSkipped, s.DuplicatesDelivered, s.OutboxDeadLettered, time.Duration(s.ElapsedMS)*time.Millisecond)
	if s.FloodProducer != "" {
		fmt.Printf("flood: producer %s named after %s; hospital groups: %+v\n", s.FloodProducer, time.Duration(s.FloodDetectedMS)*time.Millisecond, s.HospitalGroups)
	}
}

// consumer counts what the order handler sees.
type consumer struct {
	mu        sync.Mutex
	processed map[string]int
	skipped   atomic.Int64
	flooded   atomic.Int64 // flood arrivals dead-lettered
	flood     atomic.Pointer[string]
	floodAt   atomic.Int64
}

func (c *consumer) handle(m *message.Message) error {
	c.mu.Lock()
	c.processed[m.UUID]++
	c.mu.Unlock()
	return nil
}

func (c *consumer) counts() (distinct, extra int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range c.processed {
		distinct++
		extra += int64(n - 1)
	}
	return distinct, extra
}

func run(ctx context.Context, o options, logOut io.Writer) (Summary, error) {
	start := time.Now()
	logger := watermill.NewSlogLogger(slog.New(slog.NewTextHandler(logOut, &slog.HandlerOptions{Level: slog.LevelWarn})))
	cfg, err := adapters.LoadConfig("")
	if err != nil {
		return Summary{}, err
	}
	if cfg.Broker == "" {
		cfg.Broker = adapters.KindKafka
	}
	if cfg.Broker == adapters.KindKafka && len(cfg.Kafka.Brokers) == 0 {
		cfg.Kafka.Embedded = true
	}
	b, err := adapters.Open(ctx, cfg, logger)
	if err != nil {
		return Summary{}, err
	}
	defer b.Close()
	pgURL := b.Config.Postgres.URL
	pool, err := pgxpool.New(ctx, pgURL)
	if err != nil {
		return Summary{}, err
	}
	defer pool.Close()

	suffix := strings.ToLower(watermill.NewShortUUID())
	topic := "orders_" + suffix
	table := "example_outbox_" + suffix
	ob, err := outbox.New(outbox.Config{Table: table})
	if err != nil {
		return Summary{}, err
	}
	if err := ob.CreateTables(ctx, pool); err != nil {
		return Summary{}, err
	}
	// The incident's sent log: marking a row sent records its order id,
	// once.
	if _, err := pool.Exec(ctx, fmt.Sprintf(`
CREATE TABLE %[1]s_orders (id TEXT PRIMARY KEY, written_at TIMESTAMPTZ NOT NULL DEFAULT now());
CREATE TABLE %[1]s_sent_log (order_id TEXT PRIMARY KEY);
CREATE FUNCTION %[1]s_log() RETURNS trigger AS $$ BEGIN
  INSERT INTO %[1]s_sent_log VALUES (convert_from(NEW.payload, 'UTF8')::json->>'order'); RETURN NEW; END $$ LANGUAGE plpgsql;
CREATE TRIGGER %[1]s_log BEFORE UPDATE ON %[1]s FOR EACH ROW
  WHEN (OLD.sent_at IS NULL AND NEW.sent_at IS NOT NULL) EXECUTE FUNCTION %[1]s_log()`, table)); err != nil {
		return Summary{}, err
	}
	defer func() {
		_, _ = pool.Exec(context.Background(), fmt.Sprintf(`DROP TABLE IF EXISTS %[1]s, %[1]s_dead, %[1]s_orders, %[1]s_sent_log CASCADE;
DROP FUNCTION IF EXISTS %[1]s_log(); DROP TABLE IF EXISTS %[1]s_h_letters, %[1]s_h_groups, %[1]s_h_rates, %[1]s_h_audit, %[1]s_h_canaries`, table))
	}()

	// The orders: each in one transaction with its message. Order 7 is
	// written twice (a retried request under a new message id): the
	// corrupt row.
	for i := 0; i < o.orders; i++ {
		if err := writeOrder(ctx, pool, ob, table, topic, fmt.Sprintf("order-%04d", i), watermill.NewUUID()); err != nil {
			return Summary{}, err
		}
		if i == 6 {
			if err := writeOrder(ctx, pool, ob, table, topic, "order-0006", watermill.NewUUID()); err != nil {
				return Summary{}, err
			}
		}
	}
	rows := int64(o.orders + 1)

	// The consumer: the standard stack with idempotency and the flood guard.
	c := &consumer{processed: map[string]int{}}
	rcfg := router.Config{
		Logger:         logger,
		CrashLoopGuard: middleware.CrashLoopGuardConfig{Tracker: poison.MustNewMemoryDeliveryTracker(poison.MemoryDeliveryTrackerConfig{})},
		DeadLetter:     middleware.DeadLetterConfig{Publisher: b.Publisher},
		Idempotency: &middleware.IdempotencyConfig{Store: idempotency.MustNewMemoryStore(idempotency.MemoryStoreConfig{}),
			OnDuplicate: func(*message.Message, string) { c.skipped.Add(1) }},
		FloodGuard: &middleware.FloodGuardConfig{Drop: true, Logger: logger, OnFlood: func(v poison.FloodVerdict, a middleware.FloodAction) {
			if a == middleware.FloodDeadLettered {
				c.flooded.Add(1)
			}
			if v.Report && c.flood.Load() == nil {
				p := v.Producer
				c.flood.Store(&p)
				c.floodAt.Store(int64(time.Since(start)))
			}
		}},
	}
	r, err := router.New(rcfg)
	if err != nil {
		return Summary{}, err
	}
	r.AddConsumerHandler("orders", topic, b.Subscriber, c.handle)
	rctx, stopRouter := context.WithCancel(ctx)
	defer stopRouter()
	go func() { _ = r.Run(rctx) }()
	<-r.Running()

	// The hospital follows the DLQ.
	store, err := pgstore.NewHospitalStore(ctx, pgstore.HospitalStoreConfig{Pool: pool, Table: table + "_h"})
	if err != nil {
		return Summary{}, err
	}
	hcfg := b.Config
	hcfg.Kafka.ConsumerGroup = "antidote-hospital"
	hb, err := adapters.Open(ctx, hcfg, logger)
	if err != nil {
		return Summary{}, err
	}
	defer hb.Close()
	var ingested atomic.Int64
	go func() {
		_, _ = hospital.Ingest(rctx, hospital.IngestConfig{Subscriber: hb.LetterSubscriber(), Store: countStore{store, &ingested},
			Topics: []string{topic + ".dlq"}, Broker: string(b.Kind)})
	}()

	s := Summary{Broker: string(b.Kind)}
	if o.incident {
		s.Mode = "incident: naive sweeper"
		s.Published, err = naiveSweeper(ctx, pool, table, b.Publisher, topic, o.duration)
		if err != nil {
			return s, err
		}
	} else {
		s.Mode = "outbox.Relay"
		var published atomic.Int64
		pubCount := &countingPublisher{Publisher: b.Publisher, n: &published, ids: map[string]bool{}}
		relay, err := outbox.NewRelay(ctx, outbox.RelayConfig{Pool: pool, Outbox: ob, Publisher: pubCount,
			Service: "orders-relay", Logger: logger, MaxAttempts: 3, RetryBackoff: 100 * time.Millisecond, PollInterval: 20 * time.Millisecond})
		if err != nil {
			return s, err
		}
		relayCtx, stopRelay := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); _ = relay.Run(relayCtx) }()
		// Until every row is sent or dead-lettered, and the consumer has
		// what was sent.
		for ctx.Err() == nil {
			st, err := relay.Stats(ctx)
			if err == nil && st.Pending == 0 {
				if d, _ := c.counts(); d >= rows-st.Dead {
					break
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
		stopRelay()
		<-done
		st, err := relay.Stats(context.WithoutCancel(ctx))
		if err != nil {
			return s, err
		}
		s.OutboxDeadLettered = st.Dead
		// Published: the distinct messages the relay got out (the dead row
		// too: it was published, its marking failed); retries: the copies.
		s.Published = pubCount.distinct()
		s.Retries = published.Load() - s.Published
	}
	// Let the consumer take in every copy sent (processed, skipped as a
	// duplicate, or dead-lettered by the flood guard), then the hospital
	// every letter.
	sent := s.Published + s.Retries
	waitFor(ctx, func() bool { d, e := c.counts(); return d+e+c.skipped.Load()+c.flooded.Load() >= sent })
	waitFor(ctx, func() bool { return ingested.Load() >= c.flooded.Load() })
	stopRouter()

	distinct, extra := c.counts()
	s.Processed, s.DuplicatesDelivered, s.DuplicatesSkipped = distinct, extra, c.skipped.Load()
	if p := c.flood.Load(); p != nil {
		s.FloodProducer, s.FloodDetectedMS = *p, time.Duration(c.floodAt.Load()).Milliseconds()
	}
	page, err := store.Groups(context.WithoutCancel(ctx), hospital.GroupQuery{Order: hospital.ByCount})
	if err == nil {
		for _, g := range page.Groups {
			s.DeadLettered += g.Dead
			s.HospitalGroups = append(s.HospitalGroups, hospitalGroup{Reason: g.Fingerprint.Reason, Producer: g.Fingerprint.Producer, Count: g.Dead})
		}
	}
	if !o.incident {
		// The corrupt row was delivered (and processed) before its marking
		// failed: it counts among the processed, not the consumer's DLQ.
		s.DeadLettered = 0
		for _, g := range s.HospitalGroups {
			s.DeadLettered += g.Count
		}
	}
	s.ElapsedMS = time.Since(start).Milliseconds()
	return s, nil
}

func writeOrder(ctx context.Context, pool *pgxpool.Pool, ob *outbox.Outbox, table, topic, orderID, messageID string) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO `+table+`_orders (id) VALUES ($1) ON CONFLICT DO NOTHING`, orderID); err != nil {
			return err
		}
		return ob.Add(ctx, tx, topic, message.NewMessage(messageID, []byte(`{"order":"`+orderID+`"}`)))
	})
}

// naiveSweeper is the incident's sweeper: ten rows, published, marked sent
// in one statement; any error swallowed by a catch-all.
func naiveSweeper(ctx context.Context, pool *pgxpool.Pool, table string, pub message.Publisher, topic string, d time.Duration) (int64, error) {
	stamped, err := idempotency.NewPublisher(pub, idempotency.ProducerConfig{Service: "naive-sweeper",
		Key: func(m *message.Message) (string, error) { return m.UUID, nil }})
	if err != nil {
		return 0, err
	}
	var published int64
	end := time.Now().Add(d)
	for ctx.Err() == nil && time.Now().Before(end) {
		func() {
			defer func() { _ = recover() }() // the catch-all
			rows, err := pool.Query(ctx, `SELECT id, message_id, payload FROM `+table+` WHERE sent_at IS NULL ORDER BY id LIMIT 10`)
			if err != nil {
				return
			}
			var ids []int64
			var msgs []*message.Message
			for rows.Next() {
				var id int64
				var mid string
				var payload []byte
				if rows.Scan(&id, &mid, &payload) == nil {
					ids = append(ids, id)
					msgs = append(msgs, message.NewMessage(mid, payload))
				}
			}
			rows.Close()
			if len(msgs) == 0 {
				return
			}
			if stamped.Publish(topic, msgs...) == nil {
				published += int64(len(msgs))
			}
			// One statement for the batch: one bad row fails them all.
			_, _ = pool.Exec(ctx, `UPDATE `+table+` SET sent_at = now() WHERE id = ANY($1)`, ids)
		}()
		time.Sleep(10 * time.Millisecond)
	}
	return published, nil
}

// waitFor polls cond until it holds, for at most a minute: the counts it
// waits for are exact, the minute only keeps a broken run from hanging.
func waitFor(ctx context.Context, cond func() bool) {
	deadline := time.Now().Add(time.Minute)
	for ctx.Err() == nil && time.Now().Before(deadline) && !cond() {
		time.Sleep(20 * time.Millisecond)
	}
}

type countStore struct {
	hospital.Store
	n *atomic.Int64
}

func (c countStore) Put(ctx context.Context, l hospital.Letter) (bool, error) {
	ok, err := c.Store.Put(ctx, l)
	if err == nil {
		c.n.Add(1)
	}
	return ok, err
}

type countingPublisher struct {
	message.Publisher
	n   *atomic.Int64
	mu  sync.Mutex
	ids map[string]bool
}

func (p *countingPublisher) Publish(topic string, msgs ...*message.Message) error {
	err := p.Publisher.Publish(topic, msgs...)
	if err == nil {
		p.n.Add(int64(len(msgs)))
		p.mu.Lock()
		for _, m := range msgs {
			p.ids[m.UUID] = true
		}
		p.mu.Unlock()
	}
	return err
}

func (p *countingPublisher) distinct() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return int64(len(p.ids))
}
