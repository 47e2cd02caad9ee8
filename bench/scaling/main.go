// Command scaling measures consume throughput with 1, 2 and 4 consumers in
// one consumer group (issue 8, part 6), bare Watermill against router.New,
// in the same run: on Kafka (the embedded broker, 4 partitions: the group
// splits them) and on RabbitMQ (competing consumers on one queue, prefetch
// 10 each).
//
// Method. Each consumer is its own broker connection (adapters.Open: its
// own Sarama client and group member, or its own AMQP connection) and its
// own router in this process, as separate processes would be: bare is
// message.NewRouter with no middleware; antidote is router.New with the
// consumer's publisher as DLQ publisher and its own memory idempotency
// store (a process's memory store sees only its own messages). For each
// measurement the consumers start first on a fresh topic (Kafka: a fresh
// consumer group) and probe messages are published until every consumer
// has handled one, so every member has joined and partitions are assigned
// before timing starts. Then N messages (-n) are published (4 publishing
// goroutines, batches of 100) while the handlers wait at a gate: the first
// message each consumer (on Kafka, each partition) gets waits there, the
// rest wait in the broker. Once all are published the gate opens, and the
// throughput is timed from the gate's opening to the last message handled,
// so neither the publisher's speed nor the group's joins are measured.
//
// The handler waits -work per message (default a 1ms sleep: a handler
// waiting on one database write; -sleep=false makes it a busy loop, which
// on a 2-core machine cannot scale past 2). Watermill handles the messages
// of one subscription one at a time, on Kafka one at a time per partition:
// so on Kafka one consumer already works on 4 partitions at once and more
// consumers only spread them (parallelism is bounded by the partitions),
// while on RabbitMQ each competing consumer adds one message in flight.
// Rounds alternate the order of the variants; per consumer count the
// speed-up against one consumer and antidote/bare are reported as medians
// over rounds.
//
//	go run ./bench/scaling
//	go run ./bench/scaling -brokers amqp -consumers 1,2,4,8 -n 3000 -rounds 1
//	go run ./bench/scaling -brokers kafka -partitions 8 -consumers 1,2,4,8
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/bench/internal/benchutil"
	"github.com/antidote-mq/antidote/devkafka"
	"github.com/antidote-mq/antidote/idempotency"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/poison"
	"github.com/antidote-mq/antidote/router"
)

type params struct {
	partitions int
	n          int
	work       time.Duration
	sleep      bool
	rounds     int
	variants   []string
	counts     []int
	timeout    time.Duration
	runID      string
	seq        atomic.Int64
}

func main() {
	brokers := flag.String("brokers", "kafka,amqp", "comma-separated brokers: kafka (embedded unless ANTIDOTE_KAFKA_BROKERS is set), amqp")
	partitions := flag.Int("partitions", 4, "Kafka: partitions of the topics")
	counts := flag.String("consumers", "1,2,4", "consumer counts to compare")
	n := flag.Int("n", 5000, "messages per measurement")
	work := flag.Duration("work", time.Millisecond, "handler cost per message (a sleep, or a busy loop with -sleep=false)")
	sleep := flag.Bool("sleep", true, "make -work a sleep (I/O wait); false: a busy loop (CPU)")
	rounds := flag.Int("rounds", 2, "measurements per variant and count; odd rounds in -variants order, even rounds reversed")
	variants := flag.String("variants", "bare,antidote", "variants: bare, antidote")
	timeout := flag.Duration("timeout", 2*time.Minute, "give up on one measurement after this long")
	flag.Parse()
	p := &params{partitions: *partitions, n: *n, work: *work, sleep: *sleep, rounds: *rounds, timeout: *timeout, runID: fmt.Sprintf("%d", time.Now().UnixNano()%1e9)}
	for _, v := range strings.Split(*variants, ",") {
		v = strings.TrimSpace(v)
		if v != "bare" && v != "antidote" {
			fmt.Fprintf(os.Stderr, "unknown variant %q (bare, antidote)\n", v)
			os.Exit(2)
		}
		p.variants = append(p.variants, v)
	}
	for _, c := range strings.Split(*counts, ",") {
		k, err := strconv.Atoi(strings.TrimSpace(c))
		if err != nil || k < 1 {
			fmt.Fprintf(os.Stderr, "bad consumer count %q\n", c)
			os.Exit(2)
		}
		p.counts = append(p.counts, k)
	}
	kindOfWork := "sleep"
	if !p.sleep {
		kindOfWork = "busy loop"
	}
	fmt.Printf("scaling: %d messages per measurement, handler %s (%s), consumers %v, %d rounds\n", p.n, p.work, kindOfWork, p.counts, p.rounds)
	failed := false
	for _, name := range strings.Split(*brokers, ",") {
		if err := runBroker(adapters.Kind(strings.TrimSpace(name)), p); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
			failed = true
		}
	}
	if failed {
		os.Exit(1)
	}
}

func runBroker(kind adapters.Kind, p *params) error {
	cfg, err := adapters.LoadConfig("")
	if err != nil {
		return err
	}
	cfg.Broker = kind
	switch kind {
	case adapters.KindKafka:
		if len(cfg.Kafka.Brokers) == 0 {
			// One embedded broker shared by every consumer's client.
			k, err := devkafka.Start(devkafka.Config{Partitions: p.partitions})
			if err != nil {
				return err
			}
			defer k.Close()
			cfg.Kafka.Brokers = k.Addrs()
		}
		cfg.Kafka.Partitions = p.partitions
	case adapters.KindAMQP:
	default:
		return fmt.Errorf("broker %q: only kafka and amqp have consumer groups here", kind)
	}
	ctx := context.Background()
	main, err := adapters.Open(ctx, cfg, nil)
	if err != nil {
		return err
	}
	defer main.Close()
	if kind == adapters.KindKafka {
		fmt.Printf("\n%s (%s), %d partitions\n", kind, main.Addr, p.partitions)
	} else {
		fmt.Printf("\n%s (%s)\n", kind, main.Addr)
	}

	rates := map[string]map[int][]float64{}
	for _, v := range p.variants {
		rates[v] = map[int][]float64{}
	}
	for round := 1; round <= p.rounds; round++ {
		order := append([]string(nil), p.variants...)
		if round%2 == 0 {
			for i, j := 0, len(order)-1; i < j; i, j = i+1, j-1 {
				order[i], order[j] = order[j], order[i]
			}
		}
		for _, c := range p.counts {
			for _, v := range order {
				m, err := measure(ctx, cfg, main, v, c, p)
				if err != nil {
					return fmt.Errorf("round %d %s × %d: %w", round, v, c, err)
				}
				rates[v][c] = append(rates[v][c], m.rate)
				fmt.Printf("  round %d %-9s %d consumer(s) %8.0f msgs/s   per consumer %v   (published at %.0f msgs/s before the gate opened)\n",
					round, v, c, m.rate, m.perConsumer, m.pubRate)
			}
		}
	}
	fmt.Printf("%s summary (median of %d rounds):\n", kind, p.rounds)
	fmt.Printf("| consumers |")
	for _, v := range p.variants {
		fmt.Printf(" %s msgs/s | %s speed-up |", v, v)
	}
	if len(p.variants) == 2 {
		fmt.Printf(" %s/%s |", p.variants[1], p.variants[0])
	}
	fmt.Println()
	for _, c := range p.counts {
		fmt.Printf("| %d |", c)
		for _, v := range p.variants {
			var ups []float64
			for i, r := range rates[v][c] {
				ups = append(ups, r/rates[v][p.counts[0]][i])
			}
			fmt.Printf(" %.0f | %.2f× |", benchutil.Median(rates[v][c]), benchutil.Median(ups))
		}
		if len(p.variants) == 2 {
			var ratios []float64
			for i := range rates[p.variants[0]][c] {
				ratios = append(ratios, 100*rates[p.variants[1]][c][i]/rates[p.variants[0]][c][i])
			}
			fmt.Printf(" %.1f%% |", benchutil.Median(ratios))
		}
		fmt.Println()
	}
	return nil
}

type measurement struct {
	rate, pubRate float64
	perConsumer   []int64
}

func measure(ctx context.Context, cfg adapters.Config, pub *adapters.Broker, variant string, consumers int, p *params) (measurement, error) {
	id := p.seq.Add(1)
	topic := fmt.Sprintf("bench_scale_%s_%d_%s_%d", p.runID, id, variant, consumers)
	cfg.Kafka.ConsumerGroup = fmt.Sprintf("bench-scaling-%s-%d", p.runID, id)
	defer cleanup(pub, topic)

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var handled, last atomic.Int64
	gate := make(chan struct{})
	perConsumer := make([]atomic.Int64, consumers)
	probed := make([]atomic.Bool, consumers)
	done := make(chan struct{})
	var routers []*message.Router
	runErr := make(chan error, consumers)
	for i := 0; i < consumers; i++ {
		b, err := adapters.Open(ctx, cfg, nil)
		if err != nil {
			return measurement{}, err
		}
		defer b.Close()
		var r *message.Router
		if variant == "bare" {
			r, err = message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, watermill.NopLogger{})
		} else {
			r, err = router.New(router.Config{CrashLoopGuard: middleware.CrashLoopGuardConfig{Tracker: poison.MustNewMemoryDeliveryTracker(poison.MemoryDeliveryTrackerConfig{})},
				CloseTimeout: 10 * time.Second,
				DeadLetter:   middleware.DeadLetterConfig{Publisher: b.Publisher},
				Idempotency:  &middleware.IdempotencyConfig{Store: idempotency.MustNewMemoryStore(idempotency.MemoryStoreConfig{})},
			})
		}
		if err != nil {
			return measurement{}, err
		}
		i := i
		r.AddConsumerHandler("bench-scaling", topic, benchutil.KeepOpen{Subscriber: b.Subscriber}, func(msg *message.Message) error {
			if msg.Metadata.Get("bench.probe") == "1" {
				probed[i].Store(true)
				return nil
			}
			<-gate
			benchutil.Work(p.work, p.sleep)
			now := time.Now().UnixNano()
			perConsumer[i].Add(1)
			if handled.Add(1) == int64(p.n) {
				last.Store(now)
				close(done)
			}
			return nil
		})
		routers = append(routers, r)
		go func() { runErr <- r.Run(runCtx) }()
	}
	defer func() {
		for _, r := range routers {
			_ = r.Close()
		}
	}()

	// Probes until every consumer has one: all members joined, partitions
	// assigned.
	deadline := time.Now().Add(p.timeout)
	for {
		all := true
		for i := range probed {
			all = all && probed[i].Load()
		}
		if all {
			break
		}
		if time.Now().After(deadline) {
			return measurement{}, fmt.Errorf("not every consumer got a probe within %s", p.timeout)
		}
		var probes []*message.Message
		for j := 0; j < 4*consumers; j++ {
			m := message.NewMessage(watermill.NewUUID(), []byte(`{}`))
			m.Metadata.Set("bench.probe", "1")
			m.Metadata.Set("partition_key", watermill.NewShortUUID())
			probes = append(probes, m)
		}
		if err := pub.Publisher.Publish(topic, probes...); err != nil {
			return measurement{}, fmt.Errorf("publish probes: %w", err)
		}
		select {
		case err := <-runErr:
			return measurement{}, fmt.Errorf("router stopped: %v", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
	time.Sleep(300 * time.Millisecond) // the last probes drain

	payload := []byte(`{"user_id":1,"msg":"Hello World"}`)
	pubStart := time.Now()
	const batch, publishers = 100, 4
	batches := make(chan int, p.n/batch+1)
	for i := 0; i < p.n; i += batch {
		batches <- i
	}
	close(batches)
	pubErr := make(chan error, publishers)
	for w := 0; w < publishers; w++ {
		go func() {
			for i := range batches {
				msgs := make([]*message.Message, 0, batch)
				for j := i; j < i+batch && j < p.n; j++ {
					m := message.NewMessage(watermill.NewUUID(), payload)
					m.Metadata.Set("partition_key", watermill.NewShortUUID())
					msgs = append(msgs, m)
				}
				if err := pub.Publisher.Publish(topic, msgs...); err != nil {
					pubErr <- fmt.Errorf("publish: %w", err)
					return
				}
			}
			pubErr <- nil
		}()
	}
	for w := 0; w < publishers; w++ {
		if err := <-pubErr; err != nil {
			close(gate)
			return measurement{}, err
		}
	}
	pubRate := float64(p.n) / time.Since(pubStart).Seconds()
	start := time.Now()
	close(gate)

	select {
	case <-done:
	case err := <-runErr:
		return measurement{}, fmt.Errorf("router stopped after %d of %d: %v", handled.Load(), p.n, err)
	case <-time.After(p.timeout):
		return measurement{}, fmt.Errorf("timeout: handled %d of %d", handled.Load(), p.n)
	}
	m := measurement{pubRate: pubRate}
	if el := time.Duration(last.Load() - start.UnixNano()); el > 0 {
		m.rate = float64(p.n) / el.Seconds()
	}
	for i := range perConsumer {
		m.perConsumer = append(m.perConsumer, perConsumer[i].Load())
	}
	return m, nil
}

// cleanup deletes a measurement's RabbitMQ queues (Kafka's topics go with
// the embedded broker).
func cleanup(b *adapters.Broker, topic string) {
	if b.Kind == adapters.KindAMQP {
		benchutil.Drop(context.Background(), b, topic, topic+".dlq")
	}
}
