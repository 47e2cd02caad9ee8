// Command outbox compares the throughput of outbox.Relay with Watermill's
// Forwarder (components/forwarder: messages enveloped into a watermill-sql
// PostgreSQL queue table in the business transaction, a router forwarding
// them to the broker) in the same run: rows per second from the start of
// the relay (or forwarder) to the last message received on the broker,
// every message counted. Rounds alternate which goes first.
//
//	go run ./bench/outbox                          # Kafka (embedded), 5,000 rows, 3 rounds
//	go run ./bench/outbox -broker amqp -n 2000 -rounds 2
//	go run ./bench/outbox -keys 1000               # rows spread over 1,000 ordering keys
//	go run ./bench/outbox -keys 1 -variants relay  # one hot key, the relay alone
//
// -keys 0 (the default) writes keyless rows, which the relay sends with no
// order among them; -keys N gives row i the key "key-<i mod N>" in its
// partition_key metadata (outbox.DefaultKeyMetadata, also the Kafka
// adapter's record key), so each key's rows are sent in order; -keys 1 is
// one hot key, all rows in one key's order. The Forwarder's messages carry
// the same metadata (its queue is read in order by one subscriber). The
// receiver counts, per key, a first copy arriving after a later row of its
// key ("out of order"); keyless rows are not counted.
//
// The outbox and the forwarder's queue live in the test database
// (ANTIDOTE_POSTGRES_URL); the broker comes from the same env as adapters.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"strconv"
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
	rounds := flag.Int("rounds", 3, "rounds (each measures every variant)")
	keys := flag.Int("keys", 0, "ordering keys the rows are spread over: 0 keyless, 1 one hot key")
	variants := flag.String("variants", "relay,forwarder", "what is measured, in the first round's order: relay, forwarder")
	timeout := flag.Duration("timeout", 10*time.Minute, "a measurement not done in this time fails the run")
	flag.Parse()
	if *keys < 0 {
		log.Fatalf("-keys %d: 0 (keyless) or more", *keys)
	}
	var order []string
	for _, v := range strings.Split(*variants, ",") {
		if v != "relay" && v != "forwarder" {
			log.Fatalf("-variants: %q is neither relay nor forwarder", v)
		}
		order = append(order, v)
	}
	w := workload{n: *n, keys: *keys, timeout: *timeout}
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

	fmt.Printf("%s, %d rows per measurement, %s\n", cfg.Broker, *n, w.keysName())
	rates := map[string][]float64{}
	for r := 0; r < *rounds; r++ {
		for i := range order {
			which := order[i]
			if r%2 == 1 {
				which = order[len(order)-1-i]
			}
			var res result
			if which == "relay" {
				res, err = relayRun(ctx, pool, out, w)
			} else {
				res, err = forwarderRun(ctx, pool, pgcfg, out, w)
			}
			if err != nil {
				log.Fatalf("%s: %v", which, err)
			}
			rates[which] = append(rates[which], res.rate)
			fmt.Printf("round %d %-10s %8.0f rows/s  %d out of order\n", r+1, which, res.rate, res.outOfOrder)
		}
	}
	fmt.Print("median:")
	for _, v := range order {
		fmt.Printf(" %s %.0f rows/s", v, median(rates[v]))
	}
	if len(rates["relay"]) > 0 && len(rates["forwarder"]) > 0 {
		fmt.Printf(", relay/forwarder %.2f", median(rates["relay"])/median(rates["forwarder"]))
	}
	fmt.Println()
}

// keyMetadata is where a row's ordering key goes: the outbox's default
// Config.KeyMetadata, which is also the Kafka adapter's record key.
var keyMetadata = outbox.DefaultKeyMetadata

// workload is what every measurement sends.
type workload struct {
	n, keys int
	timeout time.Duration
}

func (w workload) keysName() string {
	switch w.keys {
	case 0:
		return "keyless rows"
	case 1:
		return "one hot key"
	}
	return fmt.Sprintf("%d keys", w.keys)
}

// message j of the workload: its key is "key-<j mod keys>", none if keyless.
func (w workload) message(j int) *message.Message {
	m := message.NewMessage(watermill.NewUUID(), []byte(fmt.Sprintf(`{"order":%d}`, j)))
	if w.keys > 0 {
		m.Metadata.Set(keyMetadata, "key-"+strconv.Itoa(j%w.keys))
	}
	m.Metadata.Set("bench_seq", strconv.Itoa(j))
	return m
}

type result struct {
	rate       float64
	outOfOrder int
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

type received struct {
	end        time.Time
	outOfOrder int
}

// receive counts distinct messages on topic until want arrived; it returns
// the time of the last and how many first copies of a keyed message came
// after a later message of their key.
func receive(ctx context.Context, sub message.Subscriber, topic string, want int) (<-chan received, error) {
	ch, err := sub.Subscribe(ctx, topic)
	if err != nil {
		return nil, err
	}
	done := make(chan received, 1)
	go func() {
		seen := map[string]bool{}
		last := map[string]int{}
		bad := 0
		for m := range ch {
			if !seen[m.UUID] {
				seen[m.UUID] = true
				if k := m.Metadata.Get(keyMetadata); k != "" {
					seq, _ := strconv.Atoi(m.Metadata.Get("bench_seq"))
					if prev, ok := last[k]; ok && seq < prev {
						bad++
					} else {
						last[k] = seq
					}
				}
			}
			m.Ack()
			if len(seen) == want {
				done <- received{time.Now(), bad}
				return
			}
		}
	}()
	return done, nil
}

func relayRun(ctx context.Context, pool *pgxpool.Pool, out *adapters.Broker, w workload) (result, error) {
	n := w.n
	suffix := strings.ToLower(watermill.NewShortUUID())
	topic := "bench_outbox_" + suffix
	ob, err := outbox.New(outbox.Config{Table: "bench_outbox_" + suffix})
	if err != nil {
		return result{}, err
	}
	if err := ob.CreateTables(ctx, pool); err != nil {
		return result{}, err
	}
	defer func() {
		_, _ = pool.Exec(context.Background(), `DROP TABLE IF EXISTS bench_outbox_`+suffix+`, bench_outbox_`+suffix+`_dead`)
	}()
	for i := 0; i < n; i += 100 {
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			for j := i; j < min(i+100, n); j++ {
				if err := ob.Add(ctx, tx, topic, w.message(j)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return result{}, err
		}
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done, err := receive(rctx, out.Subscriber, topic, n)
	if err != nil {
		return result{}, err
	}
	relay, err := outbox.NewRelay(ctx, outbox.RelayConfig{Pool: pool, Outbox: ob, Publisher: out.Publisher, Service: "bench", PollInterval: 10 * time.Millisecond})
	if err != nil {
		return result{}, err
	}
	start := time.Now()
	go func() { _ = relay.Run(rctx) }()
	select {
	case got := <-done:
		return result{float64(n) / got.end.Sub(start).Seconds(), got.outOfOrder}, nil
	case <-time.After(w.timeout):
		return result{}, fmt.Errorf("not all %d rows arrived in %v", n, w.timeout)
	}
}

func forwarderRun(ctx context.Context, pool *pgxpool.Pool, pgcfg adapters.Config, out *adapters.Broker, w workload) (result, error) {
	n := w.n
	// The forwarder's router closes its subscriber when it closes: a queue
	// broker of its own per run.
	queue, err := adapters.Open(ctx, pgcfg, watermill.NopLogger{})
	if err != nil {
		return result{}, err
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
			batch = append(batch, w.message(j))
		}
		if err := pub.Publish(topic, batch...); err != nil {
			return result{}, err
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
		return result{}, err
	}
	fwd, err := forwarder.NewForwarder(queue.Subscriber, out.Publisher, watermill.NopLogger{}, forwarder.Config{ForwarderTopic: fwdTopic})
	if err != nil {
		return result{}, err
	}
	start := time.Now()
	go func() { _ = fwd.Run(rctx) }()
	defer fwd.Close()
	select {
	case got := <-done:
		return result{float64(n) / got.end.Sub(start).Seconds(), got.outOfOrder}, nil
	case <-time.After(w.timeout):
		return result{}, fmt.Errorf("not all %d messages arrived in %v", n, w.timeout)
	}
}
