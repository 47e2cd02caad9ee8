package outbox

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/antidote-mq/antidote/internal/testenv"
)

type discard struct{}

func (discard) Publish(string, ...*message.Message) error { return nil }
func (discard) Close() error                              { return nil }

// The claim is index-driven: on 200,000 pending rows (a hot key of 100,000
// whose head another relay holds, 1,000 cold keys, keyless rows) and 50,000
// sent ones, no statement of a claim scans the table, and finding the rows
// reads under half of its pages (about 5 a key visited, whatever waits
// behind its head; 4 to 7 a row claimed). A round claims a full batch, none
// of the hot key.
func TestClaimIsIndexDriven(t *testing.T) {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testenv.PostgresURL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	table := "ob_plan_" + strings.ToLower(watermill.NewShortUUID())
	ob, err := New(Config{Table: table})
	if err != nil {
		t.Fatal(err)
	}
	if err := ob.CreateTables(ctx, pool); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = pool.Exec(context.Background(), `DROP TABLE IF EXISTS `+table+`, `+table+`_dead`) })
	for _, q := range []string{
		`INSERT INTO ` + table + ` (message_id, topic, payload, metadata, key_hash)
SELECT 'm'||i, 't', '\x7b7d', '\x7b7d', CASE WHEN i % 4 IN (0, 1) THEN sha256('hot'::bytea)
  WHEN i % 4 = 2 THEN sha256(convert_to('cold-'||(i % 1000), 'UTF8')) END FROM generate_series(1, 200000) i`,
		`UPDATE ` + table + ` SET locked_by = 'other', locked_until = now() + interval '1 hour'
WHERE id = (SELECT min(id) FROM ` + table + ` WHERE key_hash = sha256('hot'::bytea))`,
		`INSERT INTO ` + table + ` (message_id, topic, payload, metadata, key_hash, sent_at)
SELECT 's'||i, 't', '\x7b7d', '\x7b7d', sha256(convert_to('cold-'||(i % 1000), 'UTF8')), now() FROM generate_series(1, 50000) i`,
		`ANALYZE ` + table,
	} {
		if _, err := pool.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	var pages int
	if err := pool.QueryRow(ctx, `SELECT relpages FROM pg_class WHERE oid = $1::regclass`, table).Scan(&pages); err != nil {
		t.Fatal(err)
	}
	r, err := NewRelay(ctx, RelayConfig{Pool: pool, Outbox: ob, Publisher: discard{}, Service: "plan"})
	if err != nil {
		t.Fatal(err)
	}
	var heads []int64
	var keys [][]byte
	if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT min(id), key_hash FROM `+table+` WHERE sent_at IS NULL AND key_hash IS NOT NULL GROUP BY key_hash LIMIT 50`)
		if err != nil {
			return err
		}
		var id int64
		var key []byte
		_, err = pgx.ForEachRow(rows, []any{&id, &key}, func() error { heads, keys = append(heads, id), append(keys, key); return nil })
		return err
	}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		q    string
		args []any
	}{
		{"scan with keyless", r.scanSQL(true), []any{[]byte{}, 200, 100}},
		{"scan", r.scanSQL(false), []any{r.cursor, 200}},
		{"heads", r.headsSQL(), []any{"me", 10.0, heads}},
		{"tails", r.tailsSQL(), []any{"me", 10.0, heads, keys, 2}},
	} {
		// EXPLAIN ANALYZE runs the statement: in a transaction rolled back.
		tx, err := pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// A generic plan, as a prepared statement gets after a few runs.
		if _, err := tx.Exec(ctx, `SET LOCAL plan_cache_mode = force_generic_plan`); err != nil {
			t.Fatal(err)
		}
		var out []byte
		err = tx.QueryRow(ctx, `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) `+c.q, c.args...).Scan(&out)
		_ = tx.Rollback(ctx)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		var plan []struct {
			Plan map[string]any `json:"Plan"`
		}
		if err := json.Unmarshal(out, &plan); err != nil {
			t.Fatal(err)
		}
		var seq []string
		var walk func(n map[string]any)
		walk = func(n map[string]any) {
			if n["Node Type"] == "Seq Scan" {
				seq = append(seq, n["Relation Name"].(string))
			}
			subs, _ := n["Plans"].([]any)
			for _, s := range subs {
				walk(s.(map[string]any))
			}
		}
		walk(plan[0].Plan)
		// Of an UPDATE, what finding the rows read (not the new row
		// versions and their index entries, as many as the rows claimed).
		find := plan[0].Plan
		if find["Node Type"] == "ModifyTable" {
			find = find["Plans"].([]any)[0].(map[string]any)
		}
		read := int(find["Shared Hit Blocks"].(float64) + find["Shared Read Blocks"].(float64))
		if len(seq) > 0 || read >= pages/2 {
			t.Errorf("%s: sequential scans of %v, %d pages read to find the rows, of a table of %d:\n%s", c.name, seq, read, pages, out)
		}
		t.Logf("%s: %d pages read to find the rows (the table has %d)", c.name, read, pages)
	}
	round, err := r.RunOnce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var hot int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM `+table+` WHERE sent_at IS NOT NULL AND key_hash = sha256('hot'::bytea)`).Scan(&hot); err != nil {
		t.Fatal(err)
	}
	if round.Claimed != 100 || round.Published != 100 || hot != 0 {
		t.Errorf("a round: %+v, %d of the hot key sent; want 100 claimed and published, none of the hot key", round, hot)
	}
}
