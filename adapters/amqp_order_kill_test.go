package adapters_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wamqp "github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/router"
)

// The worker of the order tests below, as a process of its own: the test
// binary run again with ANTIDOTE_TEST_ORDER_WORKER set. It reads its config
// from ANTIDOTE_* (amqp.single_active_consumer included), runs router.New's
// stack over Open's subscriber, and appends "<worker> <key> <n>
// <redelivered>" to the shared log (O_APPEND: one write per line, so the
// file's order is the order the handlers ran in, across processes) before
// its handler returns and the message is acked. A message marked hold, on
// its first delivery, is not logged: the worker prints "HOLD <key> <n>" and
// waits to be killed, with its handler running and its prefetch unacked.
// It prints READY once its router runs, and exits when its stdin closes
// (the test is gone).
func TestAMQPOrderWorker(t *testing.T) {
	if os.Getenv("ANTIDOTE_TEST_ORDER_WORKER") == "" {
		t.Skip("a worker process of TestAMQPSingleActiveConsumerKeepsOrderAcrossKills; runs only as its child")
	}
	os.Exit(orderWorker())
}

func orderWorker() int {
	fail := func(what string, err error) int {
		fmt.Fprintf(os.Stderr, "order worker: %s: %v\n", what, err)
		return 2
	}
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); os.Exit(0) }()
	ctx := context.Background()
	cfg, err := adapters.ConfigFromEnv("")
	if err != nil {
		return fail("config", err)
	}
	b, err := adapters.Open(ctx, cfg, nil)
	if err != nil {
		return fail("open", err)
	}
	log, err := os.OpenFile(os.Getenv("ORDER_LOG"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fail("log", err)
	}
	id := os.Getenv("ORDER_WORKER_ID")
	r, err := router.New(router.Config{DisableCrashLoopGuard: true, DeadLetter: middleware.DeadLetterConfig{Publisher: b.Publisher}})
	if err != nil {
		return fail("router", err)
	}
	r.AddConsumerHandler("order", os.Getenv("ORDER_TOPIC"), b.Subscriber, func(m *message.Message) error {
		f := strings.Fields(string(m.Payload))
		redelivered := wamqp.IsMessageRedelivered(m)
		if len(f) == 3 && f[2] == "hold" && !redelivered {
			fmt.Printf("HOLD %s %s\n", f[0], f[1])
			<-m.Context().Done() // never: the test kills this process
			return m.Context().Err()
		}
		if _, err := fmt.Fprintf(log, "%s %s %s %t\n", id, f[0], f[1], redelivered); err != nil {
			return err
		}
		return nil
	})
	go func() { <-r.Running(); fmt.Println("READY") }()
	if err := r.Run(ctx); err != nil {
		return fail("run", err)
	}
	return 0
}

// orderRecord is one line of the workers' log.
type orderRecord struct {
	worker, key string
	n           int
	redelivered bool
}

func readOrderLog(t *testing.T, path string) []orderRecord {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []orderRecord
	for line := range strings.SplitSeq(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) != 4 {
			continue // empty, or a line being written
		}
		n, err := strconv.Atoi(f[2])
		if err != nil {
			t.Fatalf("log line %q", line)
		}
		out = append(out, orderRecord{worker: f[0], key: f[1], n: n, redelivered: f[3] == "true"})
	}
	return out
}

// orderVerdict counts, per key in log order, inversions (a message handled
// for the first time after a later one of its key), duplicates (handled
// again) and duplicates that were not redeliveries.
type orderVerdict struct {
	distinct, inversions, duplicates, dupNotRedelivered int
	firstInversion                                      string
}

func judgeOrder(records []orderRecord) orderVerdict {
	var v orderVerdict
	seen := map[string]bool{}
	top := map[string]int{}
	for i, r := range records {
		id := r.key + ":" + strconv.Itoa(r.n)
		switch {
		case seen[id]:
			v.duplicates++
			if !r.redelivered {
				v.dupNotRedelivered++
			}
		case r.n < top[r.key]:
			v.inversions++
			if v.firstInversion == "" {
				v.firstInversion = fmt.Sprintf("record %d: %s after %s:%d", i, id, r.key, top[r.key])
			}
		}
		seen[id] = true
		top[r.key] = max(top[r.key], r.n)
	}
	v.distinct = len(seen)
	return v
}

type orderChild struct {
	id    string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	ready chan struct{}
	done  chan struct{}
}

type orderHold struct {
	w      *orderChild
	key    string
	n      int
	logged int // log records once the hold was seen (the holder's all in)
}

type orderKill struct {
	worker string
	hold   *orderHold // nil: a kill at a point of the stream
	at     int        // log records when the worker was killed
}

// runOrderKills runs workers on one queue while messages go through it and
// the active worker is SIGKILLed: at 4 messages marked hold (the worker is
// then in its handler, its prefetch unacked; without single_active_consumer
// it is killed once another worker handled a later message of the held
// key) and twice at an arbitrary point of the stream (the worker of the
// last record, between any two of its steps). Each worker killed is
// replaced, so 3 are always up. It returns the log, the kills and the
// number of messages published.
func runOrderKills(t *testing.T, quorum, sac bool, prefetch int) ([]orderRecord, []orderKill, int) {
	t.Helper()
	r := newRabbit(t)
	topic := "antidote_test_order_" + watermill.NewShortUUID()
	r.cleanup(topic, topic+".dlq")
	logPath := filepath.Join(t.TempDir(), "handled.log")
	if err := os.WriteFile(logPath, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), "ANTIDOTE_TEST_ORDER_WORKER=1", "ANTIDOTE_BROKER=amqp", "ANTIDOTE_AMQP_URL="+testenv.AMQPURL(t),
		fmt.Sprintf("ANTIDOTE_AMQP_QUORUM=%t", quorum), fmt.Sprintf("ANTIDOTE_AMQP_SINGLE_ACTIVE_CONSUMER=%t", sac),
		fmt.Sprintf("ANTIDOTE_AMQP_PREFETCH=%d", prefetch), "ORDER_TOPIC="+topic, "ORDER_LOG="+logPath)

	holds := make(chan orderHold, 16)
	var mu sync.Mutex
	alive := map[string]*orderChild{}
	started := 0
	start := func() *orderChild {
		started++
		c := &orderChild{id: fmt.Sprintf("w%d", started), ready: make(chan struct{}), done: make(chan struct{})}
		c.cmd = exec.Command(os.Args[0], "-test.run=^TestAMQPOrderWorker$", "-test.count=1")
		c.cmd.Env = append(env, "ORDER_WORKER_ID="+c.id)
		c.cmd.Stderr = os.Stderr
		stdout, err := c.cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if c.stdin, err = c.cmd.StdinPipe(); err != nil {
			t.Fatal(err)
		}
		if err := c.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() {
			defer close(c.done)
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				if sc.Text() == "READY" {
					close(c.ready)
					continue
				}
				var key string
				var n int
				if _, err := fmt.Sscanf(sc.Text(), "HOLD %s %d", &key, &n); err == nil {
					holds <- orderHold{w: c, key: key, n: n}
				}
			}
			_ = c.cmd.Wait()
		}()
		mu.Lock()
		alive[c.id] = c
		mu.Unlock()
		return c
	}
	kill := func(id string) bool {
		mu.Lock()
		c := alive[id]
		delete(alive, id)
		mu.Unlock()
		if c == nil {
			return false // killed already (a hold seen after a kill at a point)
		}
		_ = c.cmd.Process.Signal(syscall.SIGKILL)
		<-c.done
		return true
	}
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range alive {
			_ = c.stdin.Close()
			_ = c.cmd.Process.Signal(syscall.SIGKILL)
			<-c.done
		}
	})

	consumers := func() int {
		ch, err := r.conn.Channel()
		if err != nil {
			t.Fatal(err)
		}
		defer ch.Close()
		q, err := ch.QueueDeclarePassive(topic, true, false, false, false, nil)
		if err != nil {
			return 0 // not declared yet (the channel is closed with it)
		}
		return q.Consumers
	}
	// A quorum queue with single active consumer counts only the active
	// one; the others are known to be up by their READY.
	for i := 1; i <= 3; i++ {
		c := start()
		select {
		case <-c.ready:
		case <-c.done:
			t.Fatalf("worker %s exited", c.id)
		case <-time.After(60 * time.Second):
			t.Fatalf("worker %s not running after 60s", c.id)
		}
		want := i
		if sac && quorum {
			want = 1
		}
		testenv.Eventually(t, 60*time.Second, fmt.Sprintf("%d consumers on the queue", want), func() bool { return consumers() == want })
	}

	// Messages in key order, as a producer sends them: "<key> <n>",
	// 7 keys interleaved, each 0..299; four of them marked hold.
	const keys, perKey = 7, 300
	const total = keys * perKey
	holdAt := map[int]bool{300: true, 700: true, 1100: true, 1500: true}
	publishRaw(t, r, topic, total, func(i int) (string, string) {
		k, n := fmt.Sprintf("k%d", i%keys), i/keys
		body := fmt.Sprintf("%s %d", k, n)
		if holdAt[i] {
			body += " hold"
		}
		return fmt.Sprintf("%s-%d", k, n), body
	})

	var kills []orderKill
	thresholds := []int{900, 1700}
	deadline := time.Now().Add(3 * time.Minute)
	for {
		records := readOrderLog(t, logPath)
		if judgeOrder(records).distinct == total {
			return records, kills, total
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 3 minutes %d of %d messages handled (%d kills)", judgeOrder(records).distinct, total, len(kills))
		}
		select {
		case h := <-holds:
			h.logged = len(readOrderLog(t, logPath))
			if !sac {
				// Held until another worker handled a later message of
				// the key: the held one then comes after it.
				testenv.Eventually(t, 60*time.Second, "a later message of the held key handled elsewhere", func() bool {
					for _, rec := range readOrderLog(t, logPath) {
						if rec.key == h.key && rec.n > h.n {
							return true
						}
					}
					return false
				})
			}
			at := len(readOrderLog(t, logPath))
			if kill(h.w.id) {
				kills = append(kills, orderKill{worker: h.w.id, hold: &h, at: at})
				_ = start()
			}
			continue
		default:
		}
		if len(thresholds) > 0 && len(records) >= thresholds[0] {
			// The worker of the last record, unless it was killed already
			// (then at the next look, when another has handled one).
			last := records[len(records)-1].worker
			at := len(readOrderLog(t, logPath))
			if kill(last) {
				thresholds = thresholds[1:]
				kills = append(kills, orderKill{worker: last, at: at})
				_ = start()
				continue
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Two and three workers on one queue with amqp.single_active_consumer,
// 2,100 messages of 7 keys published in key order by a raw client, the
// active worker SIGKILLed 6 times mid-stream (4 while its handler runs
// with 10 unacked messages prefetched, 2 at arbitrary points): no message
// lost, none handled after a later one of its key, duplicates only as
// redeliveries (a message handled, its ack not yet sent) and at most the
// prefetch per kill. Prefetch 10 and the default (1). One worker at a time: a worker's records never
// resume after another's began, nobody handled anything while the active
// worker held a message, and the next worker's first message is the held
// one, redelivered. Classic and quorum queues.
func TestAMQPSingleActiveConsumerKeepsOrderAcrossKills(t *testing.T) {
	testenv.Integration(t)
	for _, quorum := range []bool{false, true} {
		for _, prefetch := range []int{10, 0} {
			t.Run(fmt.Sprintf("%s/prefetch_%d", queueKind(quorum), prefetch), func(t *testing.T) {
				keepsOrderAcrossKills(t, quorum, prefetch)
			})
		}
	}
}

// keepsOrderAcrossKills is TestAMQPSingleActiveConsumerKeepsOrderAcrossKills
// for one queue type and prefetch (0: the default, 1).
func keepsOrderAcrossKills(t *testing.T, quorum bool, prefetch int) {
	records, kills, total := runOrderKills(t, quorum, true, prefetch)
	prefetch = max(prefetch, 1) // the default
	v := judgeOrder(records)
	if v.distinct != total {
		t.Errorf("lost %d of %d", total-v.distinct, total)
	}
	if v.inversions != 0 {
		t.Errorf("%d inversions; first: %s", v.inversions, v.firstInversion)
	}
	if v.dupNotRedelivered != 0 || v.duplicates > len(kills)*prefetch {
		t.Errorf("%d duplicates (%d not redeliveries), for %d kills at prefetch %d", v.duplicates, v.dupNotRedelivered, len(kills), prefetch)
	}
	if len(kills) < 6 {
		t.Errorf("%d kills, want 6 (4 holds, 2 at points of the stream)", len(kills))
	}
	done := map[string]bool{}
	runs, resumed, firstResumed := 0, 0, ""
	for i, r := range records {
		if i > 0 && r.worker == records[i-1].worker {
			continue
		}
		runs++
		if done[r.worker] {
			if resumed++; firstResumed == "" {
				firstResumed = fmt.Sprintf("record %d: %s", i, r.worker)
			}
		}
		if i > 0 {
			done[records[i-1].worker] = true
		}
	}
	if resumed > 0 {
		t.Errorf("%d times a worker handled messages again after another took over (first %s): two consumers were active", resumed, firstResumed)
	}
	for _, k := range kills {
		if k.hold == nil {
			continue
		}
		if k.at != k.hold.logged {
			t.Errorf("%d messages handled while %s held %s:%d: another consumer was active", k.at-k.hold.logged, k.worker, k.hold.key, k.hold.n)
		}
		if k.at >= len(records) {
			t.Errorf("nothing handled after %s was killed", k.worker)
			continue
		}
		next := records[k.at]
		if next.key != k.hold.key || next.n != k.hold.n || !next.redelivered || next.worker == k.worker {
			t.Errorf("after %s was killed holding %s:%d, the next handled was %+v; want the held one, redelivered, by another worker", k.worker, k.hold.key, k.hold.n, next)
		}
	}
	if runs < len(kills)+1 {
		t.Errorf("%d runs of one worker for %d kills: the queue did not move on to another worker each time", runs, len(kills))
	}
	t.Logf("%d handled (%d distinct), %d kills, %d runs of one worker, %d duplicates, %d inversions", len(records), v.distinct, len(kills), runs, v.duplicates, v.inversions)
}

// The user's report, without amqp.single_active_consumer: the same
// workers, messages and kills (each hold lasting until another worker
// handled a later message of the held key) put messages after later ones
// of their key; at least one per hold, every run. Nothing is lost.
func TestAMQPCompetingConsumersReorderAcrossKills(t *testing.T) {
	records, kills, total := runOrderKills(t, false, false, 10)
	v := judgeOrder(records)
	if v.distinct != total {
		t.Errorf("lost %d of %d", total-v.distinct, total)
	}
	holds := 0
	for _, k := range kills {
		if k.hold != nil {
			holds++
		}
	}
	if holds < 4 || v.inversions < holds {
		t.Errorf("%d inversions for %d holds: competing consumers kept order", v.inversions, holds)
	}
	switches := 0
	for i := 1; i < len(records); i++ {
		if records[i].worker != records[i-1].worker {
			switches++
		}
	}
	t.Logf("%d handled (%d distinct), %d kills, %d inversions (first: %s), %d duplicates, %d switches between workers", len(records), v.distinct, len(kills), v.inversions, v.firstInversion, v.duplicates, switches)
}
