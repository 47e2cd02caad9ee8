package hello

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/poison"
)

// 10,000 messages with 1% poison of four kinds, on each real broker: every
// healthy message processed, every poison message in the DLQ exactly once
// with the right reason, the transient one processed after two retries,
// nothing lost, the run ends.
func TestPoisonRunSettlesEverything(t *testing.T) {
	const n, every = 10000, 100
	for _, kind := range []adapters.Kind{adapters.KindKafka, adapters.KindAMQP, adapters.KindPostgres} {
		t.Run(string(kind), func(t *testing.T) {
			needBroker(t, kind)
			dlqOut := filepath.Join(t.TempDir(), "dlq.jsonl")
			s, stderr, code := runExample(t, kind, "--messages", strconv.Itoa(n), "--poison-every", strconv.Itoa(every),
				"--dlq-out", dlqOut, "--topic", topic(t), "--json")
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			wantDead := ExpectedDeadLetters(n, every) // 75: 25 malformed, 25 wrong types, 25 panics
			if s.Published != n || s.DeadLettered != int64(wantDead) || s.Processed != int64(n-wantDead) {
				t.Fatalf("summary %+v, want %d dead-lettered and %d processed", s, wantDead, n-wantDead)
			}
			if s.Retries != 2*int64(n/every/4) { // each transient message: two retries
				t.Errorf("retries = %d, want %d", s.Retries, 2*(n/every/4))
			}
			letters := readLetters(t, dlqOut)
			if len(letters) != wantDead {
				t.Fatalf("%d letters in --dlq-out, want %d", len(letters), wantDead)
			}
			seen := map[string]bool{}
			reasons := map[string]int{}
			for _, l := range letters {
				if seen[l.UUID] {
					t.Errorf("%s dead-lettered twice", l.UUID)
				}
				seen[l.UUID] = true
				reason := l.Metadata[poison.KeyReason]
				reasons[reason]++
				switch {
				case strings.Contains(l.Payload, PanicMsg):
					if reason != string(poison.ReasonPanic) || l.Metadata[poison.KeyStack] == "" {
						t.Errorf("panic letter: reason %q, stack %d bytes", reason, len(l.Metadata[poison.KeyStack]))
					}
				case reason != string(poison.ReasonPermanent):
					t.Errorf("letter %q: reason %q, want permanent", l.Payload, reason)
				}
				if l.Metadata[poison.KeyOriginalTopic] == "" || l.Metadata[poison.KeyHandler] != "hello" || l.Metadata[poison.KeyError] == "" {
					t.Errorf("letter without its origin: %v", l.Metadata)
				}
			}
			t.Logf("%s: %+v, reasons %v", kind, s, reasons)
		})
	}
}

// 1,000 writes with every 10th published twice under the same idempotency
// key (a new message each time, as a relay re-sends): processed 1,000,
// duplicates skipped 100, on each broker.
func TestDuplicatesSkippedByKey(t *testing.T) {
	for _, kind := range []adapters.Kind{adapters.KindKafka, adapters.KindAMQP, adapters.KindPostgres} {
		t.Run(string(kind), func(t *testing.T) {
			needBroker(t, kind)
			s, stderr, code := runExample(t, kind, "--messages", "1000", "--duplicate-every", "10", "--poison-every", "0", "--topic", topic(t), "--json")
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			if s.Published != 1100 || s.Processed != 1000 || s.DuplicatesSkipped != 100 || s.DeadLettered != 0 {
				t.Fatalf("summary %+v, want published 1100, processed 1000, duplicates 100", s)
			}
		})
	}
}

// --stuck-every on each broker, with the broker's defaults and, on
// PostgreSQL, an ack deadline shorter than the breaker's hold: every stuck
// message is dead-lettered as retries_exhausted once, every other one
// processed, the queue table empty afterwards. (Before the fix, with
// ack_deadline 5s, watermill-sql deleted rows never delivered.)
func TestStuckMessagesAreDeadLettered(t *testing.T) {
	for _, kind := range []adapters.Kind{adapters.KindMemory, adapters.KindKafka, adapters.KindAMQP, adapters.KindPostgres} {
		t.Run(string(kind), func(t *testing.T) {
			needBroker(t, kind)
			tp := topic(t)
			dlqOut := filepath.Join(t.TempDir(), "dlq.jsonl")
			args := []string{"--messages", "60", "--stuck-every", "20", "--poison-every", "7", "--dlq-out", dlqOut, "--topic", tp, "--json"}
			if kind == adapters.KindPostgres {
				cfg := filepath.Join(t.TempDir(), "antidote.yaml")
				if err := os.WriteFile(cfg, []byte("postgres:\n  ack_deadline: 1s\n"), 0o644); err != nil {
					t.Fatal(err)
				}
				args = append(args, "--config", cfg)
			}
			s, stderr, code := runExample(t, kind, args...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			wantDead := ExpectedDeadLettersStuck(60, 7, 20)
			if s.Published != 60 || s.DeadLettered != int64(wantDead) || s.Processed != int64(60-wantDead) {
				t.Fatalf("summary %+v, want %d dead-lettered and %d processed", s, wantDead, 60-wantDead)
			}
			stuck := 0
			for _, l := range readLetters(t, dlqOut) {
				if strings.Contains(l.Payload, StuckMsg) {
					stuck++
					if got := l.Metadata[poison.KeyReason]; got != string(poison.ReasonRetriesExhausted) {
						t.Errorf("stuck letter: reason %q", got)
					}
				}
			}
			if stuck != 3 {
				t.Errorf("%d stuck letters, want 3", stuck)
			}
			if kind == adapters.KindPostgres {
				conn, err := pgx.Connect(context.Background(), testenv.PostgresURL(t))
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close(context.Background())
				var rows int
				if err := conn.QueryRow(context.Background(), `SELECT count(*) FROM "antidote_queue_`+tp+`"`).Scan(&rows); err != nil {
					t.Fatal(err)
				}
				if rows != 0 {
					t.Errorf("%d rows left in the queue table", rows)
				}
				_, _ = conn.Exec(context.Background(), `DROP TABLE "antidote_queue_`+tp+`", "antidote_queue_`+tp+`.dlq"`)
			}
		})
	}
}
