package hospital_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/hospital"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/internal/testenv/brokers"
	"github.com/antidote-mq/antidote/internal/testenv/hospitalstore"
	"github.com/antidote-mq/antidote/pgstore"
)

// The ingester as a process of its own, for TestIngestKilled: the test
// binary run again with HOSPITAL_INGEST_CHILD set.
func TestMain(m *testing.M) {
	if os.Getenv("HOSPITAL_INGEST_CHILD") == "1" {
		os.Exit(ingestChild())
	}
	os.Exit(m.Run())
}

func ingestChild() int {
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
	store, err := pgstore.NewHospitalStore(ctx, pgstore.HospitalStoreConfig{URL: os.Getenv("HOSPITAL_URL"), Table: os.Getenv("HOSPITAL_TABLE")})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	_, err = hospital.Ingest(ctx, hospital.IngestConfig{Subscriber: b.LetterSubscriber(), Store: store,
		Topics: []string{os.Getenv("HOSPITAL_TOPIC")}, Broker: string(cfg.Broker)})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// An ingester killed with SIGKILL in the middle of a DLQ, then started
// again: every letter is stored exactly once. On each broker.
func TestIngestKilled(t *testing.T) {
	testenv.Integration(t)
	for _, kind := range brokers.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			cfg := brokers.Config(t, kind, brokers.KafkaCluster(2))
			b := brokers.Open(t, cfg)
			topic := brokers.Topic("killed_")
			dlq := topic + ".dlq"
			const n = 1500
			msgs := letters(topic, n)
			for i := 0; i < len(msgs); i += 100 {
				if err := b.Publisher.Publish(dlq, msgs[i:min(i+100, len(msgs))]...); err != nil {
					t.Fatal(err)
				}
			}
			url := testenv.PostgresURL(t)
			store, pool, table := hospitalstore.New(t, "hosp_")
			stored := func() int {
				var c int
				if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM "`+table+`_letters"`).Scan(&c); err != nil {
					t.Fatal(err)
				}
				return c
			}

			env := append(os.Environ(), "HOSPITAL_INGEST_CHILD=1", "HOSPITAL_URL="+url, "HOSPITAL_TABLE="+table, "HOSPITAL_TOPIC="+dlq,
				"ANTIDOTE_BROKER="+string(kind), "ANTIDOTE_AMQP_URL="+cfg.AMQP.URL, "ANTIDOTE_POSTGRES_URL="+cfg.Postgres.URL,
				"ANTIDOTE_KAFKA_BROKERS="+strings.Join(cfg.Kafka.Brokers, ","), "ANTIDOTE_KAFKA_CONSUMER_GROUP=antidote-hospital")
			start := func() *exec.Cmd {
				cmd := exec.Command(os.Args[0], "-test.run=^$")
				cmd.Env = env
				cmd.Stderr = os.Stderr
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				return cmd
			}
			first := start()
			testenv.Eventually(t, 60*time.Second, "a third of the letters stored", func() bool { return stored() >= len(msgs)/3 })
			if err := first.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			_ = first.Wait()
			atKill := stored()
			if atKill >= len(msgs) {
				t.Fatalf("all %d letters stored before the kill: the test killed nothing mid-way", atKill)
			}
			second := start()
			defer func() { _ = second.Process.Kill(); _ = second.Wait() }()
			testenv.Eventually(t, 90*time.Second, "every letter stored", func() bool { return stored() >= len(msgs) })
			page, err := store.Groups(context.Background(), hospital.GroupQuery{})
			if err != nil {
				t.Fatal(err)
			}
			var total int64
			for _, g := range page.Groups {
				total += g.Count
			}
			if got := stored(); got != len(msgs) || total != int64(len(msgs)) {
				t.Errorf("%d letters stored, %d counted in groups, want %d each (killed at %d)", got, total, len(msgs), atKill)
			}
			var distinct int
			if err := pool.QueryRow(context.Background(), `SELECT count(DISTINCT uuid) FROM "`+table+`_letters"`).Scan(&distinct); err != nil {
				t.Fatal(err)
			}
			if distinct != len(msgs) {
				t.Errorf("%d distinct letters, want %d", distinct, len(msgs))
			}
			t.Logf("killed with %d of %d stored", atKill, len(msgs))
		})
	}
}
