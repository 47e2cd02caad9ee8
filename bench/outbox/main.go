// Command outbox compares the throughput of outbox.Relay with Watermill's
// Forwarder (components/forwarder: messages enveloped into a watermill-sql
// PostgreSQL queue table in the business transaction, a router forwarding
// them to the broker) in the same run: rows per second from the start of
// the relay (or forwarder) to the last message received on the broker,
// every message counted. Rounds alternate which goes first.
//
//	go run ./bench/outbox                          # Kafka (embedded), 5,000 rows, 3 rounds
//	go run ./bench/outbox -broker amqp -n 2000 -rounds 2
//
// The outbox and the forwarder's queue live in the test database
// (ANTIDOTE_POSTGRES_URL); the broker comes from the same env as adapters.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/components/forwarder"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/antidote-mq/antidote/adapters"
	_ "github.com/antidote-mq/antidote/devkafka"
	"github.com/antidote-mq/antidote/outbox"
)

func main() {
	broker := flag.String("broker", "kafka", "where the rows go: kafka, amqp or postgres")
	n := flag.Int("n", 5000, "rows per measurement")
	rounds := flag.Int("rounds", 3, "rounds (each measures both)")
	flag.Parse()
	ctx := context.Background()
	cfg, err := adapters.LoadConfig("")
	if err != nil {
		log.Fatal(err)
	}
	cfg.Broker = adapters.Kind(*broker)
	if cfg.Broker == adapters.KindKafka && len(cfg.Kafka.Brokers) == 0 {
		cfg.Kafka.Embedded = true
	}
	out, err := adapters.Open(ctx, cfg, watermill.NopLogger{})
	if err != nil {
		log.Fatal(err)
	}
	defer out.Close()
	pgcfg := out.Config
	pgcfg.Broker = adapters.KindPostgres
	pgcfg.Postgres.PollInterval = 10 * time.Millisecond
	pool, err := pgxpool.New(ctx, out.Config.Postgres.URL)
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()

	fmt.Printf("%s, %d rows per measurement\n", cfg.Broker, *n)
	var relayRates, fwdRates []float64
	for r := 0; r < *rounds; r++ {
		order := []string{"relay", "forwarder"}
		if r%2 == 1 {
			order = []string{"forwarder", "relay"}
		}
		for _, which := range order {
			var rate float64
			if which == "relay" {
				rate, err = relayRun(ctx, pool, out, *n)
				relayRates = append(relayRates, rate)
			} else {
				rate, err = forwarderRun(ctx, pool, pgcfg, out, *n)
				fwdRates = append(fwdRates, rate)
			}
			if err != nil {
				log.Fatalf("%s: %v", which, err)
			}
			fmt.Printf("round %d %-10s %8.0f rows/s\n", r+1, which, rate)
		}
	}
	fmt.Printf("median: relay %.0f rows/s, forwarder %.0f rows/s, ratio %.2f\n", median(relayRates), median(fwdRates), median(relayRates)/median(fwdRates))
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	return s[len(s)/2]
}

// receive counts distinct messages on topic until want arrived; it returns
// the time of the last.
func receive(ctx context.Context, sub message.Subscriber, topic string, want int) (<-chan time.Time, error) {
	ch, err := sub.Subscribe(ctx, topic)
	if err != nil {
		return nil, err
	}
	done := make(chan time.Time, 1)
	go func() {
		seen := map[string]bool{}
		for m := range ch {
			seen[m.UUID] = true
			m.Ack()
			if len(seen) == want {
				done <- time.Now()
				return
			}
		}
	}()
	return done, nil
}

func relayRun(ctx context.Context, pool *pgxpool.Pool, out *adapters.Broker, n int) (float64, error) {
	suffix := strings.ToLower(watermill.NewShortUUID())
	topic := "bench_outbox_" + suffix
	ob, err := outbox.New(outbox.Config{Table: "bench_outbox_" + suffix})
	if err != nil {
		return 0, err
	}
	if err := ob.CreateTables(ctx, pool); err != nil {
		return 0, err
	}
	defer func() {
		_, _ = pool.Exec(context.Background(), `DROP TABLE IF EXISTS bench_outbox_`+suffix+`, bench_outbox_`+suffix+`_dead`)
	}()
	for i := 0; i < n; i += 100 {
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			for j := i; j < min(i+100, n); j++ {
				if err := ob.Add(ctx, tx, topic, message.NewMessage(watermill.NewUUID(), []byte(fmt.Sprintf(`{"order":%d}`, j)))); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return 0, err
		}
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done, err := receive(rctx, out.Subscriber, topic, n)
	if err != nil {
		return 0, err
	}
	relay, err := outbox.NewRelay(ctx, outbox.RelayConfig{Pool: pool, Outbox: ob, Publisher: out.Publisher, Service: "bench", PollInterval: 10 * time.Millisecond})
	if err != nil {
		return 0, err
	}
	start := time.Now()
	go func() { _ = relay.Run(rctx) }()
	select {
	case end := <-done:
		return float64(n) / end.Sub(start).Seconds(), nil
	case <-time.After(10 * time.Minute):
		return 0, fmt.Errorf("not all %d rows arrived in 10 minutes", n)
	}
}

func forwarderRun(ctx context.Context, pool *pgxpool.Pool, pgcfg adapters.Config, out *adapters.Broker, n int) (float64, error) {
	// The forwarder's router closes its subscriber when it closes: a queue
	// broker of its own per run.
	queue, err := adapters.Open(ctx, pgcfg, watermill.NopLogger{})
	if err != nil {
		return 0, err
	}
	defer queue.Close()
	suffix := strings.ToLower(watermill.NewShortUUID())
	topic := "bench_fwd_" + suffix
	fwdTopic := "bench_fwd_queue_" + suffix
	pub := forwarder.NewPublisher(queue.Publisher, forwarder.PublisherConfig{ForwarderTopic: fwdTopic})
	var sent atomic.Int64
	for i := 0; i < n; i += 100 {
		var batch []*message.Message
		for j := i; j < min(i+100, n); j++ {
			batch = append(batch, message.NewMessage(watermill.NewUUID(), []byte(fmt.Sprintf(`{"order":%d}`, j))))
		}
		if err := pub.Publish(topic, batch...); err != nil {
			return 0, err
		}
		sent.Add(int64(len(batch)))
	}
	defer func() {
		_, _ = pool.Exec(context.Background(), `DROP TABLE IF EXISTS `+adapters.PostgresTable(queue.Config.Postgres, fwdTopic))
	}()
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done, err := receive(rctx, out.Subscriber, topic, n)
	if err != nil {
		return 0, err
	}
	fwd, err := forwarder.NewForwarder(queue.Subscriber, out.Publisher, watermill.NopLogger{}, forwarder.Config{ForwarderTopic: fwdTopic})
	if err != nil {
		return 0, err
	}
	start := time.Now()
	go func() { _ = fwd.Run(rctx) }()
	defer fwd.Close()
	select {
	case end := <-done:
		return float64(n) / end.Sub(start).Seconds(), nil
	case <-time.After(10 * time.Minute):
		return 0, fmt.Errorf("not all %d messages arrived in 10 minutes", n)
	}
}
