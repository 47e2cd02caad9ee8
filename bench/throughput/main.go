// Command throughput compares end-to-end consume throughput of a bare
// Watermill router with the same router built by router.New (Antidote's
// default stack with a DLQ publisher and an in-memory idempotency store), on
// each broker adapters.Open supports, in the same run.
//
// For every round and variant it publishes N messages to a fresh topic,
// then starts a router with one no-op handler on that topic and measures
// from the first message handled to the last (so consumer-group joins,
// queue declarations and polling start-up are left out; every message is
// still consumed and acked through the router). Rounds alternate which
// variant goes first.
//
//	go run ./bench/throughput                       # all four brokers
//	go run ./bench/throughput -brokers memory,kafka -n 10000 -rounds 4
//
// Idempotency stores end to end (issue 8, part 5), on the PostgreSQL broker:
//
//	go run ./bench/throughput -brokers postgres -variants antidote,antidote-pgidem,antidote-pgidem-tx -handler-row
//
// antidote-pgidem is router.New with pgstore.IdempotencyStore (Claim and
// Complete, two autocommit statements per message) instead of the memory
// store; antidote-pgidem-tx is the same store in transactional mode
// (IdempotencyConfig.Transactional: IdempotencyStore.RunTx, the handler runs
// inside the transaction) and its handler always inserts one row through
// pgstore.TxFromContext. With -handler-row every other variant's handler
// inserts the same row through the pool (autocommit), so all of them do the
// same work and the comparison is of what exactly-once costs. The store's
// table (bench_idempotency) and the rows' table (bench_throughput_rows) are
// dropped after each measurement; store and handler share one pgx pool
// (adapters' postgres.max_conns, 10).
//
// Scaling with consumers is bench/scaling.
//
// Broker addresses come from the same env as adapters (LoadConfig);
// Kafka without ANTIDOTE_KAFKA_BROKERS uses the embedded broker.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime/pprof"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/bench/internal/benchutil"
	"github.com/antidote-mq/antidote/idempotency"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/pgstore"
	"github.com/antidote-mq/antidote/poison"
	"github.com/antidote-mq/antidote/router"

	// kafka.embedded: the in-process broker of `go run ./examples/kafka`.
	_ "github.com/antidote-mq/antidote/devkafka"
)

func main() {
	brokers := flag.String("brokers", "memory,kafka,amqp,postgres", "comma-separated brokers to run")
	n := flag.Int("n", 0, "messages per measurement (default 20000 on memory, 5000 on brokers)")
	rounds := flag.Int("rounds", 4, "measurements per variant; odd rounds run the variants in -variants order, even rounds in reverse")
	variants := flag.String("variants", "bare,antidote", "variants to compare, the first is the reference: bare, antidote, antidote-noidem (router.New without the idempotency store), antidote-pgidem (PostgreSQL store), antidote-pgidem-tx (PostgreSQL store, transactional; its handler writes a row)")
	handlerRow := flag.Bool("handler-row", false, "every variant's handler inserts one row into PostgreSQL (autocommit; antidote-pgidem-tx's always does, in its transaction)")
	timeout := flag.Duration("timeout", 5*time.Minute, "give up on one measurement after this long")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}

	failed := false
	for _, name := range strings.Split(*brokers, ",") {
		kind := adapters.Kind(strings.TrimSpace(name))
		count := *n
		if count == 0 {
			count = 5000
			if kind == adapters.KindMemory {
				count = 20000
			}
		}
		if err := runBroker(kind, strings.Split(*variants, ","), count, *rounds, *timeout, *handlerRow); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", kind, err)
			failed = true
		}
	}
	if failed {
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}

func runBroker(kind adapters.Kind, variants []string, n, rounds int, timeout time.Duration, handlerRow bool) error {
	cfg, err := adapters.LoadConfig("")
	if err != nil {
		return err
	}
	cfg.Broker = kind
	// Without brokers, opt in to the embedded one.
	cfg.Kafka.Embedded = kind == adapters.KindKafka && len(cfg.Kafka.Brokers) == 0
	ctx := context.Background()
	b, err := adapters.Open(ctx, cfg, nil)
	if err != nil {
		return err
	}
	defer b.Close()
	fmt.Printf("%s (%s), %d messages per measurement, %d rounds\n", kind, b.Addr, n, rounds)

	runID := fmt.Sprintf("%d", time.Now().UnixNano()%1e9)
	rates := map[string][]float64{}
	ref := variants[0]
	for round := 1; round <= rounds; round++ {
		order := append([]string(nil), variants...)
		if round%2 == 0 {
			for i, j := 0, len(order)-1; i < j; i, j = i+1, j-1 {
				order[i], order[j] = order[j], order[i]
			}
		}
		for _, variant := range order {
			topic := fmt.Sprintf("bench_tp_%s_%d_%s", runID, round, strings.ReplaceAll(variant, "-", "_"))
			rate, err := measure(ctx, b, variant, topic, n, timeout, handlerRow)
			cleanup(ctx, b, topic)
			if err != nil {
				return fmt.Errorf("round %d %s: %w", round, variant, err)
			}
			rates[variant] = append(rates[variant], rate)
			fmt.Printf("  round %d %-16s %9.0f msgs/s\n", round, variant, rate)
		}
		for _, v := range variants[1:] {
			fmt.Printf("  round %d ratio %s/%s %.1f%%\n", round, v, ref, 100*rates[v][round-1]/rates[ref][round-1])
		}
	}
	fmt.Printf("%s median of %d rounds:", kind, rounds)
	for _, v := range variants {
		fmt.Printf(" %s %.0f msgs/s;", v, benchutil.Median(rates[v]))
	}
	fmt.Println()
	for _, v := range variants[1:] {
		ratios := make([]float64, len(rates[v]))
		for i := range ratios {
			ratios[i] = 100 * rates[v][i] / rates[ref][i]
		}
		fmt.Printf("%s ratio %s/%s: median of per-round ratios %.1f%% (", kind, v, ref, benchutil.Median(ratios))
		for i, r := range ratios {
			if i > 0 {
				fmt.Print(" ")
			}
			fmt.Printf("%.1f%%", r)
		}
		fmt.Printf("); ratio of medians %.1f%%\n", 100*benchutil.Median(rates[v])/benchutil.Median(rates[ref]))
	}
	fmt.Println()
	return nil
}

func measure(ctx context.Context, b *adapters.Broker, variant, topic string, n int, timeout time.Duration, handlerRow bool) (float64, error) {
	payload := []byte(`{"user_id":1,"msg":"Hello World"}`)
	const batch = 100
	for i := 0; i < n; i += batch {
		msgs := make([]*message.Message, 0, batch)
		for j := i; j < i+batch && j < n; j++ {
			m := message.NewMessage(watermill.NewUUID(), payload)
			m.Metadata.Set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
			msgs = append(msgs, m)
		}
		if err := b.Publisher.Publish(topic, msgs...); err != nil {
			return 0, fmt.Errorf("publish: %w", err)
		}
	}

	// A PostgreSQL pool for the store and the handler's row, when needed.
	var pool *pgxpool.Pool
	pg := strings.HasPrefix(variant, "antidote-pgidem")
	if pg || handlerRow {
		var err error
		if pool, err = adapters.OpenPostgresPool(ctx, b.Config); err != nil {
			return 0, fmt.Errorf("postgres pool: %w", err)
		}
		defer pool.Close()
		defer func() {
			_, _ = pool.Exec(context.Background(), "DROP TABLE IF EXISTS "+rowsTable+", "+idemTable)
		}()
		if _, err := pool.Exec(ctx, "CREATE TABLE IF NOT EXISTS "+rowsTable+" (id TEXT PRIMARY KEY, at TIMESTAMPTZ NOT NULL DEFAULT now())"); err != nil {
			return 0, err
		}
	}

	var r *message.Router
	var err error
	switch variant {
	case "bare":
		r, err = message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, watermill.NopLogger{})
	case "antidote", "antidote-noidem", "antidote-pgidem", "antidote-pgidem-tx":
		cfg := router.Config{CrashLoopGuard: middleware.CrashLoopGuardConfig{Tracker: poison.MustNewMemoryDeliveryTracker(poison.MemoryDeliveryTrackerConfig{})},
			CloseTimeout: 10 * time.Second,
			DeadLetter:   middleware.DeadLetterConfig{Publisher: b.Publisher},
		}
		switch variant {
		case "antidote":
			cfg.Idempotency = &middleware.IdempotencyConfig{Store: idempotency.MustNewMemoryStore(idempotency.MemoryStoreConfig{})}
		case "antidote-pgidem", "antidote-pgidem-tx":
			store, serr := pgstore.NewIdempotencyStore(ctx, pgstore.IdempotencyStoreConfig{Pool: pool, Table: idemTable})
			if serr != nil {
				return 0, fmt.Errorf("postgres store: %w", serr)
			}
			defer store.Close()
			cfg.Idempotency = &middleware.IdempotencyConfig{Store: store, Transactional: variant == "antidote-pgidem-tx"}
		}
		r, err = router.New(cfg)
	default:
		return 0, fmt.Errorf("unknown variant %q (bare, antidote, antidote-noidem, antidote-pgidem, antidote-pgidem-tx)", variant)
	}
	if err != nil {
		return 0, err
	}
	var handled atomic.Int64
	var first, last atomic.Int64
	done := make(chan struct{})
	r.AddConsumerHandler("bench-handler", topic, benchutil.KeepOpen{Subscriber: b.Subscriber}, func(msg *message.Message) error {
		if tx, ok := pgstore.TxFromContext(msg.Context()); ok {
			if _, err := tx.Exec(msg.Context(), insertRow, msg.UUID); err != nil {
				return err
			}
		} else if handlerRow {
			if _, err := pool.Exec(msg.Context(), insertRow, msg.UUID); err != nil {
				return err
			}
		}
		now := time.Now().UnixNano()
		first.CompareAndSwap(0, now)
		k := handled.Add(1)
		if k == int64(n) {
			last.Store(now)
			close(done)
		}
		return nil
	})
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- r.Run(runCtx) }()

	select {
	case <-done:
	case err := <-runErr:
		return 0, fmt.Errorf("router stopped after %d of %d: %v", handled.Load(), n, err)
	case <-time.After(timeout):
		_ = r.Close()
		return 0, fmt.Errorf("timeout: handled %d of %d", handled.Load(), n)
	}
	checkRows := handlerRow || variant == "antidote-pgidem-tx"
	rows := func() int64 {
		var k int64
		_ = pool.QueryRow(ctx, "SELECT count(*) FROM "+rowsTable).Scan(&k)
		return k
	}
	if checkRows {
		// The last handler run may still be committing: Close cancels the
		// message contexts, and RunTx commits with the message's context,
		// so closing now would roll it back (and leave it for redelivery).
		for wait := time.Now().Add(5 * time.Second); rows() < int64(n) && time.Now().Before(wait); {
			time.Sleep(10 * time.Millisecond)
		}
	}
	if err := r.Close(); err != nil {
		return 0, fmt.Errorf("close: %w", err)
	}
	if got := handled.Load(); got != int64(n) {
		return 0, fmt.Errorf("handled %d, want %d (duplicates?)", got, n)
	}
	if checkRows {
		if k := rows(); k != int64(n) {
			return 0, fmt.Errorf("%d rows written, want %d", k, n)
		}
	}
	elapsed := time.Duration(last.Load() - first.Load())
	if elapsed <= 0 {
		return 0, errors.New("no time elapsed")
	}
	return float64(n-1) / elapsed.Seconds(), nil
}

// The tables of the PostgreSQL variants, dropped after each measurement.
const (
	rowsTable = "bench_throughput_rows"
	idemTable = "bench_idempotency"
	insertRow = "INSERT INTO " + rowsTable + " (id) VALUES ($1)"
)

// cleanup drops what a measurement left on the broker: the PostgreSQL queue
// table. (Kafka topics live in the embedded broker and go with it; RabbitMQ
// queues are empty and are left.)
func cleanup(ctx context.Context, b *adapters.Broker, topic string) {
	if b.Kind == adapters.KindPostgres {
		benchutil.Drop(ctx, b, topic)
	}
}
