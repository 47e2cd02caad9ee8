// Command hospital measures the message hospital (issue 16):
//
//   - ingest: letters per second from each broker's DLQ into the PostgreSQL
//     store (hospital.Ingest into pgstore.HospitalStore), from the first
//     letter stored to the last, every letter counted;
//
//   - store: the latency of the hospital's reads with a million letters in
//     the store: the groups page (by recent rate and by count), the first
//     and a deep page of letters, one group's letters, one whole letter.
//
//     go run ./bench/hospital                              # both, every broker
//     go run ./bench/hospital -mode store -letters 1000000 -groups 200
//     go run ./bench/hospital -mode ingest -brokers kafka,amqp,postgres -n 20000
//
// Broker addresses come from the same env as adapters (LoadConfig); Kafka
// without ANTIDOTE_KAFKA_BROKERS uses the embedded broker. The store is at
// ANTIDOTE_HOSPITAL_URL (default: the test database). Tables are dropped
// after each measurement.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/antidote-mq/antidote/adapters"
	_ "github.com/antidote-mq/antidote/devkafka"
	"github.com/antidote-mq/antidote/hospital"
	"github.com/antidote-mq/antidote/pgstore"
	"github.com/antidote-mq/antidote/poison"
)

func main() {
	mode := flag.String("mode", "ingest,store", "what to measure: ingest, store, or both")
	brokerList := flag.String("brokers", "kafka,amqp,postgres", "brokers whose DLQs to ingest from")
	n := flag.Int("n", 20000, "letters per ingest measurement")
	letters := flag.Int("letters", 1_000_000, "letters in the store for the read measurements")
	groups := flag.Int("groups", 200, "groups those letters fall into")
	reps := flag.Int("reps", 30, "repetitions of each read")
	flag.Parse()
	url := os.Getenv("ANTIDOTE_HOSPITAL_URL")
	if url == "" {
		url = adapters.DefaultPostgresURL
	}
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	if strings.Contains(*mode, "ingest") {
		for _, b := range strings.Split(*brokerList, ",") {
			rate, err := ingest(ctx, pool, adapters.Kind(b), *n)
			if err != nil {
				log.Fatalf("%s: %v", b, err)
			}
			fmt.Printf("ingest %-8s %6d letters  %8.0f letters/s\n", b, *n, rate)
		}
	}
	if strings.Contains(*mode, "store") {
		if err := reads(ctx, pool, *letters, *groups, *reps); err != nil {
			log.Fatal(err)
		}
	}
}

func newStore(ctx context.Context, pool *pgxpool.Pool) (*pgstore.HospitalStore, func(), error) {
	prefix := "bench_hospital_" + strings.ToLower(watermill.NewShortUUID())
	s, err := pgstore.NewHospitalStore(ctx, pgstore.HospitalStoreConfig{Pool: pool, Table: prefix})
	if err != nil {
		return nil, nil, err
	}
	drop := func() {
		_, _ = pool.Exec(context.Background(), fmt.Sprintf(`DROP TABLE IF EXISTS %[1]s_letters, %[1]s_groups, %[1]s_rates, %[1]s_audit`, prefix))
	}
	return s, drop, nil
}

type countingStore struct {
	hospital.Store
	n          atomic.Int64
	first, end atomic.Int64
}

func (c *countingStore) Put(ctx context.Context, l hospital.Letter) (bool, error) {
	ok, err := c.Store.Put(ctx, l)
	if err == nil {
		now := time.Now().UnixNano()
		c.first.CompareAndSwap(0, now)
		c.end.Store(now)
		c.n.Add(1)
	}
	return ok, err
}

func ingest(ctx context.Context, pool *pgxpool.Pool, kind adapters.Kind, n int) (float64, error) {
	cfg, err := adapters.LoadConfig("")
	if err != nil {
		return 0, err
	}
	cfg.Broker = kind
	if kind == adapters.KindKafka && len(cfg.Kafka.Brokers) == 0 {
		cfg.Kafka.Embedded = true
	}
	b, err := adapters.Open(ctx, cfg, watermill.NopLogger{})
	if err != nil {
		return 0, err
	}
	defer b.Close()
	topic := "bench_ingest_" + strings.ToLower(watermill.NewShortUUID()) + ".dlq"
	hcfg := b.Config
	hcfg.Kafka.ConsumerGroup = "antidote-hospital"
	hb, err := adapters.Open(ctx, hcfg, watermill.NopLogger{})
	if err != nil {
		return 0, err
	}
	defer hb.Close()
	store, drop, err := newStore(ctx, pool)
	if err != nil {
		return 0, err
	}
	defer drop()
	counting := &countingStore{Store: store}
	ictx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := hospital.Ingest(ictx, hospital.IngestConfig{Subscriber: hb.LetterSubscriber(), Store: counting, Topics: []string{topic}, Broker: string(kind)})
		done <- err
	}()
	// The subscription exists before anything is published (RabbitMQ
	// declares the queue on subscribe); then the letters go out in batches.
	time.Sleep(2 * time.Second)
	var batch []*message.Message
	for i := 0; i < n; i++ {
		m := message.NewMessage(watermill.NewUUID(), []byte(fmt.Sprintf(`{"order":%d,"items":[{"sku":"a","qty":%d}]}`, i, i%7)))
		m.Metadata.Set(poison.KeyReason, []string{"permanent", "retries_exhausted", "panic"}[i%3])
		m.Metadata.Set(poison.KeyOriginalTopic, "orders")
		m.Metadata.Set(poison.KeyHandler, "orders")
		m.Metadata.Set(poison.KeyError, fmt.Sprintf("order %d: error kind %d", i, i%20))
		m.Metadata.Set(poison.KeyAttempts, "3")
		m.Metadata.Set(poison.KeyLastFailedAt, time.Now().UTC().Format(time.RFC3339Nano))
		batch = append(batch, m)
		if len(batch) == 500 || i == n-1 {
			if err := b.Publisher.Publish(topic, batch...); err != nil {
				return 0, err
			}
			batch = batch[:0]
		}
	}
	deadline := time.Now().Add(10 * time.Minute)
	for counting.n.Load() < int64(n) {
		select {
		case err := <-done:
			return 0, fmt.Errorf("ingest stopped at %d of %d: %v", counting.n.Load(), n, err)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("only %d of %d letters stored in 10 minutes", counting.n.Load(), n)
		}
	}
	took := time.Duration(counting.end.Load() - counting.first.Load())
	return float64(n-1) / took.Seconds(), nil
}

// reads fills a store with letters (one INSERT ... SELECT, then the groups
// and rates derived as Put keeps them) and times the hospital's reads.
func reads(ctx context.Context, pool *pgxpool.Pool, letters, groups, reps int) error {
	store, drop, err := newStore(ctx, pool)
	if err != nil {
		return err
	}
	defer drop()
	var prefix string
	if err := pool.QueryRow(ctx, `SELECT tablename FROM pg_tables WHERE tablename LIKE 'bench_hospital_%_letters' ORDER BY tablename DESC LIMIT 1`).Scan(&prefix); err != nil {
		return err
	}
	prefix = strings.TrimSuffix(prefix, "_letters")
	start := time.Now()
	// Group g gets letters in proportion to 1/(g+1): a few big groups and
	// a long tail, as an incident leaves them.
	if _, err := pool.Exec(ctx, fmt.Sprintf(`
INSERT INTO %[1]s_letters (identity, broker, dlq_topic, format, uuid, original_topic, handler, consumer_group, reason, error,
  error_type, stack, producer, consumer_version, attempts, last_failed_at, fingerprint, payload, metadata, problem, state, ingested_at)
SELECT 'kafka:orders.dlq/0/' || i, 'kafka', 'orders.dlq', 'antidote', 'u-' || i, 'orders', 'orders', 'g', 'permanent',
  'order ' || i || ' failed', '*errors.errorString', '', '', 'v1', 3, now(),
  'fp' || lpad((floor(%[3]d * power(random(), 3)))::int::text, 6, '0'),
  convert_to('{"order":' || i || '}', 'UTF8'), '\x7b7d'::bytea, '', 'dead', now() - ((%[2]d - i) || ' seconds')::interval
FROM generate_series(1, %[2]d) AS i`, prefix, letters, groups)); err != nil {
		return err
	}
	if _, err := pool.Exec(ctx, fmt.Sprintf(`
INSERT INTO %[1]s_groups (fingerprint, handler, reason, error_type, frame, message, shape, producer, count, dead, first_seen, last_seen, example, original_topic)
SELECT fingerprint, 'orders', 'permanent', '*errors.errorString', '', 'order <n> failed', 'json:order:number', '', count(*), count(*), min(ingested_at), max(ingested_at), min(id), 'orders'
FROM %[1]s_letters GROUP BY fingerprint;
INSERT INTO %[1]s_rates (fingerprint, hour, count)
SELECT fingerprint, date_trunc('hour', ingested_at), count(*) FROM %[1]s_letters GROUP BY 1, 2;
ANALYZE %[1]s_letters; ANALYZE %[1]s_groups; ANALYZE %[1]s_rates`, prefix)); err != nil {
		return err
	}
	var ngroups int
	var big, small string
	if err := pool.QueryRow(ctx, fmt.Sprintf(`SELECT count(*), max(fingerprint) FILTER (WHERE true), min(fingerprint) FROM %s_groups`, prefix)).Scan(&ngroups, &small, &big); err != nil {
		return err
	}
	fmt.Printf("store: %d letters in %d groups, filled in %s\n", letters, ngroups, time.Since(start).Round(time.Second))
	var deep int64
	if err := pool.QueryRow(ctx, fmt.Sprintf(`SELECT id FROM %s_letters ORDER BY id OFFSET %d LIMIT 1`, prefix, letters*9/10)).Scan(&deep); err != nil {
		return err
	}
	ops := []struct {
		name string
		run  func() error
	}{
		{"groups page, by recent rate", func() error {
			_, err := store.Groups(ctx, hospital.GroupQuery{Order: hospital.ByRecent})
			return err
		}},
		{"groups page, by count", func() error { _, err := store.Groups(ctx, hospital.GroupQuery{Order: hospital.ByCount}); return err }},
		{"letters, first page", func() error { _, err := store.Letters(ctx, hospital.LetterQuery{}); return err }},
		{"letters, newest first", func() error { _, err := store.Letters(ctx, hospital.LetterQuery{Newest: true}); return err }},
		{"letters, page at 90%", func() error { _, err := store.Letters(ctx, hospital.LetterQuery{After: deep}); return err }},
		{"biggest group's letters", func() error {
			_, err := store.Letters(ctx, hospital.LetterQuery{Fingerprint: big, State: hospital.StateDead})
			return err
		}},
		{"smallest group's letters", func() error { _, err := store.Letters(ctx, hospital.LetterQuery{Fingerprint: small}); return err }},
		{"one whole letter", func() error { _, err := store.Letter(ctx, deep); return err }},
		{"dead letters of a group (Select)", func() error {
			_, err := hospital.Select(ctx, store, hospital.LetterQuery{Fingerprint: small})
			return err
		}},
	}
	for _, op := range ops {
		var d []time.Duration
		for i := 0; i < reps; i++ {
			t0 := time.Now()
			if err := op.run(); err != nil {
				return fmt.Errorf("%s: %w", op.name, err)
			}
			d = append(d, time.Since(t0))
		}
		slices.Sort(d)
		fmt.Printf("  %-34s median %8s  p95 %8s\n", op.name, d[len(d)/2].Round(10*time.Microsecond), d[len(d)*95/100].Round(10*time.Microsecond))
	}
	return nil
}
