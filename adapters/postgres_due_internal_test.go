package adapters

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/jackc/pgx/v5"

	"github.com/antidote-mq/antidote/internal/testenv"
)

// postgresDueClause against every kind of metadata a foreign producer can
// write: the query never fails, malformed delays count as due, and valid
// ones (any fraction width, Z or an offset) are compared to the microsecond
// against the transaction's NOW().
func TestPostgresDueClause(t *testing.T) {
	url := testenv.PostgresURL(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	table := `"due_clause_` + watermill.NewShortUUID() + `"`
	if _, err := tx.Exec(ctx, `CREATE TEMP TABLE `+table+` (id TEXT, metadata JSON) ON COMMIT DROP`); err != nil {
		t.Fatal(err)
	}
	var now time.Time // NOW() is the transaction's start, the same in the query below
	if err := tx.QueryRow(ctx, `SELECT NOW()`).Scan(&now); err != nil {
		t.Fatal(err)
	}
	now = now.UTC()
	until := func(v string) string { return fmt.Sprintf(`{"_watermill_delayed_until":%q}`, v) }
	east, west := time.FixedZone("", 2*3600), time.FixedZone("", -(5*3600+30*60))
	var keys []string
	for i := range 10000 {
		keys = append(keys, fmt.Sprintf(`"k%d":"v%d"`, i, i))
	}
	manyKeys := "{" + strings.Join(keys, ",") + "}"
	big := strings.Repeat(`x\"_watermill_delayed_until\":\"2999-01-01T00:00:00Z\"\\`, 1<<20/52)
	future := `"_watermill_delayed_until":"2999-01-01T00:00:00Z"`

	type row struct {
		id, meta string
		due      bool
	}
	rows := []row{
		{"sql-null", "", true},
		{"json-null", `null`, true},
		{"json-string", `"text"`, true},
		{"json-number", `42`, true},
		{"json-array", `[1,"2999-01-01T00:00:00Z"]`, true},
		{"empty", `{}`, true},
		{"no-key", `{"a":"b"}`, true},
		// Written by this scheduler: nine digits, UTC.
		{"now", until(now.Format(PostgresDueLayout)), true},
		{"now-1us", until(now.Add(-time.Microsecond).Format(PostgresDueLayout)), true},
		{"now+1us", until(now.Add(time.Microsecond).Format(PostgresDueLayout)), false},
		{"now+1ms", until(now.Add(time.Millisecond).Format(PostgresDueLayout)), false},
		// Written by earlier versions (RFC3339Nano: trailing zeros cut) and by
		// delay.Message (RFC 3339, whole seconds, UTC or an offset).
		{"nano-past", until(now.Add(-100 * time.Millisecond).Truncate(100 * time.Millisecond).Format(time.RFC3339Nano)), true},
		{"nano-future", until(now.Add(200 * time.Millisecond).Truncate(100 * time.Millisecond).Format(time.RFC3339Nano)), false},
		{"seconds-past", until(now.Add(-time.Second).Format(time.RFC3339)), true},
		{"seconds-future", until(now.Add(2 * time.Second).Format(time.RFC3339)), false},
		{"offset-future", until(now.Add(time.Second).In(east).Format(time.RFC3339Nano)), false},
		{"offset-past", until(now.Add(-time.Second).In(west).Format(time.RFC3339Nano)), true},
		{"offset-west-future", until(now.Add(time.Second).In(west).Format(time.RFC3339Nano)), false},
		{"spaces-future", "{ \"_watermill_delayed_until\" :\n\t\"2999-01-01T00:00:00Z\" }", false},
		{"far-past", until("1970-01-01T00:00:00Z"), true},
		// Malformed: due, and never a failed query.
		{"bad-fields", until("2024-13-45T99:99:99Z"), true},
		{"bad-fields-future", until("2999-13-45T99:99:99Z"), true},
		{"too-many-digits", until("2999-01-01T00:00:00.1234567890Z"), true},
		{"no-zone", until("2999-01-01T00:00:00"), true},
		{"lowercase", until("2999-01-01t00:00:00z"), true},
		{"offset-out-of-range", until("2999-01-01T00:00:00+16:00"), true},
		{"words", until("tomorrow"), true},
		{"empty-value", until(""), true},
		{"nul-in-value", `{"_watermill_delayed_until":"2999-01-01T00:00:00\u0000Z"}`, true},
		{"escaped-digit", `{"_watermill_delayed_until":"\u0032999-01-01T00:00:00Z"}`, true},
		{"surrogate-in-value", `{"_watermill_delayed_until":"\ud800"}`, true},
		{"number", `{"_watermill_delayed_until":29990101}`, true},
		{"null", `{"_watermill_delayed_until":null}`, true},
		{"true", `{"_watermill_delayed_until":true}`, true},
		{"object", `{"_watermill_delayed_until":{"at":"2999-01-01T00:00:00Z"}}`, true},
		{"array", `{"_watermill_delayed_until":["2999-01-01T00:00:00Z"]}`, true},
		// The key only as a whole key: not inside another string.
		{"key-in-value", `{"x":"\"_watermill_delayed_until\":\"2999-01-01T00:00:00Z\""}`, true},
		{"key-in-key", `{"x\"_watermill_delayed_until":"2999-01-01T00:00:00Z"}`, true},
		{"key-as-value", `{"x\\":"_watermill_delayed_until","y":"2999-01-01T00:00:00Z"}`, true},
		{"backslashes-elsewhere", `{"x\\\\":"1",` + future + `}`, false},
		{"key-in-key-then-real", `{"x\"_watermill_delayed_until":"2999-01-01T00:00:00Z","_watermill_delayed_until":"2000-01-01T00:00:00Z"}`, true},
		// Whatever else is in the document does not matter.
		{"nul-elsewhere-future", `{"k\u0000":"v\u0000",` + future + `}`, false},
		{"nul-elsewhere", `{"k\u0000":"v\u0000"}`, true},
		{"surrogates-elsewhere-future", `{"k\ud800":"v\udc00",` + future + `}`, false},
		{"surrogates-elsewhere", `{"k\udfff":"\ud800x"}`, true},
		{"many-keys", manyKeys, true},
		{"many-keys-future", manyKeys[:len(manyKeys)-1] + "," + future + "}", false},
		{"1MB-value", `{"big":"` + big + `"}`, true},
		{"1MB-value-future", `{"big":"` + big + `",` + future + `}`, false},
	}
	for _, r := range rows {
		var meta any
		if r.id != "sql-null" {
			meta = r.meta
		}
		if _, err := tx.Exec(ctx, `INSERT INTO `+table+` (id, metadata) VALUES ($1, $2)`, r.id, meta); err != nil {
			t.Fatalf("%s: %v", r.id, err)
		}
	}
	res, err := tx.Query(ctx, `SELECT id FROM `+table+` WHERE `+postgresDueClause)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(res, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("the due clause failed: %v", err)
	}
	due := map[string]bool{}
	for _, id := range ids {
		due[id] = true
	}
	var wrong []string
	for _, r := range rows {
		if due[r.id] != r.due {
			wrong = append(wrong, fmt.Sprintf("%s: due %v, want %v (%.120s)", r.id, due[r.id], r.due, r.meta))
		}
	}
	sort.Strings(wrong)
	if len(wrong) > 0 {
		t.Fatalf("at NOW() = %s:\n%s", now.Format(PostgresDueLayout), strings.Join(wrong, "\n"))
	}
}

// What the scheduler writes is what the clause reads: fixed width, UTC,
// valid RFC 3339.
func TestPostgresDueLayout(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 600, time.FixedZone("", 3600))
	s := at.UTC().Format(PostgresDueLayout)
	if s != "2026-01-02T02:04:05.000000600Z" {
		t.Fatalf("%s", s)
	}
	back, err := time.Parse(time.RFC3339Nano, s)
	if err != nil || !back.Equal(at) {
		t.Fatalf("%s parses to %s, %v", s, back, err)
	}
	var probe struct{ V string }
	if err := json.Unmarshal([]byte(`{"V":"`+s+`"}`), &probe); err != nil || probe.V != s {
		t.Fatal("not plain JSON text")
	}
}
