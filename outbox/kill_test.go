package outbox_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/internal/testenv/brokers"
	"github.com/antidote-mq/antidote/outbox"
)

func TestMain(m *testing.M) {
	if os.Getenv("OUTBOX_RELAY_CHILD") == "1" {
		os.Exit(relayChild())
	}
	os.Exit(m.Run())
}

// relayChild is a relay process, for TestRelayKilled.
func relayChild() int {
	ctx := context.Background()
	cfg, err := adapters.ConfigFromEnv("")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	b, err := adapters.Open(ctx, cfg, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	pool, err := pgxpool.New(ctx, os.Getenv("OUTBOX_URL"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ob, err := outbox.New(outbox.Config{Table: os.Getenv("OUTBOX_TABLE")})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	r, err := outbox.NewRelay(ctx, outbox.RelayConfig{Pool: pool, Outbox: ob, Publisher: slowPublisher{b.Publisher}, Service: "relay-child",
		BatchSize: 50, Lease: 2 * time.Second, PollInterval: 10 * time.Millisecond})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	_ = r.Run(ctx)
	return 0
}

// slowPublisher takes a millisecond per message, so a kill lands mid-batch.
type slowPublisher struct{ message.Publisher }

func (p slowPublisher) Publish(topic string, msgs ...*message.Message) error {
	time.Sleep(time.Millisecond)
	return p.Publisher.Publish(topic, msgs...)
}

// A relay killed with SIGKILL in the middle of a batch, on each broker:
// its claimed rows return after the lease and another relay sends them;
// nothing is lost, and the copies (rows published but not marked when it
// died) are at most the 32 a relay publishes ahead of its marks, each with
// its message id for the consumer's idempotency.
func TestRelayKilled(t *testing.T) {
	testenv.Integration(t)
	for _, kind := range brokers.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			f := newFixture(t)
			cfg := brokers.Config(t, kind, brokers.KafkaCluster(2))
			b := brokers.Open(t, cfg)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			topic := brokers.Topic("killed_")
			got := receive(t, ctx, b.Subscriber, topic)
			const n = 600
			for i := 0; i < n; i++ {
				f.order(t, topic, fmt.Sprintf("k-%03d", i), true)
			}
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), "OUTBOX_RELAY_CHILD=1", "OUTBOX_URL="+testenv.PostgresURL(t), "OUTBOX_TABLE="+f.table,
				"ANTIDOTE_BROKER="+string(kind), "ANTIDOTE_AMQP_URL="+cfg.AMQP.URL, "ANTIDOTE_POSTGRES_URL="+cfg.Postgres.URL,
				"ANTIDOTE_KAFKA_BROKERS="+strings.Join(cfg.Kafka.Brokers, ","))
			cmd.Stderr = os.Stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			testenv.Eventually(t, 60*time.Second, "a third sent", func() bool { return got.distinct() >= n/3 })
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			_ = cmd.Wait()
			atKill := got.distinct()
			if atKill >= n {
				t.Fatalf("everything sent before the kill")
			}
			r := f.relay(t, b.Publisher, func(c *outbox.RelayConfig) { c.Instance = "survivor-" + watermill.NewShortUUID() })
			go func() { _ = r.Run(ctx) }()
			testenv.Eventually(t, 60*time.Second, "every row sent", func() bool { return got.distinct() >= n })
			testenv.Eventually(t, 30*time.Second, "every row marked", func() bool { st, _ := r.Stats(ctx); return st.Pending == 0 })
			// Rows go out one by one and are marked in order, at most 32
			// behind the publishes: at most those were published and not
			// marked when the relay died.
			if copies := got.copies(); copies > 32 {
				t.Errorf("%d copies after one kill, more than the 32 rows a relay publishes ahead of its marks", copies)
			}
			if got.distinct() != n {
				t.Errorf("%d distinct messages, want %d", got.distinct(), n)
			}
			t.Logf("killed at %d of %d sent; %d copies", atKill, n, got.copies())
		})
	}
}

// A relay killed with SIGKILL in the middle of a batch while another relay
// runs, on each broker: the rows it held go out (after its lease) before
// any later row of their keys, so each key arrives in order; nothing is
// lost, copies stay within the 32 a relay publishes ahead of its marks.
// Against the relay before ordering keys, the survivor sends the later rows
// of the dead relay's keys during its lease: inversions.
func TestRelayKilledKeepsKeyOrder(t *testing.T) {
	testenv.Integration(t)
	for _, kind := range brokers.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			f := newFixture(t)
			cfg := brokers.Config(t, kind, brokers.KafkaCluster(2))
			b := brokers.Open(t, cfg)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			topic := brokers.Topic("killkey_")
			got := receiveOrder(t, ctx, b.Subscriber, topic)
			keys := []string{""}
			for i := 0; i < 12; i++ {
				keys = append(keys, fmt.Sprintf("acct-%02d", i))
			}
			msgs := interleaved(50, keys...)
			n := len(msgs)
			f.addEach(t, topic, msgs...)
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), "OUTBOX_RELAY_CHILD=1", "OUTBOX_URL="+testenv.PostgresURL(t), "OUTBOX_TABLE="+f.table,
				"ANTIDOTE_BROKER="+string(kind), "ANTIDOTE_AMQP_URL="+cfg.AMQP.URL, "ANTIDOTE_POSTGRES_URL="+cfg.Postgres.URL,
				"ANTIDOTE_KAFKA_BROKERS="+strings.Join(cfg.Kafka.Brokers, ","))
			cmd.Stderr = os.Stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			testenv.Eventually(t, 60*time.Second, "the child relaying", func() bool { return got.distinct() >= 20 })
			// The survivor runs beside it before the kill and after (small
			// batches: it leaves keys to the child).
			r := f.relay(t, slowPublisher{b.Publisher}, func(c *outbox.RelayConfig) {
				c.Instance = "survivor-" + watermill.NewShortUUID()
				c.BatchSize = 10
			})
			go func() { _ = r.Run(ctx) }()
			childHolds := func() int {
				var held int
				if err := f.pool.QueryRow(ctx, `SELECT count(*) FROM `+f.table+` WHERE sent_at IS NULL AND locked_by LIKE 'relay-child/%'`).Scan(&held); err != nil {
					t.Fatal(err)
				}
				return held
			}
			// Killed with a third sent, while it holds rows.
			testenv.Eventually(t, 60*time.Second, "a third sent and the child holding rows", func() bool { return got.distinct() >= n/3 && childHolds() >= 5 })
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			_ = cmd.Wait()
			held := childHolds()
			atKill := got.distinct()
			if held == 0 || atKill >= n {
				t.Fatalf("the kill left %d rows held by the child, %d of %d sent: nothing to test", held, atKill, n)
			}
			testenv.Eventually(t, 60*time.Second, "every row sent", func() bool { return got.distinct() >= n })
			testenv.Eventually(t, 30*time.Second, "every row marked", func() bool { st, _ := r.Stats(ctx); return st.Pending == 0 })
			if inv, ex := got.inversions(); inv != 0 {
				t.Errorf("%d inversions: %v", inv, ex)
			}
			if got.distinct() != n || got.dups() > 32 {
				t.Errorf("%d distinct of %d, %d copies (at most 32)", got.distinct(), n, got.dups())
			}
			t.Logf("killed holding %d rows, %d of %d sent; %d copies", held, atKill, n, got.dups())
		})
	}
}
