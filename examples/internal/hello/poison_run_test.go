package hello

import (
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/antidote-mq/antidote/adapters"
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
			s, stderr, code := runExample(t, kind, "--messages", "1000", "--duplicate-every", "10", "--topic", topic(t), "--json")
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			if s.Published != 1100 || s.Processed != 1000 || s.DuplicatesSkipped != 100 || s.DeadLettered != 0 {
				t.Fatalf("summary %+v, want published 1100, processed 1000, duplicates 100", s)
			}
		})
	}
}
