package middleware_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/idempotency"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/pgstore"
)

// The consumer process of TestTransactionalIdempotencySurvivesSIGKILL: this
// test binary run again with IDEM_KILL_CHILD=1. It consumes IDEM_TOPIC in
// transactional mode; its handler inserts one row per delivery into
// IDEM_EFFECTS (no unique constraint: a second effect would be a second
// row). It prints what happens on stdout, one line each:
//
//	RAN <key>        the handler wrote its effect (not yet committed)
//	WROTE <key>      same, for IDEM_HOLD_AFTER_WRITE: then it hangs before the commit
//	COMMITTED <key>  for IDEM_HOLD_AFTER_COMMIT: committed, then it hangs before the ack
//	DUP <key>        redelivered, found completed, acked without running
//
// and exits once nothing arrived for IDEM_IDLE.
func TestIdempotencyKillChild(t *testing.T) {
	if os.Getenv("IDEM_KILL_CHILD") != "1" {
		t.Skip("the consumer process of TestTransactionalIdempotencySurvivesSIGKILL; runs only as its child")
	}
	os.Exit(runKillChild())
}

func runKillChild() int {
	fail := func(what string, err error) int {
		fmt.Fprintf(os.Stderr, "child: %s: %v\n", what, err)
		return 1
	}
	ctx := context.Background()
	cfg := killBrokerConfig(adapters.Kind(os.Getenv("IDEM_KIND")), os.Getenv("IDEM_KAFKA_BROKERS"))
	b, err := adapters.Open(ctx, cfg, nil)
	if err != nil {
		return fail("open broker", err)
	}
	defer b.Close()
	pool, err := pgxpool.New(ctx, os.Getenv("IDEM_PG_URL"))
	if err != nil {
		return fail("postgres", err)
	}
	defer pool.Close()
	store, err := pgstore.NewIdempotencyStore(ctx, pgstore.IdempotencyStoreConfig{Pool: pool, Table: os.Getenv("IDEM_TABLE")})
	if err != nil {
		return fail("store", err)
	}
	defer store.Close()

	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	seen := atomic.Bool{}
	touch := func() { last.Store(time.Now().UnixNano()); seen.Store(true) }
	idem, err := middleware.NewIdempotency(middleware.IdempotencyConfig{
		Store:         store,
		Transactional: true,
		OnDuplicate:   func(_ *message.Message, key string) { fmt.Println("DUP", key) },
	})
	if err != nil {
		return fail("idempotency", err)
	}
	retry, err := middleware.NewRetry(middleware.RetryConfig{InitialInterval: 10 * time.Millisecond})
	if err != nil {
		return fail("retry", err)
	}
	holdAfterWrite, holdAfterCommit := os.Getenv("IDEM_HOLD_AFTER_WRITE"), os.Getenv("IDEM_HOLD_AFTER_COMMIT")
	effects := os.Getenv("IDEM_EFFECTS")
	// Outermost: runs after the transaction committed, before the router acks.
	afterCommit := func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			touch()
			out, err := h(msg)
			if key := msg.Metadata.Get(idempotency.MetadataKey); err == nil && key == holdAfterCommit {
				fmt.Println("COMMITTED", key)
				time.Sleep(time.Hour) // SIGKILLed here: committed, never acked
			}
			return out, err
		}
	}
	r, err := message.NewRouter(message.RouterConfig{CloseTimeout: 5 * time.Second}, watermill.NopLogger{})
	if err != nil {
		return fail("router", err)
	}
	r.AddConsumerHandler("effects", os.Getenv("IDEM_TOPIC"), b.Subscriber, func(msg *message.Message) error {
		key := msg.Metadata.Get(idempotency.MetadataKey)
		tx, ok := pgstore.TxFromContext(msg.Context())
		if !ok {
			return fmt.Errorf("no transaction in the message context")
		}
		if _, err := tx.Exec(msg.Context(), "INSERT INTO "+effects+" (key, uuid) VALUES ($1, $2)", key, msg.UUID); err != nil {
			return err
		}
		if key == holdAfterWrite {
			fmt.Println("WROTE", key)
			time.Sleep(time.Hour) // SIGKILLed here: written, not committed
		}
		fmt.Println("RAN", key)
		return nil
	}).AddMiddleware(afterCommit, retry.Middleware, idem.Middleware)

	idle, _ := time.ParseDuration(os.Getenv("IDEM_IDLE"))
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		start := time.Now()
		for {
			time.Sleep(100 * time.Millisecond)
			quiet := time.Since(time.Unix(0, last.Load()))
			if (seen.Load() && quiet > idle) || time.Since(start) > 2*time.Minute {
				cancel()
				return
			}
		}
	}()
	if err := r.Run(runCtx); err != nil {
		return fail("run", err)
	}
	return 0
}

func killBrokerConfig(kind adapters.Kind, kafkaBrokers string) adapters.Config {
	cfg := adapters.Config{Broker: kind}
	cfg.Postgres.URL = os.Getenv("IDEM_PG_URL")
	cfg.Postgres.PollInterval = 20 * time.Millisecond
	cfg.AMQP.URL = os.Getenv("IDEM_AMQP_URL")
	if kafkaBrokers != "" {
		cfg.Kafka.Brokers = strings.Split(kafkaBrokers, ",")
	}
	// A SIGKILLed member's partitions move after the session timeout; 6s is
	// the least the broker accepts.
	cfg.Kafka.SessionTimeout = 6 * time.Second
	return cfg
}

// killChild is a running consumer process.
type killChild struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  []string
	news chan struct{}
	done chan error
	errb strings.Builder
}

func startKillChild(t *testing.T, env ...string) *killChild {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestIdempotencyKillChild$")
	cmd.Env = append(append(os.Environ(), "IDEM_KILL_CHILD=1"), env...)
	c := &killChild{cmd: cmd, news: make(chan struct{}, 1), done: make(chan error, 1)}
	cmd.Stderr = &c.errb
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			c.mu.Lock()
			c.out = append(c.out, sc.Text())
			c.mu.Unlock()
			select {
			case c.news <- struct{}{}:
			default:
			}
		}
		c.done <- cmd.Wait()
	}()
	return c
}

func (c *killChild) lines() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.out...)
}

func (c *killChild) has(line string) bool {
	for _, l := range c.lines() {
		if l == line {
			return true
		}
	}
	return false
}

func (c *killChild) count(line string) int {
	n := 0
	for _, l := range c.lines() {
		if l == line {
			n++
		}
	}
	return n
}

// waitLine waits for line on the child's stdout, then SIGKILLs the child.
func (c *killChild) killAt(t *testing.T, line string) {
	t.Helper()
	deadline := time.After(2 * time.Minute)
	for !c.has(line) {
		select {
		case <-c.news:
		case err := <-c.done:
			t.Fatalf("child exited (%v) before printing %q; stdout %q; stderr %s", err, line, c.lines(), c.errb.String())
		case <-deadline:
			t.Fatalf("child never printed %q; stdout %q; stderr %s", line, c.lines(), c.errb.String())
		}
	}
	require.NoError(t, c.cmd.Process.Kill()) // SIGKILL: no deferred function, no graceful anything
	<-c.done
}

func (c *killChild) waitExit(t *testing.T) {
	t.Helper()
	select {
	case err := <-c.done:
		require.NoError(t, err, "stdout %q; stderr %s", c.lines(), c.errb.String())
	case <-time.After(3 * time.Minute):
		t.Fatalf("child did not exit; stdout %q; stderr %s", c.lines(), c.errb.String())
	}
}

// Exactly-once effects, proven by killing the consumer with SIGKILL at the
// two places where at-least-once delivery usually duplicates or loses work:
//
//  1. kB: after the transaction that wrote its effect and completed its key
//     committed, before the broker got the ack. The broker redelivers kB; the
//     next consumer finds the key completed and acks it without running.
//  2. kC: after the handler wrote its effect, before the commit. PostgreSQL
//     rolls the write back (and frees the key at once: no lease to wait
//     for); the next consumer runs kC again.
//
// Each key's effect is in the table exactly once. On the PostgreSQL queue,
// RabbitMQ and Kafka (a standalone devkafka process, so the broker outlives
// the consumers).
func TestTransactionalIdempotencySurvivesSIGKILL(t *testing.T) {
	testenv.Integration(t)
	pgURL := testenv.PostgresURL(t)
	for _, kind := range []adapters.Kind{adapters.KindPostgres, adapters.KindAMQP, adapters.KindKafka} {
		t.Run(string(kind), func(t *testing.T) {
			env := []string{"IDEM_KIND=" + string(kind), "IDEM_PG_URL=" + pgURL, "IDEM_IDLE=3s"}
			var kafkaBrokers string
			switch kind {
			case adapters.KindAMQP:
				env = append(env, "IDEM_AMQP_URL="+testenv.AMQPURL(t))
			case adapters.KindKafka:
				kafkaBrokers = idemDevKafka(t)
				env = append(env, "IDEM_KAFKA_BROKERS="+kafkaBrokers)
			}
			ctx := context.Background()
			pool, err := pgxpool.New(ctx, pgURL)
			require.NoError(t, err)
			t.Cleanup(pool.Close)
			sfx := strings.ToLower(watermill.NewShortUUID())
			table, effects, topic := "antidote_idem_kill_"+sfx, "antidote_idem_kill_effects_"+sfx, "idem_kill_"+sfx
			_, err = pool.Exec(ctx, "CREATE TABLE "+effects+" (key TEXT NOT NULL, uuid TEXT NOT NULL)")
			require.NoError(t, err)
			t.Cleanup(func() {
				_, _ = pool.Exec(context.Background(), "DROP TABLE IF EXISTS "+effects)
				_, _ = pool.Exec(context.Background(), "DROP TABLE IF EXISTS "+table)
			})
			env = append(env, "IDEM_TABLE="+table, "IDEM_EFFECTS="+effects, "IDEM_TOPIC="+topic)

			cfg := killBrokerConfig(kind, kafkaBrokers)
			cfg.AMQP.URL = testenv.AMQPURL(t)
			cfg.Postgres.URL = pgURL
			b, err := adapters.Open(ctx, cfg, nil)
			require.NoError(t, err)
			t.Cleanup(func() { _ = b.Close() })
			if kind == adapters.KindAMQP {
				require.NoError(t, b.Subscriber.(message.SubscribeInitializer).SubscribeInitialize(topic))
			}
			var msgs []*message.Message
			for _, key := range []string{"kA", "kB", "kC"} {
				m := message.NewMessage(watermill.NewUUID(), []byte(`{"user_id":1,"msg":"Hello World"}`))
				m.Metadata.Set(idempotency.MetadataKey, key)
				m.Metadata.Set("partition_key", "one-partition") // Kafka: in order, on one partition
				msgs = append(msgs, m)
			}
			require.NoError(t, b.Publisher.Publish(topic, msgs...))

			first := startKillChild(t, append(env, "IDEM_HOLD_AFTER_COMMIT=kB")...)
			first.killAt(t, "COMMITTED kB")
			second := startKillChild(t, append(env, "IDEM_HOLD_AFTER_WRITE=kC")...)
			second.killAt(t, "WROTE kC")
			third := startKillChild(t, env...)
			third.waitExit(t)
			t.Logf("%s: first consumer %q (SIGKILL), second %q (SIGKILL), third %q", kind, first.lines(), second.lines(), third.lines())

			rows := map[string]int{}
			r, err := pool.Query(ctx, "SELECT key, count(*) FROM "+effects+" GROUP BY key")
			require.NoError(t, err)
			for r.Next() {
				var k string
				var n int
				require.NoError(t, r.Scan(&k, &n))
				rows[k] = n
			}
			require.NoError(t, r.Err())
			assert.Equal(t, map[string]int{"kA": 1, "kB": 1, "kC": 1}, rows, "each effect exactly once")

			assert.True(t, first.has("RAN kB"), "kB ran in the first consumer")
			assert.True(t, second.has("DUP kB"), "the redelivered kB was found completed and acked without running")
			assert.Zero(t, second.count("RAN kB")+third.count("RAN kB"), "kB never ran again")
			assert.Equal(t, 1, third.count("RAN kC"), "the rolled-back kC ran again, once")
			assert.Zero(t, third.count("DUP kC"))
		})
	}
}

// idemDevKafka starts `antidote devkafka` as its own process, so the broker
// outlives the consumers, and returns its address.
func idemDevKafka(t *testing.T) string {
	t.Helper()
	bin := t.TempDir() + "/antidote"
	build := exec.Command("go", "build", "-o", bin, "github.com/antidote-mq/antidote/cmd/antidote")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build antidote: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "devkafka", "--addr", "127.0.0.1:0", "--partitions", "4")
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	require.NoError(t, err, "devkafka said nothing")
	f := strings.Fields(line)
	require.True(t, len(f) >= 4 && f[1] == "listening", "unexpected devkafka output %q", line)
	return f[3]
}
