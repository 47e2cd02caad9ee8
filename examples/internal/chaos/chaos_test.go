package chaos_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/jackc/pgx/v5"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/examples/internal/hello"
	"github.com/antidote-mq/antidote/internal/testenv"
)

// scale is the run's size, from env, so CI runs it small and a person large.
type scale struct {
	messages int           // ANTIDOTE_CHAOS_MESSAGES, default 2000
	killers  int           // ANTIDOTE_CHAOS_KILLERS: process-killing messages, default 1 per 10,000 (at least 1)
	kills    int           // ANTIDOTE_CHAOS_KILLS: SIGKILLs at random moments, default 3
	dupEvery int           // ANTIDOTE_CHAOS_DUPLICATE_EVERY: re-send every Kth with the same key, default 30
	rate     float64       // ANTIDOTE_CHAOS_RATE: consumer msgs/s, default messages/8 (so CI's run lasts long enough for every fault)
	seed     uint64        // ANTIDOTE_CHAOS_SEED: the fault schedule's seed, default random (logged)
	timeout  time.Duration // ANTIDOTE_CHAOS_TIMEOUT: one broker's consumer run, default 5m + 20ms per message
	kafkaN   int           // ANTIDOTE_CHAOS_KAFKA_CONCURRENCY: the Kafka run again with kafka.concurrency N and keys, default 16 (0 or 1: not)
	brokers  []adapters.Kind
}

func scaleFromEnv(t *testing.T) scale {
	t.Helper()
	num := func(key string, def int) int {
		v := os.Getenv(key)
		if v == "" {
			return def
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			t.Fatalf("%s=%q: use a whole number >= 0", key, v)
		}
		return n
	}
	s := scale{messages: num("ANTIDOTE_CHAOS_MESSAGES", 2000)}
	if s.messages < 400 {
		t.Fatalf("ANTIDOTE_CHAOS_MESSAGES=%d: use at least 400 (1%% poison of 4 kinds)", s.messages)
	}
	s.killers = num("ANTIDOTE_CHAOS_KILLERS", max(1, s.messages/10000))
	s.kafkaN = num("ANTIDOTE_CHAOS_KAFKA_CONCURRENCY", 16)
	s.kills = num("ANTIDOTE_CHAOS_KILLS", 3)
	s.dupEvery = num("ANTIDOTE_CHAOS_DUPLICATE_EVERY", 30)
	if s.dupEvery == 0 {
		t.Fatal("ANTIDOTE_CHAOS_DUPLICATE_EVERY=0: use 1 or more")
	}
	s.rate = float64(num("ANTIDOTE_CHAOS_RATE", max(100, s.messages/8)))
	s.seed = uint64(num("ANTIDOTE_CHAOS_SEED", int(time.Now().UnixNano()%1e9)))
	s.timeout = 5*time.Minute + time.Duration(s.messages)*20*time.Millisecond
	if v := os.Getenv("ANTIDOTE_CHAOS_TIMEOUT"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			t.Fatalf("ANTIDOTE_CHAOS_TIMEOUT=%q: use a duration such as 30m", v)
		}
		s.timeout = d
	}
	for _, b := range strings.Split(envOr("ANTIDOTE_CHAOS_BROKERS", "kafka,amqp,postgres"), ",") {
		switch k := adapters.Kind(strings.TrimSpace(b)); k {
		case adapters.KindKafka, adapters.KindAMQP, adapters.KindPostgres:
			s.brokers = append(s.brokers, k)
		default:
			t.Fatalf("ANTIDOTE_CHAOS_BROKERS: %q is not kafka, amqp or postgres", b)
		}
	}
	return s
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// TestChaos runs the workload through each broker while killing the
// consumer and restarting the servers under it, then checks the outcome
// from the sink table and the DLQ. See the package doc for the command.
func TestChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("starts servers and consumer processes; skipped with -short")
	}
	sc := scaleFromEnv(t)
	t.Logf("scale: %d messages, %d process-killing, %d SIGKILLs, re-send every %d, consumer rate %.0f/s, seed %d (ANTIDOTE_CHAOS_SEED)",
		sc.messages, sc.killers, sc.kills, sc.dupEvery, sc.rate, sc.seed)
	bins := buildBinaries(t)
	for i, kind := range sc.brokers {
		t.Run(string(kind), func(t *testing.T) {
			runChaos(t, kind, bins, sc, sc.seed+uint64(i), 0)
		})
	}
	// Key-ordered concurrency (kafka.concurrency) under the same faults:
	// each key's effects in publish order as well.
	if n := sc.kafkaN; n > 1 && slices.Contains(sc.brokers, adapters.KindKafka) {
		t.Run(fmt.Sprintf("kafka-concurrency-%d", n), func(t *testing.T) {
			runChaos(t, adapters.KindKafka, bins, sc, sc.seed+100, n)
		})
	}
}

// chaosKeys is how many record keys the concurrent variant spreads the
// messages over.
const chaosKeys = 50

// buildBinaries builds the three examples and the antidote CLI (plain
// builds: the processes under test are the programs users run).
func buildBinaries(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-o", dir+string(os.PathSeparator),
		"github.com/antidote-mq/antidote/examples/kafka",
		"github.com/antidote-mq/antidote/examples/rabbitmq",
		"github.com/antidote-mq/antidote/examples/postgres",
		"github.com/antidote-mq/antidote/cmd/antidote")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return dir
}

var exampleOf = map[adapters.Kind]string{adapters.KindKafka: "kafka", adapters.KindAMQP: "rabbitmq", adapters.KindPostgres: "postgres"}

// fault is one scheduled fault: fired once the sink holds at fraction of
// the run's effects.
type fault struct {
	what     string // "SIGKILL", "PostgreSQL restart", "RabbitMQ restart", "Kafka crash", "Kafka restart"
	fraction float64
	fired    time.Duration // since the consumer's start, when it was over; 0: never fired
	began    time.Duration
}

// outageGrace is how long after a server came back a consumer exit still
// counts as caused by the outage (e.g. a consumer that started just before
// RabbitMQ went down fails to subscribe and exits 1; its supervisor
// restarts it).
const outageGrace = 10 * time.Second

// duringOutage reports whether at falls in a server restart or its grace.
func duringOutage(faults []*fault, at time.Duration) bool {
	for _, f := range faults {
		if f.what != "SIGKILL" && f.fired != 0 && at >= f.began && at <= f.fired+outageGrace {
			return true
		}
	}
	return false
}

// runChaos runs one broker's chaos; concurrency > 1 (Kafka) runs the
// consumer with kafka.concurrency and the producer with keys, and checks
// each key's effects happened in publish order.
func runChaos(t *testing.T, kind adapters.Kind, bins string, sc scale, seed uint64, concurrency int) {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	pg := testenv.StartPostgres(t)
	env := []string{"ANTIDOTE_POSTGRES_URL=" + pg.URL}
	cfg := adapters.Config{Broker: kind}
	cfg.Postgres.URL = pg.URL
	var rabbit *testenv.RabbitMQ
	var kafka *devKafka
	idle := "10s"
	switch kind {
	case adapters.KindAMQP:
		rabbit = testenv.StartRabbitMQ(t)
		env = append(env, "ANTIDOTE_AMQP_URL="+rabbit.URL)
		cfg.AMQP.URL = rabbit.URL
	case adapters.KindKafka:
		kafka = startDevKafka(t, filepath.Join(bins, "antidote"))
		// A restarted consumer waits for the killed member's session to end.
		env = append(env, "ANTIDOTE_KAFKA_BROKERS="+kafka.addr, "ANTIDOTE_KAFKA_SESSION_TIMEOUT=6s")
		cfg.Kafka.Brokers = []string{kafka.addr}
		cfg.Kafka.ConsumerGroup = "chaos-verify"
		idle = "20s"
	}
	w := newWorkload(sc.messages, sc.killers, sc.dupEvery)
	topic := "chaos_" + watermill.NewShortUUID()
	bin := filepath.Join(bins, exampleOf[kind])

	produceArgs := []string{"--role", "producer", "--input", w.writeInput(t), "--topic", topic,
		"--duplicate-every", strconv.Itoa(sc.dupEvery), "--json"}
	if concurrency > 1 {
		env = append(env, "ANTIDOTE_KAFKA_CONCURRENCY="+strconv.Itoa(concurrency))
		produceArgs = append(produceArgs, "--keys", strconv.Itoa(chaosKeys))
	}
	// Produce everything first: the faults are aimed at the consumer side.
	out, errOut, err := runProcess(bin, env, produceArgs...)
	var produced hello.Summary
	if err != nil || json.Unmarshal(lastLine(out), &produced) != nil || produced.Published != int64(w.published()) {
		t.Fatalf("producer: %v, summary %s, want %d published\n%s", err, lastLine(out), w.published(), errOut)
	}

	if err := publishForeign(cfg, topic, w); err != nil {
		t.Fatalf("foreign producer: %v", err)
	}

	faults := schedule(rng, sc.kills, kind)
	sup := &supervisor{
		bin: bin, env: env, logs: logDir(t),
		args: []string{"--role", "consumer", "--topic", topic, "--sink", "postgres", "--idempotency", "postgres-tx",
			"--tracker", "postgres", "--crash-on", killMarker, "--idle", idle, "--rate", strconv.FormatFloat(sc.rate, 'f', -1, 64), "--json"},
		killed: map[int]bool{},
	}
	ctx, cancel := context.WithTimeout(context.Background(), sc.timeout)
	defer cancel()
	start := time.Now()
	sup.start = start
	var runErr error
	finished := make(chan struct{})
	go func() { runErr = sup.run(ctx); close(finished) }()
	injectErr := inject(ctx, finished, faults, w.effects(), servers{pg, rabbit, kafka}, sup, rng, start)
	<-finished
	elapsed := time.Since(start)
	t.Cleanup(sup.killCurrent)
	if injectErr != nil {
		t.Errorf("fault injection: %v", injectErr)
	}
	if runErr != nil {
		t.Fatalf("consumer run did not finish: %v (lives %d, SIGKILLs %d, crash exits %d, other exits %d)\n%s",
			runErr, sup.lives, sup.kills, sup.crashes, sup.unexpected, sup.lastStderr())
	}
	for _, f := range faults {
		if f.fired == 0 {
			t.Errorf("%s at %.0f%% of the effects never fired: the run finished first (lower ANTIDOTE_CHAOS_RATE)", f.what, 100*f.fraction)
		}
	}

	effects, err := readEffects(pg.URL)
	if err != nil {
		t.Fatal(err)
	}
	letters, err := readDLQ(cfg, antidote.DLQTopic(topic), w)
	if err != nil {
		t.Fatal(err)
	}
	v := w.check(effects, letters)
	var firedAt []string
	for _, f := range faults {
		firedAt = append(firedAt, fmt.Sprintf("%s@%.0f%%(%.1fs)", f.what, 100*f.fraction, f.fired.Seconds()))
	}
	t.Logf("%s: %d messages (%d published by the examples' producer with re-sends, %d by a foreign producer; poison: %d malformed, %d wrong types, %d panic, %d transient, %d stuck, %d oversized; %d process-killing) in %.1fs",
		kind, len(w.payloads), w.published(), len(w.payloads)-w.native(), w.count(malformed), w.count(wrongTypes), w.count(panics), w.count(transient), w.count(stuck), w.count(oversized), w.count(killer), elapsed.Seconds())
	outageExits := 0
	for _, e := range sup.exits {
		if duringOutage(faults, e.at) {
			outageExits++
			continue
		}
		t.Errorf("the consumer exited (%v) at %.1fs, outside any server restart, for no reason the test gave it:\n%s", e.err, e.at.Seconds(), e.stderr())
	}
	t.Logf("%s: faults: %s; consumer lives %d: %d SIGKILLed, %d exited by a process-killing message, %d exited during a server restart (restarted like a supervisor would)",
		kind, strings.Join(firedAt, ", "), sup.lives, sup.kills, sup.crashes, outageExits)
	t.Logf("%s: sink %d effects for %d expected (doubled %d); DLQ %d letters (%v), %d repeats (%d re-sent poison, %d redelivered letters); lost %d, healthy dead-lettered %d, poison took effect %d",
		kind, v.effectsRows, w.effects(), v.doubled, v.letters, v.deadLetteredBy, v.dlqRepeats, v.dlqResent, v.dlqRepeats-v.dlqResent, v.lost, v.healthyInDLQ, v.poisonInEffects)
	for _, p := range v.problems {
		t.Error(p)
	}
	if concurrency > 1 {
		keyed, violations, err := keyOrder(pg.URL)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s, kafka.concurrency %d: %d keyed effects over %d keys, %d out of publish order", kind, concurrency, keyed, chaosKeys, violations)
		if keyed == 0 || violations != 0 {
			t.Errorf("kafka.concurrency %d: %d effects of a key out of publish order (of %d keyed effects)", concurrency, violations, keyed)
		}
	}
}

// keyOrder reads the sink's effects in commit order and counts, per key,
// an effect numbered below one already committed: with key-ordered
// concurrency a key's next message starts only after the last one's effect
// committed, whatever was killed or restarted, so there must be none.
func keyOrder(url string) (keyed, violations int, err error) {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return 0, 0, err
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT okey, oseq FROM `+hello.EffectsTable+` WHERE okey IS NOT NULL ORDER BY id`)
	if err != nil {
		return 0, 0, err
	}
	defer rows.Close()
	last := map[string]int64{}
	for rows.Next() {
		var k string
		var seq int64
		if err := rows.Scan(&k, &seq); err != nil {
			return 0, 0, err
		}
		keyed++
		if seq < last[k] {
			violations++
		}
		last[k] = max(last[k], seq)
	}
	return keyed, violations, rows.Err()
}

// schedule places the faults at random fractions of the run's progress:
// SIGKILLs anywhere between 5% and 90%, one PostgreSQL crash-restart, on
// RabbitMQ one stop_app/start_app, and on Kafka one broker crash (SIGKILL)
// and one clean broker restart (SIGTERM), all in the middle.
func schedule(rng *rand.Rand, kills int, kind adapters.Kind) []*fault {
	var fs []*fault
	for range kills {
		fs = append(fs, &fault{what: "SIGKILL", fraction: 0.05 + 0.85*rng.Float64()})
	}
	fs = append(fs, &fault{what: "PostgreSQL restart", fraction: 0.3 + 0.3*rng.Float64()})
	switch kind {
	case adapters.KindAMQP:
		fs = append(fs, &fault{what: "RabbitMQ restart", fraction: 0.35 + 0.3*rng.Float64()})
	case adapters.KindKafka:
		fs = append(fs, &fault{what: "Kafka crash", fraction: 0.2 + 0.3*rng.Float64()},
			&fault{what: "Kafka restart", fraction: 0.5 + 0.3*rng.Float64()})
	}
	sort.Slice(fs, func(i, j int) bool { return fs[i].fraction < fs[j].fraction })
	return fs
}

// inject fires the faults in order as the sink's effect count passes each
// one's fraction, until all fired or the consumer run ended.
// servers are the run's own servers the faults hit (rabbit and kafka nil
// when the run does not use them).
type servers struct {
	pg     *testenv.Postgres
	rabbit *testenv.RabbitMQ
	kafka  *devKafka
}

func inject(ctx context.Context, finished <-chan struct{}, faults []*fault, total int, srv servers, sup *supervisor, rng *rand.Rand, start time.Time) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	next := 0
	for next < len(faults) {
		select {
		case <-finished:
			return nil
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		n, err := countEffects(ctx, srv.pg.URL)
		if err != nil || float64(n) < faults[next].fraction*float64(total) {
			continue
		}
		f := faults[next]
		f.began = time.Since(start)
		switch f.what {
		case "SIGKILL":
			// A random moment within the process's life, not at its start.
			if !sup.kill(time.Duration(rng.IntN(300)) * time.Millisecond) {
				continue
			}
		case "PostgreSQL restart":
			if err := srv.pg.Stop(); err != nil {
				return err
			}
			time.Sleep(time.Second)
			if err := srv.pg.Start(); err != nil {
				return err
			}
		case "RabbitMQ restart":
			if err := srv.rabbit.StopApp(); err != nil {
				return err
			}
			time.Sleep(time.Second)
			if err := srv.rabbit.StartApp(); err != nil {
				return err
			}
		case "Kafka crash":
			if err := srv.kafka.restart(syscall.SIGKILL, time.Second); err != nil {
				return err
			}
		case "Kafka restart":
			if err := srv.kafka.restart(syscall.SIGTERM, time.Second); err != nil {
				return err
			}
		}
		f.fired = time.Since(start)
		next++
	}
	return nil
}

// logDir holds the consumer's stderr, one file per life: a directory per
// run (kafka, kafka-concurrency-16, ...) under ANTIDOTE_CHAOS_LOGS (kept
// after the test) or a temporary directory.
func logDir(t *testing.T) string {
	dir := os.Getenv("ANTIDOTE_CHAOS_LOGS")
	if dir == "" {
		return t.TempDir()
	}
	dir = filepath.Join(dir, filepath.Base(t.Name()))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}
