// Command poison measures what 0.1% poison messages cost the healthy ones
// (issue 8, part 3), on each broker adapters.Open supports, comparing in the
// same run:
//
//   - clean: router.New (Antidote's default stack, a memory idempotency
//     store, the broker's publisher as DLQ publisher), no poison at all. The
//     reference of every share.
//   - blocking: the same router, with poison. router.New's default: the
//     failing message is retried in place (Retry), holding its partition or
//     queue during the backoff, then dead-lettered.
//   - blocking-hc: blocking with a Breaker.HealthCheck that answers (the
//     handler's dependencies are up, as a pool.Ping would say): a message
//     that fails again after one hold is dead-lettered without waiting for
//     others to succeed.
//   - nonblocking: the same router with DelayedRetry on (the broker's
//     Scheduler; router.AddRetryRelays on Kafka). Retry makes one attempt
//     only and the retries go through the delayed stages instead, so the
//     attempts and delays are the same as blocking's but nothing waits in
//     the handler.
//   - watermill: a bare Watermill router with Watermill's own
//     middleware.PoisonQueue (outermost, topic "<topic>.poison") and
//     middleware.Retry with the same attempts and delays (MaxRetries =
//     attempts-1, InitialInterval, Multiplier, jitter 0.5 as Antidote's).
//   - watermill-clean: the bare router without poison, the reference a
//     Watermill user would compare watermill with.
//
// A poison message fails on every attempt with a plain error, which both
// Antidote's classifier (unknown) and Watermill's Retry treat as retryable,
// so the retry delays apply in every poison variant: with the defaults, 3
// attempts with about 100ms and 200ms (jitter ±50%) between them; in
// nonblocking, delayed stages of exactly 100ms and 200ms. Every message of a
// variant with poison whose sequence number is 500 modulo 1000 is poison
// (0.1%).
//
// Each measurement has two phases on one fresh topic and one router:
//
//  1. Throughput: the router starts (with the trickle below), and once the
//     trickle reaches the handler and -warmup (1s) has passed, so that every
//     subscription has joined (on Kafka the retry relays join the same
//     consumer group, which rebalances it), N messages (-n) are published
//     while the handler holds them at a gate. Healthy messages per second
//     are timed from the gate's opening to the last healthy one handled.
//     The phase ends once every poison message of it has been
//     dead-lettered (counted on the DLQ publisher).
//  2. Latency: a producer publishes at a fixed rate (-rate, in batches every
//     10ms, each message stamped with its publish time in metadata) for
//     -duration while the router consumes; the end-to-end latency of a
//     healthy message is from that stamp to the start of its handler run.
//     Reported as p50 and p99 over the healthy messages of the phase.
//
// Throughout a measurement a trickle of healthy messages (-keepalive, 100/s,
// excluded from every figure) keeps flowing, as in a live stream. It
// matters for blocking: router.New's breaker does not dead-letter a message
// that still fails transiently after Retry at once; it holds it (nacks it
// after a 1s backoff) and dead-letters it only once it has been held twice
// and other messages succeeded since its first hold, and with no other
// traffic it holds it up to MaxHoldTime (1m). Each redelivery runs Retry's
// attempts again, so in blocking a poison message runs 9 times and holds its
// partition or queue for about 3 × 300ms + 2 × 1s, not 300ms (blocking-hc:
// 6 runs, 2 × 300ms + 1s). Without the trickle the end of a backlog has no
// other traffic and the measurement would wait the minute.
//
// The handler costs -work per healthy message (default 100µs: a small but
// realistic handler that waits on I/O, e.g. one fast cache write; 0 makes
// the consumer CPU-bound, where the router's own overhead dominates).
// Rounds alternate the order of the variants (odd rounds in -variants
// order, even rounds reversed); shares are taken per round against that
// round's clean run and the median over rounds is reported.
//
// Watermill's router handles the messages of one subscription one at a
// time (on Kafka one at a time per partition, 4 partitions here), so a
// message retried in place holds everything behind it: that is what
// blocking vs nonblocking shows. The memory broker (gochannel, persistent)
// is the exception: it hands every stored message to the router in its own
// goroutine, so nothing queues behind a retried message there and its
// figures show only the stack's cost. The target: nonblocking keeps at
// least 95% of clean's healthy throughput and its p99 is not raised by the
// retry delays.
//
//	go run ./bench/poison                                       # all brokers, defaults
//	go run ./bench/poison -brokers memory,kafka -n 3000 -duration 3s -rounds 1
//
// Broker addresses come from the same env as adapters (LoadConfig);
// Kafka without ANTIDOTE_KAFKA_BROKERS uses the embedded broker (in this
// process).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	wmiddleware "github.com/ThreeDotsLabs/watermill/message/router/middleware"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/bench/internal/benchutil"
	"github.com/antidote-mq/antidote/devkafka"
	"github.com/antidote-mq/antidote/idempotency"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/poison"
	"github.com/antidote-mq/antidote/router"
)

const (
	metaSeq    = "bench.seq"
	metaPhase  = "bench.phase"
	metaSentAt = "bench.sent_at"
	metaPoison = "bench.poison"
)

var errPoison = errors.New("bench: this message cannot be processed")

type params struct {
	warmup    time.Duration
	keepalive int
	n         int
	rate      int
	duration  time.Duration
	work      time.Duration
	sleep     bool
	attempts  int
	delay     time.Duration
	mult      float64
	timeout   time.Duration
	variants  []string
	rounds    int
	runID     string
}

// stages are nonblocking's delayed-retry stages: the waits blocking's
// Retry makes between its attempts (without jitter).
func (p params) stages() []time.Duration {
	var stages []time.Duration
	for i, d := 1, p.delay; i < p.attempts; i, d = i+1, time.Duration(float64(d)*p.mult) {
		stages = append(stages, d)
	}
	return stages
}

func main() {
	brokers := flag.String("brokers", "memory,kafka,amqp,postgres", "comma-separated brokers to run")
	n := flag.Int("n", 5000, "messages in the throughput phase (poison: every 1000th, at sequence 500 mod 1000)")
	rate := flag.Int("rate", 500, "messages/s published in the latency phase (must be below every variant's capacity)")
	duration := flag.Duration("duration", 6*time.Second, "length of the latency phase")
	work := flag.Duration("work", 100*time.Microsecond, "handler cost per healthy message (a busy loop, or a sleep with -sleep); 0 for a no-op handler")
	sleep := flag.Bool("sleep", false, "make -work a sleep (I/O wait) instead of a busy loop (CPU); sub-millisecond sleeps last ~1ms on Linux")
	attempts := flag.Int("attempts", 3, "attempts per poison message, the same in every poison variant")
	delay := flag.Duration("delay", 100*time.Millisecond, "wait before the second attempt")
	mult := flag.Float64("multiplier", 2, "growth of the wait per attempt")
	rounds := flag.Int("rounds", 2, "measurements per variant; odd rounds in -variants order, even rounds reversed")
	variants := flag.String("variants", "clean,blocking,blocking-hc,nonblocking,watermill,watermill-clean", "variants to compare; clean is the reference")
	timeout := flag.Duration("timeout", time.Minute, "give up on one phase after this long (the measurement is reported as stalled and the run goes on)")
	warmup := flag.Duration("warmup", time.Second, "after the trickle reaches the handler, wait this long before the backlog (other subscriptions join)")
	keepalive := flag.Int("keepalive", 100, "messages/s of the healthy trickle that runs during every measurement (not counted)")
	flag.Parse()
	if *attempts < 2 {
		fmt.Fprintln(os.Stderr, "-attempts must be 2 or more (the poison must be retried)")
		os.Exit(2)
	}
	p := params{
		n: *n, rate: *rate, duration: *duration, work: *work, sleep: *sleep, attempts: *attempts, delay: *delay, mult: *mult,
		timeout: *timeout, keepalive: *keepalive, warmup: *warmup, rounds: *rounds, runID: fmt.Sprintf("%d", time.Now().UnixNano()%1e9),
	}
	for _, v := range strings.Split(*variants, ",") {
		v = strings.TrimSpace(v)
		switch v {
		case "clean", "blocking", "blocking-hc", "nonblocking", "watermill", "watermill-clean":
		default:
			fmt.Fprintf(os.Stderr, "unknown variant %q (clean, blocking, blocking-hc, nonblocking, watermill, watermill-clean)\n", v)
			os.Exit(2)
		}
		p.variants = append(p.variants, v)
	}
	kindOfWork := "busy loop"
	if p.sleep {
		kindOfWork = "sleep"
	}
	fmt.Printf("poison impact: %d messages + %d/s for %s per measurement, 0.1%% poison, handler %s (%s), %d attempts, delays %s ×%g\n",
		p.n, p.rate, p.duration, p.work, kindOfWork, p.attempts, p.delay, p.mult)
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

type result struct {
	rate     float64 // healthy msgs/s, throughput phase
	p50, p99 time.Duration
	dups     int64
	pubRate  float64 // achieved in the latency phase
	// healthyLettered counts healthy messages that reached the DLQ.
	healthyLettered int64
	whyLettered     string
	// runsPerPoison is how often the handler ran on each poison message.
	runsPerPoison float64
}

func runBroker(kind adapters.Kind, p params) error {
	cfg, err := adapters.LoadConfig("")
	if err != nil {
		return err
	}
	cfg.Broker = kind
	ctx := context.Background()
	if kind == adapters.KindKafka && len(cfg.Kafka.Brokers) == 0 {
		// One embedded broker for the run; each measurement opens its own
		// client in a consumer group of its own (below), so one
		// measurement's members leaving do not rebalance the next one's.
		k, err := devkafka.Start(devkafka.Config{Partitions: cfg.Kafka.Partitions})
		if err != nil {
			return err
		}
		defer k.Close()
		cfg.Kafka.Brokers = k.Addrs()
	}
	b, err := adapters.Open(ctx, cfg, nil)
	if err != nil {
		return err
	}
	defer b.Close()
	fmt.Printf("\n%s (%s), %d rounds\n", kind, b.Addr, p.rounds)

	// res[variant][round-1]; nil when that measurement stalled.
	res := map[string][]*result{}
	for round := 1; round <= p.rounds; round++ {
		order := append([]string(nil), p.variants...)
		if round%2 == 0 {
			for i, j := 0, len(order)-1; i < j; i, j = i+1, j-1 {
				order[i], order[j] = order[j], order[i]
			}
		}
		for _, v := range order {
			topic := fmt.Sprintf("bench_poison_%s_%d_%s", p.runID, round, strings.ReplaceAll(v, "-", "_"))
			mb := b
			if kind == adapters.KindKafka {
				mcfg := cfg
				mcfg.Kafka.ConsumerGroup = "bench-poison-" + topic
				if mb, err = adapters.Open(ctx, mcfg, nil); err != nil {
					return err
				}
			}
			r, err := measure(ctx, mb, v, topic, p)
			if mb != b {
				_ = mb.Close()
			}
			cleanup(ctx, b, topic, p.stages())
			var st stalled
			if errors.As(err, &st) {
				res[v] = append(res[v], nil)
				fmt.Printf("  round %d %-16s STALLED: %v\n", round, v, err)
				continue
			}
			if err != nil {
				return fmt.Errorf("round %d %s: %w", round, v, err)
			}
			res[v] = append(res[v], &r)
			fmt.Printf("  round %d %-16s %8.0f healthy msgs/s   latency p50 %8s  p99 %8s", round, v, r.rate, r.p50.Round(10*time.Microsecond), r.p99.Round(10*time.Microsecond))
			if r.runsPerPoison > 0 {
				fmt.Printf("   %.1f runs per poison message", r.runsPerPoison)
			}
			if r.pubRate < 0.95*float64(p.rate) {
				fmt.Printf("   (producer reached only %.0f msgs/s: latency includes its lag)", r.pubRate)
			}
			if r.dups > 0 {
				fmt.Printf("   (%d redelivered healthy messages)", r.dups)
			}
			if r.healthyLettered > 0 {
				fmt.Printf("   (%d HEALTHY messages dead-lettered; first: %s)", r.healthyLettered, r.whyLettered)
			}
			fmt.Println()
		}
	}
	// Summary: one line per variant; shares per round against the round's
	// reference, over the rounds where both finished.
	sharesOf := func(v, ref string) []float64 {
		var out []float64
		for i, r := range res[v] {
			if i < len(res[ref]) && r != nil && res[ref][i] != nil {
				out = append(out, 100*r.rate/res[ref][i].rate)
			}
		}
		return out
	}
	fmt.Printf("%s summary (median of %d rounds; share = healthy throughput / clean's in the same round):\n", kind, p.rounds)
	fmt.Printf("| %-16s | %10s | %8s | %10s | %10s | %-22s | %s |\n", "variant", "msgs/s", "share", "p50", "p99", "runs per poison message", "per-round shares")
	for _, v := range p.variants {
		var rates, p50s, p99s, runs []float64
		stalls := 0
		for _, r := range res[v] {
			if r == nil {
				stalls++
				continue
			}
			rates = append(rates, r.rate)
			p50s = append(p50s, float64(r.p50))
			p99s = append(p99s, float64(r.p99))
			runs = append(runs, r.runsPerPoison)
		}
		share, per := "", ""
		if _, ok := res["clean"]; ok {
			shares := sharesOf(v, "clean")
			for _, x := range shares {
				per += fmt.Sprintf(" %.1f%%", x)
			}
			if len(shares) > 0 {
				share = fmt.Sprintf("%.1f%%", benchutil.Median(shares))
			}
		}
		if stalls > 0 {
			per += fmt.Sprintf(" (stalled in %d of %d rounds)", stalls, len(res[v]))
		}
		if len(rates) == 0 {
			fmt.Printf("| %-16s | %10s | %8s | %10s | %10s | %-22s |%s |\n", v, "stalled", "", "", "", "", per)
			continue
		}
		fmt.Printf("| %-16s | %10.0f | %8s | %10s | %10s | %-22.1f |%s |\n", v, benchutil.Median(rates), share,
			time.Duration(benchutil.Median(p50s)).Round(10*time.Microsecond), time.Duration(benchutil.Median(p99s)).Round(10*time.Microsecond), benchutil.Median(runs), per)
	}
	if _, ok := res["watermill"]; ok {
		if _, ok := res["watermill-clean"]; ok {
			if shares := sharesOf("watermill", "watermill-clean"); len(shares) > 0 {
				fmt.Printf("watermill / watermill-clean: %.1f%% (median of rounds)\n", benchutil.Median(shares))
			}
		}
	}
	return nil
}

// stalled is a measurement that did not finish within -timeout: reported
// as such, and the run goes on.
type stalled struct{ error }

// countingPublisher counts the messages published through it: the dead
// letters (Antidote's DLQ, Watermill's poison queue). Close does not close
// the broker's shared publisher.
type countingPublisher struct {
	message.Publisher
	n atomic.Int64
	// why is the reason given for the first healthy message dead-lettered.
	why atomic.Value
}

func (c *countingPublisher) Publish(topic string, msgs ...*message.Message) error {
	if err := c.Publisher.Publish(topic, msgs...); err != nil {
		return err
	}
	c.n.Add(int64(len(msgs)))
	for _, m := range msgs {
		if m.Metadata.Get(metaPoison) != "1" {
			why := m.Metadata.Get(wmiddleware.ReasonForPoisonedKey) + m.Metadata.Get(poison.KeyError)
			c.why.CompareAndSwap(nil, fmt.Sprintf("message %s (phase %s): %s", m.Metadata.Get(metaSeq), m.Metadata.Get(metaPhase), why))
		}
	}
	return nil
}

func (c *countingPublisher) Close() error { return nil }

func isPoison(seq int) bool { return seq%1000 == 500 }

func newMessage(seq int, phase string, withPoison bool) *message.Message {
	m := message.NewMessage(watermill.NewUUID(), []byte(`{"user_id":1,"msg":"Hello World"}`))
	m.Metadata.Set(metaSeq, strconv.Itoa(seq))
	m.Metadata.Set(metaPhase, phase)
	if withPoison && isPoison(seq) {
		m.Metadata.Set(metaPoison, "1")
	}
	return m
}

func measure(ctx context.Context, b *adapters.Broker, variant, topic string, p params) (result, error) {
	withPoison := variant != "clean" && variant != "watermill-clean"
	poisonIn := func(n int) int {
		if !withPoison {
			return 0
		}
		k := 0
		for i := 0; i < n; i++ {
			if isPoison(i) {
				k++
			}
		}
		return k
	}
	latN := int(float64(p.rate) * p.duration.Seconds())
	tPoison, lPoison := poisonIn(p.n), poisonIn(latN)
	tHealthy, lHealthy := p.n-tPoison, latN-lPoison

	// The trickle, from before the router starts to the end.
	var trickleSent atomic.Int64
	trickleDone := make(chan struct{})
	trickleCtx, stopTrickle := context.WithCancel(ctx)
	defer stopTrickle()
	if p.keepalive > 0 {
		go func() {
			defer close(trickleDone)
			t := time.NewTicker(time.Second / time.Duration(p.keepalive))
			defer t.Stop()
			for i := 0; ; i++ {
				select {
				case <-trickleCtx.Done():
					return
				case <-t.C:
				}
				if b.Publisher.Publish(topic, newMessage(i, "k", false)) == nil {
					trickleSent.Add(1)
				}
			}
		}()
	}

	dlq := &countingPublisher{Publisher: b.Publisher}
	sub := benchutil.KeepOpen{Subscriber: b.Subscriber}
	var r *message.Router
	var err error
	stages := p.stages()
	retry := middleware.RetryConfig{MaxAttempts: p.attempts, InitialInterval: p.delay, Multiplier: p.mult}
	switch variant {
	case "clean", "blocking", "blocking-hc", "nonblocking":
		cfg := router.Config{CrashLoopGuard: middleware.CrashLoopGuardConfig{Tracker: poison.MustNewMemoryDeliveryTracker(poison.MemoryDeliveryTrackerConfig{})},
			CloseTimeout: 10 * time.Second,
			DeadLetter:   middleware.DeadLetterConfig{Publisher: dlq},
			Retry:        retry,
		}
		cfg.Idempotency = &middleware.IdempotencyConfig{Store: idempotency.MustNewMemoryStore(idempotency.MemoryStoreConfig{})}
		if variant == "blocking-hc" {
			cfg.Breaker.HealthCheck = func(context.Context) error { return nil }
		}
		if variant == "nonblocking" {
			cfg.Retry.MaxAttempts = 1
			// The relays subscribe with a subscriber the router cannot close.
			cfg.DelayedRetry = &middleware.DelayedRetryConfig{Stages: stages, Scheduler: relaysVia{Scheduler: b.Scheduler(), sub: sub}}
		}
		r, err = router.New(cfg)
		if err == nil && variant == "nonblocking" {
			router.AddRetryRelays(r, cfg, topic)
		}
	case "watermill", "watermill-clean":
		r, err = message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, watermill.NopLogger{})
		if err == nil {
			var pq message.HandlerMiddleware
			if pq, err = wmiddleware.PoisonQueue(dlq, topic+".poison"); err == nil {
				r.AddMiddleware(pq, wmiddleware.Retry{
					MaxRetries:          p.attempts - 1,
					InitialInterval:     p.delay,
					MaxInterval:         10 * time.Second,
					Multiplier:          p.mult,
					RandomizationFactor: 0.5,
				}.Middleware)
			}
		}
	}
	if err != nil {
		return result{}, err
	}

	seen := make([]atomic.Bool, p.n)
	lseen := make([]atomic.Bool, latN)
	lat := make([]int64, latN)
	var tCount, lCount, dups, last, poisonRuns atomic.Int64
	tDone, lDone := make(chan struct{}), make(chan struct{})
	gate := make(chan struct{})
	var kCount atomic.Int64
	r.AddConsumerHandler("bench-poison", topic, sub, func(msg *message.Message) error {
		if msg.Metadata.Get(metaPhase) == "t" {
			<-gate
		}
		start := time.Now()
		if msg.Metadata.Get(metaPoison) == "1" {
			poisonRuns.Add(1)
			return errPoison
		}
		benchutil.Work(p.work, p.sleep)
		seq, _ := strconv.Atoi(msg.Metadata.Get(metaSeq))
		switch msg.Metadata.Get(metaPhase) {
		case "k":
			kCount.Add(1)
			return nil
		case "t":
			if seq < 0 || seq >= len(seen) || seen[seq].Swap(true) {
				dups.Add(1)
				return nil
			}
			if tCount.Add(1) == int64(tHealthy) {
				last.Store(time.Now().UnixNano())
				close(tDone)
			}
			return nil
		}
		if seq < 0 || seq >= len(lseen) || lseen[seq].Swap(true) {
			dups.Add(1)
			return nil
		}
		sent, _ := strconv.ParseInt(msg.Metadata.Get(metaSentAt), 10, 64)
		lat[seq] = start.UnixNano() - sent
		if lCount.Add(1) == int64(lHealthy) {
			close(lDone)
		}
		return nil
	})
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- r.Run(runCtx) }()
	defer r.Close()

	wait := func(what string, done <-chan struct{}) error {
		select {
		case <-done:
			return nil
		case err := <-runErr:
			return fmt.Errorf("%s: router stopped: %v", what, err)
		case <-time.After(p.timeout):
			return stalled{fmt.Errorf("%s: not done after %s: healthy handled %d/%d (throughput phase), %d/%d (latency phase); %d of %d dead letters; %d runs on poison messages",
				what, p.timeout, tCount.Load(), tHealthy, lCount.Load(), lHealthy, dlq.n.Load(), tPoison+lPoison, poisonRuns.Load())}
		}
	}
	lettered := func(k int) <-chan struct{} {
		ch := make(chan struct{})
		go func() {
			for dlq.n.Load() < int64(k) {
				time.Sleep(5 * time.Millisecond)
			}
			close(ch)
		}()
		return ch
	}

	// Warm-up: the trickle reaches the handler (the subscription is up),
	// then -warmup for the other subscriptions (Kafka's retry relays join
	// the same consumer group, and each join rebalances it).
	for deadline := time.Now().Add(p.timeout); kCount.Load() == 0 && p.keepalive > 0; {
		if time.Now().After(deadline) {
			close(gate)
			return result{}, errors.New("warm-up: the trickle never reached the handler")
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(p.warmup)
	// Phase 1's backlog, published while the handler holds its messages at
	// the gate; timing starts when the gate opens.
	const batch = 100
	for i := 0; i < p.n; i += batch {
		msgs := make([]*message.Message, 0, batch)
		for j := i; j < i+batch && j < p.n; j++ {
			msgs = append(msgs, newMessage(j, "t", withPoison))
		}
		if err := b.Publisher.Publish(topic, msgs...); err != nil {
			close(gate)
			return result{}, fmt.Errorf("publish: %w", err)
		}
	}
	gateOpened := time.Now()
	close(gate)
	if err := wait("throughput phase", tDone); err != nil {
		return result{}, err
	}
	if err := wait("throughput phase's dead letters", lettered(tPoison)); err != nil {
		return result{}, err
	}
	var res result
	if elapsed := time.Duration(last.Load() - gateOpened.UnixNano()); elapsed > 0 {
		res.rate = float64(tHealthy) / elapsed.Seconds()
	}

	// Phase 2: fixed-rate producer.
	if latN > 0 {
		achieved, err := produce(b.Publisher, topic, latN, p.rate, withPoison)
		if err != nil {
			return result{}, err
		}
		res.pubRate = achieved
		if err := wait("latency phase", lDone); err != nil {
			return result{}, err
		}
		if err := wait("latency phase's dead letters", lettered(tPoison+lPoison)); err != nil {
			return result{}, err
		}
		var healthy []int64
		for i := range lat {
			if !(withPoison && isPoison(i)) {
				healthy = append(healthy, lat[i])
			}
		}
		sort.Slice(healthy, func(i, j int) bool { return healthy[i] < healthy[j] })
		res.p50 = time.Duration(benchutil.Percentile(healthy, 0.50))
		res.p99 = time.Duration(benchutil.Percentile(healthy, 0.99))
	}
	// Stop the trickle and let its last messages through before closing:
	// a message in flight when the router closes is not part of the test
	// (though Watermill's Retry + PoisonQueue would dead-letter it: Retry
	// returns the cancelled context's error, PoisonQueue takes it for a
	// failure).
	stopTrickle()
	if p.keepalive > 0 {
		<-trickleDone
	}
	for wait := time.Now().Add(5 * time.Second); kCount.Load() < trickleSent.Load() && time.Now().Before(wait); {
		time.Sleep(5 * time.Millisecond)
	}
	if err := r.Close(); err != nil {
		return result{}, fmt.Errorf("close: %w", err)
	}
	switch got := dlq.n.Load(); {
	case got < int64(tPoison+lPoison):
		return result{}, fmt.Errorf("%d dead letters, want %d", got, tPoison+lPoison)
	case got > int64(tPoison+lPoison):
		// Healthy messages dead-lettered: Watermill's Retry returns the
		// message context's error without running the handler when that
		// context is cancelled (a rebalance, a shutdown), and PoisonQueue
		// takes it for a failure.
		res.healthyLettered = got - int64(tPoison+lPoison)
		res.whyLettered, _ = dlq.why.Load().(string)
	}
	res.dups = dups.Load()
	if k := tPoison + lPoison; k > 0 {
		res.runsPerPoison = float64(poisonRuns.Load()) / float64(k)
	}
	return res, nil
}

// produce publishes n messages at rate per second, one message per Publish
// call, from 4 goroutines (so one slow publish does not hold the schedule),
// each message stamped just before its own Publish call. It returns the
// rate it achieved.
func produce(pub message.Publisher, topic string, n, rate int, withPoison bool) (float64, error) {
	const workers = 4
	start := time.Now()
	seqs := make(chan int, n)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := range seqs {
				m := newMessage(seq, "l", withPoison)
				m.Metadata.Set(metaSentAt, strconv.FormatInt(time.Now().UnixNano(), 10))
				if err := pub.Publish(topic, m); err != nil {
					errs <- fmt.Errorf("publish: %w", err)
					return
				}
			}
		}()
	}
	for seq := 0; seq < n; seq++ {
		if wait := time.Until(start.Add(time.Duration(float64(seq) / float64(rate) * float64(time.Second)))); wait > 0 {
			time.Sleep(wait)
		}
		seqs <- seq
	}
	close(seqs)
	wg.Wait()
	select {
	case err := <-errs:
		return 0, err
	default:
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// cleanup drops what a measurement left on the broker: PostgreSQL queue
// tables and RabbitMQ queues (the topic's, its DLQ's, its poison queue's and
// its delay queues). Kafka topics live in the embedded broker and go with it.
func cleanup(ctx context.Context, b *adapters.Broker, topic string, stages []time.Duration) {
	names := []string{topic, topic + ".dlq", topic + ".poison"}
	if b.Kind == adapters.KindAMQP {
		for _, d := range stages {
			names = append(names, adapters.AMQPDelayQueue(topic, d))
		}
	}
	benchutil.Drop(ctx, b, names...)
}

// relaysVia is a scheduler whose relays (Kafka) consume with sub.
type relaysVia struct {
	antidote.Scheduler
	sub message.Subscriber
}

func (s relaysVia) Relays() (antidote.Relays, bool) {
	r, ok := s.Scheduler.(antidote.Relayer)
	if !ok {
		return antidote.Relays{}, false
	}
	relays, ok := r.Relays()
	relays.Subscriber = s.sub
	return relays, ok
}
