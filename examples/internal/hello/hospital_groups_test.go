package hello

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/hospital"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/internal/testenv/brokers"
	"github.com/antidote-mq/antidote/internal/testenv/hospitalstore"
)

// The hospital groups by bug, not by pod: four runs of
// `go run ./examples/postgres --poison-every 10 --messages 200` (four
// producer processes, each its own producer instance) are ingested into
// one group per kind of poison that was dead-lettered (malformed JSON,
// wrong types, the handler's panic; the transient kind is healed by
// retries), each group first seen no later than its earliest letter's
// failure.
func TestFourRunsMakeOneGroupPerPoison(t *testing.T) {
	url := testenv.PostgresURL(t)
	bin := t.TempDir() + "/postgres"
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/antidote-mq/antidote/examples/postgres").CombinedOutput(); err != nil {
		t.Fatalf("build the example: %v\n%s", err, out)
	}
	topic := "fourruns_" + strings.ToLower(watermill.NewShortUUID())
	const runs, messages, every = 4, 200, 10
	for range runs {
		cmd := exec.Command(bin, "--poison-every", "10", "--messages", "200", "--topic", topic, "--idle", "3s", "--json")
		cmd.Env = append(os.Environ(), "ANTIDOTE_POSTGRES_URL="+url)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("run: %v\n%s", err, out)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		var sum struct {
			DeadLettered int `json:"dead_lettered"`
		}
		if err := json.Unmarshal([]byte(lines[len(lines)-1]), &sum); err != nil || sum.DeadLettered != ExpectedDeadLetters(messages, every) {
			t.Fatalf("run summary %s (%v): want %d dead-lettered", lines[len(lines)-1], err, ExpectedDeadLetters(messages, every))
		}
	}

	store, _, _ := hospitalstore.New(t, "hosp_")
	cfg := adapters.Config{Broker: adapters.KindPostgres, Postgres: adapters.PostgresConfig{URL: url}}
	b := brokers.Open(t, cfg)
	want := int64(runs * ExpectedDeadLetters(messages, every))
	st, err := hospital.Ingest(context.Background(), hospital.IngestConfig{Subscriber: b.LetterSubscriber(), Store: store, Topics: []string{topic + ".dlq"},
		Broker: "postgres", Idle: 3 * time.Second})
	if err != nil || st.Stored != want {
		t.Fatalf("ingest: %+v %v, want %d stored", st, err, want)
	}
	ctx := context.Background()
	page, err := store.Groups(ctx, hospital.GroupQuery{Order: hospital.ByCount, WithResolved: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Groups) != 3 {
		for _, g := range page.Groups {
			t.Logf("group %s: %d letters, %s %s %q producer %q", g.Fingerprint.ID, g.Count, g.Fingerprint.Reason, g.Fingerprint.ErrorType, g.Fingerprint.Message, g.Fingerprint.Producer)
		}
		t.Fatalf("%d groups, want 3: one per kind of poison dead-lettered", len(page.Groups))
	}
	for _, g := range page.Groups {
		if g.Count != want/3 {
			t.Errorf("group %s (%s %q): %d letters, want %d", g.Fingerprint.ID, g.Fingerprint.Reason, g.Fingerprint.Message, g.Count, want/3)
		}
		earliest := time.Time{}
		letters, err := store.Letters(ctx, hospital.LetterQuery{Fingerprint: g.Fingerprint.ID, Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range letters.Letters {
			if f := l.FirstFailed(); earliest.IsZero() || f.Before(earliest) {
				earliest = f
			}
		}
		if g.FirstSeen.After(earliest) || earliest.IsZero() {
			t.Errorf("group %s first seen %s, after its earliest letter's failure %s", g.Fingerprint.ID, g.FirstSeen, earliest)
		}
	}
}
