package pgstore_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/antidote-mq/antidote/fingerprint"
	"github.com/antidote-mq/antidote/hospital"
	"github.com/antidote-mq/antidote/internal/testenv/hospitalstore"
	"github.com/antidote-mq/antidote/pgstore"
)

func newHospitalStore(t *testing.T) (*pgstore.HospitalStore, *pgxpool.Pool) {
	t.Helper()
	s, pool, _ := hospitalstore.New(t, "hosp_")
	return s, pool
}

// thisHour is the start of the hour the tests run in.
var thisHour = time.Now().UTC().Truncate(time.Hour)

func letter(i int, bug string) hospital.Letter {
	l := hospital.Letter{
		Identity: fmt.Sprintf("kafka:orders.dlq/0/%d", i), Broker: "kafka", DLQTopic: "orders.dlq",
		Format: hospital.FormatAntidote, UUID: fmt.Sprintf("u-%d", i), OriginalTopic: "orders", Handler: "orders",
		Reason: "permanent", Error: bug + fmt.Sprintf(" %d", i), ErrorType: "*errors.errorString", Attempts: 1,
		// In the current hour, never after now: the hour the group's rate
		// counts it in.
		LastFailedAt: thisHour.Add(time.Duration(i%60) * time.Microsecond),
		Payload:      []byte(fmt.Sprintf(`{"id":%d}`, i)), Metadata: map[string]string{"k": "v"}, State: hospital.StateDead,
	}
	l.Fingerprint = fingerprint.Of(fingerprint.Input{Handler: l.Handler, Reason: l.Reason, Error: l.Error, Payload: l.Payload})
	return l
}

// A letter put twice (ingest redelivered it) is one row and counts once in
// its group, even when four ingesters race with the same letters.
func TestHospitalStorePutIsIdempotent(t *testing.T) {
	s, _ := newHospitalStore(t)
	ctx := context.Background()
	const n = 100
	var wg sync.WaitGroup
	var mu sync.Mutex
	inserted := 0
	for w := 0; w < 4; w++ {
		wg.Go(func() {
			for i := 0; i < n; i++ {
				bug := "order not found"
				if i%4 == 0 {
					bug = "stock negative"
				}
				ok, err := s.Put(ctx, letter(i, bug))
				if err != nil {
					t.Error(err)
					return
				}
				if ok {
					mu.Lock()
					inserted++
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if inserted != n {
		t.Errorf("%d letters reported new, want %d", inserted, n)
	}
	page, err := s.Groups(ctx, hospital.GroupQuery{Order: hospital.ByCount})
	if err != nil {
		t.Fatal(err)
	}
	if page.Total != 2 || len(page.Groups) != 2 {
		t.Fatalf("%d groups (%d listed), want 2: %+v", page.Total, len(page.Groups), page.Groups)
	}
	if g := page.Groups[0]; g.Count != 75 || g.Dead != 75 || g.Fingerprint.Message != "order not found <n>" {
		t.Errorf("first group %+v, want 75 'order not found <n>'", g)
	}
	if g := page.Groups[1]; g.Count != 25 || g.Dead != 25 || g.Fingerprint.Message != "stock negative <n>" {
		t.Errorf("second group %+v, want 25 'stock negative <n>'", g)
	}
	// Every letter arrived this hour: the sparkline's last point.
	for _, order := range []hospital.GroupOrder{hospital.ByRecent, hospital.ByLastSeen} {
		page, err := s.Groups(ctx, hospital.GroupQuery{Order: order})
		if err != nil {
			t.Fatal(err)
		}
		var sum int64
		for _, g := range page.Groups {
			if len(g.Recent) != hospital.RecentHours || g.Recent[hospital.RecentHours-1] != g.Count {
				t.Errorf("%s: group %s recent %v, want %d in the last hour", order, g.Fingerprint.Message, g.Recent, g.Count)
			}
			sum += g.Count
		}
		if sum != n {
			t.Errorf("%s: %d letters over the groups, want %d", order, sum, n)
		}
		if order == hospital.ByRecent && page.Groups[0].Count != 75 {
			t.Errorf("by recent: %s first", page.Groups[0].Fingerprint.Message)
		}
	}
	if _, err := s.Groups(ctx, hospital.GroupQuery{Order: "bogus"}); err == nil {
		t.Error("an unknown order accepted")
	}
}

// Pages walk every letter once, both ways, filtered by group.
func TestHospitalStoreLettersPages(t *testing.T) {
	s, _ := newHospitalStore(t)
	ctx := context.Background()
	const n = 130
	var fp string
	for i := 0; i < n; i++ {
		bug := "a"
		if i%2 == 1 {
			bug = "b"
		}
		l := letter(i, bug)
		if bug == "b" {
			fp = l.Fingerprint.ID
		}
		if _, err := s.Put(ctx, l); err != nil {
			t.Fatal(err)
		}
	}
	for _, newest := range []bool{false, true} {
		for _, q := range []hospital.LetterQuery{{}, {Fingerprint: fp}} {
			q.Newest, q.Limit = newest, 20
			seen := map[string]bool{}
			var prev int64
			pages := 0
			for {
				page, err := s.Letters(ctx, q)
				if err != nil {
					t.Fatal(err)
				}
				pages++
				for _, l := range page.Letters {
					if seen[l.UUID] {
						t.Fatalf("%s listed twice", l.UUID)
					}
					seen[l.UUID] = true
					if prev != 0 && (newest && l.ID >= prev || !newest && l.ID <= prev) {
						t.Fatalf("ids out of order: %d after %d (newest %v)", l.ID, prev, newest)
					}
					prev = l.ID
					if q.Fingerprint != "" && l.Fingerprint.ID != fp {
						t.Fatalf("letter of group %s listed for %s", l.Fingerprint.ID, fp)
					}
					if l.Payload != nil || l.Stack != "" {
						t.Fatal("a listing carries payloads")
					}
				}
				if page.Next == 0 {
					break
				}
				q.After = page.Next
			}
			want := n
			if q.Fingerprint != "" {
				want = n / 2
			}
			if len(seen) != want || pages != (want+19)/20 {
				t.Errorf("query %+v: %d letters in %d pages, want %d in %d", q, len(seen), pages, want, (want+19)/20)
			}
		}
	}
}

// What a foreign producer may put in a letter (NUL bytes, invalid UTF-8,
// in any field or key) is stored and read back, never refused: a refused
// letter would stall ingest.
func TestHospitalStoreHostileLetter(t *testing.T) {
	s, _ := newHospitalStore(t)
	ctx := context.Background()
	l := letter(1, "bad\x00byte \xff\xfe")
	l.Handler, l.Stack, l.Producer = "h\x00", "st\xffack", "p\xc3"
	l.Metadata = map[string]string{"k\x00": "v\xff", "null": "\x00"}
	l.Payload = []byte{0, 1, 2, 0xff}
	l.Fingerprint = fingerprint.Of(fingerprint.Input{Handler: l.Handler, Error: l.Error, Payload: l.Payload})
	if ok, err := s.Put(ctx, l); err != nil || !ok {
		t.Fatalf("put: %v %v", ok, err)
	}
	page, err := s.Letters(ctx, hospital.LetterQuery{})
	if err != nil || len(page.Letters) != 1 {
		t.Fatalf("list: %v %d", err, len(page.Letters))
	}
	got, err := s.Letter(ctx, page.Letters[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	if string(got.Payload) != string(l.Payload) {
		t.Errorf("payload %q, want %q", got.Payload, l.Payload)
	}
	if got.Error != "bad\uFFFDbyte \uFFFD 1" || got.Metadata["null"] != "\x00" || len(got.Metadata) != 2 {
		t.Errorf("read back error %q metadata %q", got.Error, got.Metadata)
	}
	if got.Fingerprint.ID != l.Fingerprint.ID || got.Fingerprint.Message == "" {
		t.Errorf("fingerprint %+v, want %+v", got.Fingerprint, l.Fingerprint)
	}
	if _, err := s.Letter(ctx, got.ID+1000); err == nil || !strings.Contains(err.Error(), "no such letter") {
		t.Errorf("missing letter: %v", err)
	}
}

func TestHospitalStoreConfigValidates(t *testing.T) {
	ctx := context.Background()
	_, err := pgstore.NewHospitalStore(ctx, pgstore.HospitalStoreConfig{URL: "postgres://x@127.0.0.1/y", Table: strings.Repeat("t", 50)})
	if err == nil || !strings.Contains(err.Error(), "63-byte") {
		t.Errorf("a table prefix too long for its index names: %v", err)
	}
	if _, err := pgstore.NewHospitalStore(ctx, pgstore.HospitalStoreConfig{}); err == nil {
		t.Error("no database accepted")
	}
}

// A group's first and last seen are when its letters failed, not when
// they were ingested, and its hourly rates count by failure hour; a letter
// that gives no failure time, or one after its ingest, counts at its ingest.
func TestHospitalStoreGroupSeenIsFailureTime(t *testing.T) {
	s, _ := newHospitalStore(t)
	ctx := context.Background()
	t1, t2, t3 := thisHour.Add(-5*time.Hour), thisHour.Add(-3*time.Hour), thisHour.Add(-2*time.Hour)
	// Ingested newest first: ingest order is not failure order.
	for i, at := range []time.Time{t3, t1, t2} {
		l := letter(i, "order not found")
		l.FirstFailedAt, l.LastFailedAt = at.Add(-time.Minute), at
		if _, err := s.Put(ctx, l); err != nil {
			t.Fatal(err)
		}
	}
	page, err := s.Groups(ctx, hospital.GroupQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Groups) != 1 {
		t.Fatalf("%d groups, want 1", len(page.Groups))
	}
	g := page.Groups[0]
	if !g.FirstSeen.Equal(t1.Add(-time.Minute)) || !g.LastSeen.Equal(t3) {
		t.Errorf("first seen %s, last seen %s; want %s and %s (the failures)", g.FirstSeen, g.LastSeen, t1.Add(-time.Minute), t3)
	}
	ago := func(t time.Time) int { return hospital.RecentHours - 1 - int(thisHour.Sub(t)/time.Hour) }
	for _, at := range []time.Time{t1, t2, t3} {
		if g.Recent[ago(at)] != 1 {
			t.Errorf("recent %v: want 1 letter %d hours ago", g.Recent, int(thisHour.Sub(at)/time.Hour))
		}
	}
	// No failure time, and one in the future: both count when ingested.
	before := time.Now()
	for i, at := range []time.Time{{}, time.Now().Add(48 * time.Hour)} {
		l := letter(10+i, "stock negative")
		l.FirstFailedAt, l.LastFailedAt = at, at
		if _, err := s.Put(ctx, l); err != nil {
			t.Fatal(err)
		}
	}
	page, err = s.Groups(ctx, hospital.GroupQuery{Order: hospital.ByLastSeen})
	if err != nil {
		t.Fatal(err)
	}
	g = page.Groups[0]
	if g.Fingerprint.Message != "stock negative <n>" || g.FirstSeen.Before(before.Add(-time.Second)) || g.LastSeen.After(time.Now()) {
		t.Errorf("group %q first seen %s, last seen %s: want both at ingest, after %s and not after now", g.Fingerprint.Message, g.FirstSeen, g.LastSeen, before)
	}
}

// A letter redelivered by a broker without positions (RabbitMQ, after an
// ingester died before its ack) is the letter stored before with the same
// digest; a first delivery is new whatever its digest, so two letters with
// the same bytes are two letters.
func TestHospitalStoreRedeliveryFindsItsTwinByDigest(t *testing.T) {
	s, _ := newHospitalStore(t)
	ctx := context.Background()
	put := func(identity, digest string, redelivered bool) bool {
		t.Helper()
		l := letter(1, "order not found")
		l.Identity, l.Digest, l.Redelivered = identity, digest, redelivered
		ok, err := s.Put(ctx, l)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	if !put("amqp:q#d1/a", "d1", false) || !put("amqp:q#d1/b", "d1", false) {
		t.Fatal("a first delivery was not stored as new")
	}
	if put("amqp:q#d1/c", "d1", true) {
		t.Error("a redelivery of a stored letter was stored again")
	}
	if !put("amqp:q#d2/d", "d2", true) {
		t.Error("a redelivery of a letter never stored was not stored")
	}
	// Four ingesters racing with the redelivery of one new letter store it once.
	var wg sync.WaitGroup
	var mu sync.Mutex
	n := 0
	for w := range 4 {
		wg.Go(func() {
			if put(fmt.Sprintf("amqp:q#d3/%d", w), "d3", true) {
				mu.Lock()
				n++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if n != 1 {
		t.Errorf("a redelivery raced by 4 ingesters stored %d times, want 1", n)
	}
	page, err := s.Letters(ctx, hospital.LetterQuery{Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Letters) != 4 {
		t.Errorf("%d letters stored, want 4 (two first deliveries of d1, d2, d3)", len(page.Letters))
	}
}

// The selection fields a CLI filter needs select in the store as Match
// does in memory.
func TestHospitalStoreLettersFilters(t *testing.T) {
	s, _ := newHospitalStore(t)
	ctx := context.Background()
	var all []hospital.Letter
	for i := range 12 {
		l := letter(i, []string{"order not found", "stock negative", "bad json"}[i%3])
		l.Reason = []string{"permanent", "panic"}[i%2]
		l.ErrorType = []string{"*errors.errorString", "*json.SyntaxError", "*strconv.NumError"}[i%3]
		l.LastFailedAt = thisHour.Add(-time.Duration(i) * time.Hour)
		if _, err := s.Put(ctx, l); err != nil {
			t.Fatal(err)
		}
	}
	page, err := s.Letters(ctx, hospital.LetterQuery{Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	all = page.Letters
	for _, q := range []hospital.LetterQuery{
		{Reasons: []string{"panic"}},
		{ErrorTypes: []string{"*json.SyntaxError", "*strconv.NumError"}},
		{UUIDs: []string{"u-3", "u-4", "nope"}},
		{IDs: []int64{all[0].ID, all[5].ID}},
		{Handlers: []string{"orders"}, Reasons: []string{"permanent"}, ErrorTypes: []string{"*errors.errorString"}},
		{FailedSince: thisHour.Add(-4 * time.Hour)},
		{FailedUntil: thisHour.Add(-4 * time.Hour), FailedSince: thisHour.Add(-8 * time.Hour)},
	} {
		var want []string
		for _, l := range all {
			if q.Match(l) {
				want = append(want, l.UUID)
			}
		}
		q.Limit = 100
		page, err := s.Letters(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, l := range page.Letters {
			got = append(got, l.UUID)
		}
		if strings.Join(got, ",") != strings.Join(want, ",") || len(want) == 0 || len(want) == len(all) {
			t.Errorf("query %+v: store selects %v, Match %v (want a proper subset)", q, got, want)
		}
	}
}
