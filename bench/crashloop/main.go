// Command crashloop measures how long a message that kills the consumer
// process takes to be quarantined (issue 8, part 4): the wall time from its
// first delivery to its dead letter (reason crash_loop, written by
// middleware.CrashLoopGuard), the number of consumer processes started, and the
// number of times the handler ran on it, per broker and durable delivery
// tracker, in the same run.
//
// Method. For each broker × tracker, a supervisor (this process) publishes
// -healthy valid messages with one crashing message in the middle to a
// fresh topic, subscribes to the topic's DLQ itself, and then starts
// consumer processes one after the other: the same binary re-executed with
// -child. A consumer is router.New with the broker's publisher as DLQ
// publisher and CrashLoopGuard on the chosen tracker (PostgreSQL or Redis; the
// memory tracker cannot survive a restart), MaxDeliveries -max-deliveries
// (default 3, the library's). Its handler calls os.Exit(3) on the crashing
// payload, so no middleware ever sees an error: only the durable count
// stops the loop. The supervisor restarts a consumer that exits 3 at once,
// until the letter arrives on the DLQ; then it waits for every healthy
// message to be processed (each consumer logs what it handled to a file),
// stops the consumer with SIGTERM and reports:
//
//   - time to quarantine: first handler run on the crashing message (the
//     consumer logs it just before exiting) → the letter received by the
//     supervisor;
//   - process starts, including the one that quarantined the message;
//   - handler runs on the crashing message (deliveries that crashed);
//   - restart → redelivery: mean time from a restarted consumer's start to
//     its run of the crashing message (process start, broker connect, group
//     join, redelivery; the first consumer's is left out), which is what the
//     time to quarantine is made of.
//
// Brokers: kafka runs an embedded broker in the supervisor, so that it
// outlives the consumers (like `antidote devkafka`); a consumer killed
// mid-session is only replaced in the group after its session times out
// (-kafka-session-timeout, default 6s, the embedded broker's minimum;
// the library's default is 10s), which dominates Kafka's figure. On
// RabbitMQ the unacked message is requeued when the connection drops; on
// PostgreSQL the row lock goes with the connection. Kafka's cheap path may
// run the handler once more than MaxDeliveries (see docs/poison-stack.md).
//
//	go run ./bench/crashloop                                  # kafka,amqp,postgres × postgres,redis
//	go run ./bench/crashloop -brokers amqp -trackers redis -runs 3
//
// Addresses from the adapters env (ANTIDOTE_AMQP_URL, ANTIDOTE_POSTGRES_URL)
// and ANTIDOTE_REDIS_ADDR (default 127.0.0.1:6379).
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/bench/internal/benchutil"
	"github.com/antidote-mq/antidote/devkafka"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/pgstore"
	"github.com/antidote-mq/antidote/poison"
	"github.com/antidote-mq/antidote/redisstore"
	"github.com/antidote-mq/antidote/router"
)

const crashMarker = "CRASH-NOW"

type opts struct {
	healthy        int
	maxLives       int
	maxDeliveries  int
	sessionTimeout time.Duration
	drain          time.Duration
}

func main() {
	brokers := flag.String("brokers", "kafka,amqp,postgres", "comma-separated brokers")
	trackers := flag.String("trackers", "postgres,redis", "comma-separated delivery trackers: postgres, redis")
	runs := flag.Int("runs", 1, "measurements per broker × tracker")
	healthy := flag.Int("healthy", 20, "valid messages published around the crashing one")
	maxLives := flag.Int("max-lives", 10, "give up after this many consumer processes")
	maxDeliveries := flag.Int("max-deliveries", 3, "CrashLoopGuardConfig.MaxDeliveries")
	session := flag.Duration("kafka-session-timeout", 6*time.Second, "Kafka consumer session timeout of the consumers")
	drain := flag.Duration("drain", 30*time.Second, "after the letter, how long to wait for the healthy messages")
	// The consumer side.
	child := flag.Bool("child", false, "run as a consumer (started by the supervisor)")
	childBroker := flag.String("child-broker", "", "consumer: broker")
	childTopic := flag.String("child-topic", "", "consumer: topic")
	childTracker := flag.String("child-tracker", "", "consumer: tracker")
	childLog := flag.String("child-log", "", "consumer: file to append its events to")
	flag.Parse()
	o := opts{healthy: *healthy, maxLives: *maxLives, maxDeliveries: *maxDeliveries, sessionTimeout: *session, drain: *drain}
	if *child {
		if err := consume(adapters.Kind(*childBroker), *childTopic, *childTracker, *childLog, o); err != nil {
			fmt.Fprintln(os.Stderr, "consumer:", err)
			os.Exit(1)
		}
		return
	}

	fmt.Printf("crash loop: %d healthy messages + 1 crashing, MaxDeliveries %d, Kafka session timeout %s, %d run(s) each\n",
		o.healthy, o.maxDeliveries, o.sessionTimeout, *runs)
	type row struct {
		broker, tracker string
		res             []result
	}
	var rows []row
	failed := false
	for _, bname := range strings.Split(*brokers, ",") {
		kind := adapters.Kind(strings.TrimSpace(bname))
		var env []string
		if kind == adapters.KindKafka {
			k, err := devkafka.Start(devkafka.Config{Partitions: 4})
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			defer k.Close()
			env = []string{"ANTIDOTE_KAFKA_BROKERS=" + strings.Join(k.Addrs(), ",")}
		}
		for _, tname := range strings.Split(*trackers, ",") {
			tname = strings.TrimSpace(tname)
			rw := row{broker: string(kind), tracker: tname}
			for run := 1; run <= *runs; run++ {
				res, err := measure(kind, tname, env, o)
				if err != nil {
					fmt.Fprintf(os.Stderr, "%s/%s run %d: %v\n", kind, tname, run, err)
					failed = true
					continue
				}
				fmt.Printf("  %-8s tracker %-8s run %d: quarantined in %7.2fs, %d process starts, %d handler runs on it, restart → redelivery %.2fs, healthy %d/%d\n",
					kind, tname, run, res.quarantine.Seconds(), res.starts, res.deliveries, res.restart.Seconds(), res.healthy, o.healthy)
				rw.res = append(rw.res, res)
			}
			rows = append(rows, rw)
		}
	}
	fmt.Println("\nsummary (median over runs):")
	fmt.Printf("| %-8s | %-8s | %-20s | %-14s | %-22s | %-25s |\n", "broker", "tracker", "time to quarantine", "process starts", "handler runs (crashes)", "restart → redelivery, mean")
	for _, rw := range rows {
		if len(rw.res) == 0 {
			continue
		}
		var q, s, d, rs []float64
		for _, r := range rw.res {
			q = append(q, r.quarantine.Seconds())
			s = append(s, float64(r.starts))
			d = append(d, float64(r.deliveries))
			rs = append(rs, r.restart.Seconds())
		}
		fmt.Printf("| %-8s | %-8s | %18.2fs | %14.0f | %22.0f | %24.2fs |\n", rw.broker, rw.tracker, benchutil.Median(q), benchutil.Median(s), benchutil.Median(d), benchutil.Median(rs))
	}
	if failed {
		os.Exit(1)
	}
}

type result struct {
	quarantine time.Duration
	starts     int
	deliveries int
	restart    time.Duration
	healthy    int
}

func brokerConfig(kind adapters.Kind, o opts) (adapters.Config, error) {
	cfg, err := adapters.LoadConfig("")
	if err != nil {
		return cfg, err
	}
	cfg.Broker = kind
	cfg.Kafka.SessionTimeout = o.sessionTimeout
	cfg.Kafka.CommitInterval = 200 * time.Millisecond
	// LoadConfig leaves unset fields empty (Open fills them); the consumer
	// reads cfg.Postgres.URL for its PostgreSQL tracker, so the defaults
	// must be filled here, not only inside Open.
	cfg.SetDefaults()
	return cfg, nil
}

func measure(kind adapters.Kind, tracker string, env []string, o opts) (result, error) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cfg, err := brokerConfig(kind, o)
	if err != nil {
		return result{}, err
	}
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "ANTIDOTE_KAFKA_BROKERS="); ok {
			cfg.Kafka.Brokers = strings.Split(v, ",")
		}
	}
	cfg.Kafka.ConsumerGroup = "bench-crashloop-supervisor"
	b, err := adapters.Open(ctx, cfg, nil)
	if err != nil {
		return result{}, err
	}
	defer b.Close()
	topic := fmt.Sprintf("bench_crash_%d_%s", time.Now().UnixNano()%1e9, tracker)
	defer cleanup(b, topic)

	// The DLQ reader: the time the crash_loop letter arrives.
	letters, err := b.LetterSubscriber().Subscribe(ctx, topic+".dlq")
	if err != nil {
		return result{}, fmt.Errorf("subscribe to the DLQ: %w", err)
	}
	letterAt := make(chan time.Time, 1)
	go func() {
		for m := range letters {
			now := time.Now()
			if m.Metadata.Get(poison.KeyReason) == string(poison.ReasonCrashLoop) && strings.Contains(string(m.Payload), crashMarker) {
				select {
				case letterAt <- now:
				default:
				}
			} else {
				fmt.Fprintf(os.Stderr, "unexpected letter: reason %q payload %q\n", m.Metadata.Get(poison.KeyReason), m.Payload)
			}
			m.Ack()
		}
	}()

	var msgs []*message.Message
	for i := 0; i <= o.healthy; i++ {
		payload := fmt.Sprintf(`{"user_id":%d,"msg":"fine"}`, i+1)
		if i == o.healthy/2 {
			payload = fmt.Sprintf(`{"user_id":%d,"msg":%q}`, i+1, crashMarker)
		}
		msgs = append(msgs, message.NewMessage(watermill.NewUUID(), []byte(payload)))
	}
	if err := b.Publisher.Publish(topic, msgs...); err != nil {
		return result{}, fmt.Errorf("publish: %w", err)
	}

	logFile, err := os.CreateTemp("", "crashloop-*.log")
	if err != nil {
		return result{}, err
	}
	logFile.Close()
	defer os.Remove(logFile.Name())
	self, err := os.Executable()
	if err != nil {
		return result{}, err
	}

	var res result
	var starts []time.Time
	var quarantinedAt time.Time
	for res.starts < o.maxLives {
		cmd := exec.Command(self, "-child", "-child-broker", string(kind), "-child-topic", topic, "-child-tracker", tracker,
			"-child-log", logFile.Name(), "-max-deliveries", strconv.Itoa(o.maxDeliveries), "-kafka-session-timeout", o.sessionTimeout.String())
		cmd.Env = append(os.Environ(), env...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			return result{}, err
		}
		res.starts++
		starts = append(starts, time.Now())
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		select {
		case err := <-exited:
			var ee *exec.ExitError
			if errors.As(err, &ee) && ee.ExitCode() == 3 {
				continue // the crash: restart at once
			}
			return result{}, fmt.Errorf("consumer %d exited: %v: %s", res.starts, err, stderr.String())
		case quarantinedAt = <-letterAt:
		}
		// Quarantined: let this consumer finish the healthy messages, then stop it.
		deadline := time.Now().Add(o.drain)
		for time.Now().Before(deadline) {
			if ev, _ := readEvents(logFile.Name()); len(ev.ok) >= o.healthy {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		break
	}
	if quarantinedAt.IsZero() {
		return result{}, fmt.Errorf("not quarantined after %d consumer processes", res.starts)
	}
	ev, err := readEvents(logFile.Name())
	if err != nil {
		return result{}, err
	}
	if len(ev.crashes) == 0 {
		return result{}, errors.New("letter without any crash")
	}
	res.deliveries = len(ev.crashes)
	res.quarantine = quarantinedAt.Sub(ev.crashes[0])
	res.healthy = len(ev.ok)
	// Each crash belongs to the latest process started before it; the
	// first process's is a start, not a restart, and is left out.
	var sum time.Duration
	restarts := ev.crashes[1:]
	if len(ev.crashes) == 1 {
		restarts = ev.crashes
	}
	for _, c := range restarts {
		var s time.Time
		for _, st := range starts {
			if st.Before(c) {
				s = st
			}
		}
		sum += c.Sub(s)
	}
	res.restart = sum / time.Duration(len(restarts))
	return res, nil
}

type events struct {
	crashes []time.Time
	ok      map[string]bool
}

func readEvents(path string) (events, error) {
	ev := events{ok: map[string]bool{}}
	f, err := os.Open(path)
	if err != nil {
		return ev, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		kind, val, _ := strings.Cut(sc.Text(), " ")
		switch kind {
		case "crash":
			ns, _ := strconv.ParseInt(val, 10, 64)
			ev.crashes = append(ev.crashes, time.Unix(0, ns))
		case "ok":
			ev.ok[val] = true
		}
	}
	return ev, sc.Err()
}

// consume is the consumer process: Antidote's stack with a durable tracker
// and a handler that kills the process on the crashing payload. It runs
// until SIGTERM.
func consume(kind adapters.Kind, topic, tracker, logPath string, o opts) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	cfg, err := brokerConfig(kind, o)
	if err != nil {
		return err
	}
	cfg.Kafka.ConsumerGroup = "bench-crashloop"
	b, err := adapters.Open(ctx, cfg, nil)
	if err != nil {
		return err
	}
	defer b.Close()
	var t poison.DeliveryTracker
	switch tracker {
	case "postgres":
		pt, err := pgstore.NewDeliveryTracker(ctx, pgstore.DeliveryTrackerConfig{URL: cfg.Postgres.URL})
		if err != nil {
			return err
		}
		t = pt
	case "redis":
		addr := os.Getenv("ANTIDOTE_REDIS_ADDR")
		if addr == "" {
			addr = "127.0.0.1:6379"
		}
		rt, err := redisstore.NewDeliveryTracker(redisstore.DeliveryTrackerConfig{Addr: addr})
		if err != nil {
			return err
		}
		t = rt
	default:
		return fmt.Errorf("unknown tracker %q (postgres, redis)", tracker)
	}
	defer t.Close()
	logf, err := os.OpenFile(logPath, os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	r, err := router.New(router.Config{
		CloseTimeout:   5 * time.Second,
		DeadLetter:     middleware.DeadLetterConfig{Publisher: b.Publisher, ConsumerGroup: "bench-crashloop"},
		CrashLoopGuard: middleware.CrashLoopGuardConfig{Tracker: t, MaxDeliveries: o.maxDeliveries},
	})
	if err != nil {
		return err
	}
	r.AddConsumerHandler("bench-crashloop", topic, b.Subscriber, func(msg *message.Message) error {
		if strings.Contains(string(msg.Payload), crashMarker) {
			// One write(2) before dying: it reaches the file.
			fmt.Fprintf(logf, "crash %d\n", time.Now().UnixNano())
			os.Exit(3)
		}
		fmt.Fprintf(logf, "ok %s\n", msg.UUID)
		return nil
	})
	return r.Run(ctx)
}

// cleanup drops the PostgreSQL queue tables of a measurement (RabbitMQ's
// queues are empty at the end and are left; Kafka's go with the embedded
// broker).
func cleanup(b *adapters.Broker, topic string) {
	if b.Kind == adapters.KindPostgres {
		benchutil.Drop(context.Background(), b, topic, topic+".dlq")
	}
}
