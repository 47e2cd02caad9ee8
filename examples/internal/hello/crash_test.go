package hello

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/jackc/pgx/v5"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/poison"
)

// crashInput writes n valid lines for the run marker, line crashAt being one
// whose payload makes the handler exit the process.
func crashInput(t *testing.T, marker string, n, crashAt int) string {
	path := filepath.Join(t.TempDir(), "input.jsonl")
	var sb strings.Builder
	for i := 1; i <= n; i++ {
		msg := marker
		if i == crashAt {
			msg = marker + " CRASH"
		}
		fmt.Fprintf(&sb, "{\"user_id\":%d,\"msg\":%q}\n", i, msg)
	}
	if err := os.WriteFile(path, []byte(sb.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func readLetters(t *testing.T, path string) []Letter {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []Letter
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l Letter
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("bad --dlq-out line %q: %v", sc.Text(), err)
		}
		out = append(out, l)
	}
	return out
}

func sinkRows(t *testing.T, marker string) int {
	conn, err := pgx.Connect(context.Background(), testenv.PostgresURL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int
	if err := conn.QueryRow(context.Background(), "SELECT count(*) FROM "+SinkTable+" WHERE msg = $1", marker).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// A handler that calls os.Exit on one payload, restarted as a separate
// process each time: the payload is quarantined after the delivery limit
// (counts kept in PostgreSQL), everything else is processed.
func TestCrashLoopIsQuarantinedAcrossProcessRestarts(t *testing.T) {
	if testing.Short() {
		t.Skip("starts consumer processes; skipped with -short")
	}
	for _, kind := range []adapters.Kind{adapters.KindKafka, adapters.KindAMQP, adapters.KindPostgres} {
		t.Run(string(kind), func(t *testing.T) {
			testenv.PostgresURL(t) // sink and delivery counts live there
			needBroker(t, kind)
			var env []string
			idle := "3s"
			if kind == adapters.KindKafka {
				addr := devKafka(t)
				t.Setenv("ANTIDOTE_KAFKA_BROKERS", addr)
				t.Setenv("ANTIDOTE_KAFKA_SESSION_TIMEOUT", "6s")
				env = []string{"ANTIDOTE_KAFKA_BROKERS=" + addr, "ANTIDOTE_KAFKA_SESSION_TIMEOUT=6s"}
				idle = "15s" // a restarted member waits for the dead one's session to expire
			}
			marker := "crash-" + watermill.NewShortUUID()
			const n, crashAt = 60, 20
			tp := topic(t)
			p, stderr, code := runExample(t, kind, "--role", "producer", "--input", crashInput(t, marker, n, crashAt), "--topic", tp, "--json")
			if code != 0 || p.Published != n {
				t.Fatalf("producer: exit %d %+v %s", code, p, stderr)
			}
			dlqOut := filepath.Join(t.TempDir(), "dlq.jsonl")
			crashes := 0
			for life := 1; ; life++ {
				if life > 8 {
					t.Fatalf("still crashing after %d lives: the crash loop was not broken", life-1)
				}
				code, out, stderr := child(t, "antidote", kind, env, "--role", "consumer", "--topic", tp, "--crash-on", "CRASH",
					"--tracker", "postgres", "--sink", "postgres", "--dlq-out", dlqOut, "--idle", idle, "--json")
				if code == 3 {
					crashes++
					continue
				}
				if code != 0 {
					t.Fatalf("life %d: exit %d\nstdout: %s\nstderr: %s", life, code, out, stderr)
				}
				break
			}
			t.Logf("%s: quarantined after %d crashes", kind, crashes)
			// Default limit 3; on Kafka the cheap path may allow one more run.
			if crashes < 3 || crashes > 4 || (kind != adapters.KindKafka && crashes != 3) {
				t.Errorf("crashes = %d, want 3 (Kafka: 3 or 4)", crashes)
			}
			letters := readLetters(t, dlqOut)
			if len(letters) != 1 {
				t.Fatalf("%d dead letters, want exactly the crashing one: %+v", len(letters), letters)
			}
			if l := letters[0]; !strings.Contains(l.Payload, "CRASH") || l.Metadata[poison.KeyReason] != string(poison.ReasonCrashLoop) {
				t.Errorf("letter %+v", l)
			}
			if got := sinkRows(t, marker); got != n-1 {
				t.Errorf("sink has %d rows of this run, want %d: healthy messages lost", got, n-1)
			}
		})
	}
}

// Side by side on RabbitMQ: Watermill's Retry + PoisonQueue never see an
// error from a handler that kills the process, so the message comes back on
// every restart, forever; Antidote's guard quarantines it.
func TestWatermillPoisonQueueLoopsWhereAntidoteQuarantines(t *testing.T) {
	if testing.Short() {
		t.Skip("starts consumer processes; skipped with -short")
	}
	testenv.PostgresURL(t)
	needBroker(t, adapters.KindAMQP)
	marker := "side-" + watermill.NewShortUUID()
	tp := topic(t)
	if _, stderr, code := runExample(t, adapters.KindAMQP, "--role", "producer", "--input", crashInput(t, marker, 10, 5), "--topic", tp, "--json"); code != 0 {
		t.Fatalf("producer: %s", stderr)
	}
	const watermillLives = 5
	for life := 1; life <= watermillLives; life++ {
		code, _, stderr := child(t, "watermill", adapters.KindAMQP, []string{"HELLO_CHILD_TOPIC=" + tp})
		if code != 3 {
			t.Fatalf("Watermill life %d: exit %d (want 3, the crash): %s", life, code, stderr)
		}
	}
	// Still there: nothing reached Watermill's poison queue.
	dlqOut := filepath.Join(t.TempDir(), "dlq.jsonl")
	crashes := 0
	for life := 1; crashes <= 8; life++ {
		code, _, stderr := child(t, "antidote", adapters.KindAMQP, nil, "--role", "consumer", "--topic", tp, "--crash-on", "CRASH",
			"--tracker", "postgres", "--dlq-out", dlqOut, "--idle", "2s", "--json")
		if code == 0 {
			break
		}
		if code != 3 {
			t.Fatalf("Antidote life %d: exit %d: %s", life, code, stderr)
		}
		crashes++
	}
	if crashes != 3 {
		t.Errorf("Antidote crashed %d times before quarantine, want 3", crashes)
	}
	if l := readLetters(t, dlqOut); len(l) != 1 || l[0].Metadata[poison.KeyReason] != string(poison.ReasonCrashLoop) {
		t.Errorf("letters: %+v", l)
	}
	t.Logf("Watermill: %d restarts, crashed every time, poison queue empty; Antidote: quarantined after %d", watermillLives, crashes)
}
