package main

import (
	"context"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/antidote-mq/antidote/hospital"
	"github.com/antidote-mq/antidote/idempotency"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/outbox"
	"github.com/antidote-mq/antidote/pgstore"
)

// migrateSchema is a schema of the test's own on the shared database,
// dropped (with everything in it, and nothing else) when the test ends.
func migrateSchema(t *testing.T) (*pgxpool.Pool, string, string) {
	t.Helper()
	url := testenv.PostgresURL(t)
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	schema := "mig_" + strings.ToLower(watermill.NewShortUUID())
	if _, err := pool.Exec(ctx, `CREATE SCHEMA `+schema); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := pool.Exec(context.Background(), `DROP SCHEMA `+schema+` CASCADE`); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
		pool.Close()
	})
	return pool, schema, url
}

// loadFixture runs testdata/migrate/name in schema.
func loadFixture(t *testing.T, pool *pgxpool.Pool, schema, name string) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "migrate", name))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(context.Background(), strings.ReplaceAll(string(data), "${schema}", schema)); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

// migrateArgs is antidote migrate for the fixtures' tables in schema;
// extra are further arguments, the tables to migrate among them (none:
// all).
func migrateArgs(url, schema string, extra ...string) []string {
	tables := map[string]string{"deliveries": "deliveries", "idempotency": "idem", "claimcheck": "claims", "hospital": "hosp", "outbox": "outbox"}
	only := slices.ContainsFunc(extra, func(a string) bool { return tables[a] != "" })
	args := []string{"migrate", "--postgres-url", url}
	for _, c := range migrateComponents {
		if !only || slices.Contains(extra, c) {
			args = append(args, "--"+c+"-table", schema+"."+tables[c])
		}
	}
	return append(args, extra...)
}

// schemaShape describes every table of schema but the version table: each
// column (type, nullability, default) and index, sorted, with the schema's
// name taken out, so two schemas of the same shape compare equal whatever
// the order their columns were added in.
func schemaShape(t *testing.T, pool *pgxpool.Pool, schema string) string {
	t.Helper()
	ctx := context.Background()
	var lines []string
	rows, err := pool.Query(ctx, `SELECT table_name || '.' || column_name || ' ' || data_type || ' null=' || is_nullable || ' default=' || COALESCE(column_default, '')
FROM information_schema.columns WHERE table_schema = $1 AND table_name <> 'antidote_schema_versions'`, schema)
	if err != nil {
		t.Fatal(err)
	}
	cols, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	rows, err = pool.Query(ctx, `SELECT indexname || ': ' || indexdef FROM pg_indexes WHERE schemaname = $1 AND tablename <> 'antidote_schema_versions'`, schema)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	lines = append(cols, idx...)
	slices.Sort(lines)
	return strings.ReplaceAll(strings.Join(lines, "\n"), schema+".", "S.")
}

// freshShape is the shape antidote migrate gives an empty schema.
func freshShape(t *testing.T, args ...string) string {
	t.Helper()
	pool, schema, url := migrateSchema(t)
	if code, _, stderr := runCode(t, "", migrateArgs(url, schema, args...)...); code != exitOK {
		t.Fatalf("migrate an empty schema: exit %d: %s", code, stderr)
	}
	return schemaShape(t, pool, schema)
}

func versions(t *testing.T, pool *pgxpool.Pool, schema string) map[string]int {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT component, version FROM `+schema+`.antidote_schema_versions`)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for rows.Next() {
		var c string
		var v int
		if err := rows.Scan(&c, &v); err != nil {
			t.Fatal(err)
		}
		got[c] = v
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return got
}

var latestVersions = map[string]int{"deliveries": 1, "idempotency": 1, "claimcheck": 1, "hospital": 2, "outbox": 1}

// A database made by the code before schema versions (its exact DDL, in
// testdata, holding data) is adopted and upgraded by antidote migrate: the
// data is still there and readable by the stores, the schema is the one a
// fresh database gets, the versions are recorded; a second run applies
// nothing.
func TestMigrateUpgradesTodaysSchema(t *testing.T) {
	want := freshShape(t)
	pool, schema, url := migrateSchema(t)
	ctx := context.Background()
	loadFixture(t, pool, schema, "today_825b56b.sql")
	// Rows as the stores of that commit wrote them.
	if _, err := pool.Exec(ctx, `INSERT INTO `+schema+`.deliveries (key, count) VALUES ('orders/h/1', 3);
INSERT INTO `+schema+`.idem (key, token, completed, result, expires_at) VALUES ('h/k1', 'tok', true, 'done', now() + interval '1 hour');
INSERT INTO `+schema+`.claims (key, data) VALUES ('claim-1', '\x00ff'::bytea);
INSERT INTO `+schema+`.outbox (message_id, topic, payload, metadata) VALUES ('m-1', 'orders', 'p', '{}')`); err != nil {
		t.Fatal(err)
	}
	hs0, err := pgstore.NewHospitalStore(ctx, pgstore.HospitalStoreConfig{Pool: pool, Table: schema + ".hosp", SkipCreateTable: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := hs0.Put(ctx, hospitalLetter()); err != nil {
		t.Fatalf("a letter into today's schema: %v", err)
	}
	before := schemaShape(t, pool, schema)

	code, stdout, stderr := runCode(t, "", migrateArgs(url, schema)...)
	if code != exitOK {
		t.Fatalf("migrate: exit %d: %s", code, stderr)
	}
	for _, line := range []string{"-- deliveries " + schema + ".deliveries: version 1 applied", "-- hospital " + schema + ".hosp: version 2 applied", "-- 6 migrations applied"} {
		if !strings.Contains(stdout, line) {
			t.Errorf("migrate printed no %q:\n%s", line, stdout)
		}
	}
	got := schemaShape(t, pool, schema)
	if got != want {
		t.Errorf("upgraded schema differs from a fresh one:\nupgraded:\n%s\nfresh:\n%s", got, want)
	}
	if before != want {
		t.Errorf("today's DDL differs from what the migrations make of an empty schema (version 1 must be today's schema):\ntoday:\n%s\nmigrations:\n%s", before, want)
	}
	if v := versions(t, pool, schema); !maps.Equal(v, latestVersions) {
		t.Errorf("versions = %v, want %v", v, latestVersions)
	}

	// The data, through the stores (which find nothing to migrate).
	tr, err := pgstore.NewDeliveryTracker(ctx, pgstore.DeliveryTrackerConfig{Pool: pool, Table: schema + ".deliveries"})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if n, err := tr.Count(ctx, "orders/h/1"); err != nil || n != 3 {
		t.Errorf("delivery count = %d, %v; want 3", n, err)
	}
	is, err := pgstore.NewIdempotencyStore(ctx, pgstore.IdempotencyStoreConfig{Pool: pool, Table: schema + ".idem"})
	if err != nil {
		t.Fatal(err)
	}
	defer is.Close()
	if c, err := is.Claim(ctx, "h/k1", time.Minute); err != nil || c.Status != idempotency.StatusCompleted || string(c.Result) != "done" {
		t.Errorf("idempotency key = %+v, %v; want completed with its result", c, err)
	}
	cs, err := pgstore.NewClaimCheckStore(ctx, pgstore.ClaimCheckStoreConfig{Pool: pool, Table: schema + ".claims"})
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	if d, err := cs.Get(ctx, "claim-1"); err != nil || string(d) != "\x00\xff" {
		t.Errorf("claim = %q, %v", d, err)
	}
	hs, err := pgstore.NewHospitalStore(ctx, pgstore.HospitalStoreConfig{Pool: pool, Table: schema + ".hosp"})
	if err != nil {
		t.Fatal(err)
	}
	defer hs.Close()
	if page, err := hs.Groups(ctx, hospital.GroupQuery{}); err != nil || len(page.Groups) != 1 || page.Groups[0].Count != 1 {
		t.Errorf("hospital groups = %+v, %v; want the one letter's group", page.Groups, err)
	}
	var outboxRows int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM `+schema+`.outbox WHERE message_id = 'm-1' AND sent_at IS NULL`).Scan(&outboxRows); err != nil || outboxRows != 1 {
		t.Errorf("outbox rows = %d, %v; want the pending row", outboxRows, err)
	}

	// Twice: nothing to do.
	code, stdout, stderr = runCode(t, "", migrateArgs(url, schema)...)
	if code != exitOK || !strings.Contains(stdout, "-- 0 migrations applied") || strings.Contains(stdout, "applied:") {
		t.Errorf("second migrate: exit %d, stdout:\n%s\nstderr: %s", code, stdout, stderr)
	}
	if again := schemaShape(t, pool, schema); again != got {
		t.Errorf("second migrate changed the schema:\n%s", again)
	}
}

// The hospital of its first schema (before letters.treated_at/treated_by and
// groups.consumer_version, which CREATE TABLE IF NOT EXISTS never added to
// existing tables) and the outbox before key_hash are upgraded to the
// current schema, their rows kept and readable.
func TestMigrateUpgradesOldHospitalAndOutbox(t *testing.T) {
	want := freshShape(t, "hospital", "outbox")
	pool, schema, url := migrateSchema(t)
	ctx := context.Background()
	loadFixture(t, pool, schema, "hospital_a263979.sql")
	loadFixture(t, pool, schema, "outbox_95507e9.sql")
	if _, err := pool.Exec(ctx, `INSERT INTO `+schema+`.hosp_letters (identity, broker, dlq_topic, format, uuid, original_topic, handler, consumer_group, reason, error, error_type, stack, producer, consumer_version, attempts, fingerprint, payload, metadata, problem)
VALUES ('kafka:orders.dlq/0/1', 'kafka', 'orders.dlq', 'antidote', 'u-1', 'orders', 'h', 'g', 'permanent', 'boom', 'e', '', 'p', 'v1', 1, 'fp1', 'x', '{}', '');
INSERT INTO `+schema+`.hosp_groups (fingerprint, handler, reason, error_type, frame, message, shape, producer, count, dead, first_seen, last_seen, example, original_topic)
VALUES ('fp1', 'h', 'permanent', 'e', '', 'boom', '', 'p', 1, 1, now(), now(), 1, 'orders');
INSERT INTO `+schema+`.outbox (message_id, topic, payload, metadata) VALUES ('m-1', 'orders', 'p', '{}')`); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runCode(t, "", migrateArgs(url, schema, "hospital", "outbox")...)
	if code != exitOK {
		t.Fatalf("migrate: exit %d: %s", code, stderr)
	}
	if got := schemaShape(t, pool, schema); got != want {
		t.Errorf("upgraded schema differs from a fresh one:\nupgraded:\n%s\nfresh:\n%s\nmigrate said:\n%s", got, want, stdout)
	}
	hs, err := pgstore.NewHospitalStore(ctx, pgstore.HospitalStoreConfig{Pool: pool, Table: schema + ".hosp"})
	if err != nil {
		t.Fatal(err)
	}
	defer hs.Close()
	page, err := hs.Groups(ctx, hospital.GroupQuery{})
	if err != nil || len(page.Groups) != 1 || page.Groups[0].ConsumerVersion != "" {
		t.Fatalf("groups = %+v, %v; want the old group, no consumer version", page.Groups, err)
	}
	l, err := hs.Letter(ctx, page.Groups[0].Example)
	if err != nil || l.UUID != "u-1" || l.State != hospital.StateDead {
		t.Errorf("letter = %+v, %v; want u-1, dead", l, err)
	}
	if _, err := hs.Put(ctx, hospitalLetter()); err != nil {
		t.Errorf("put into the upgraded hospital: %v", err)
	}
	ob, err := outbox.New(outbox.Config{Table: schema + ".outbox"})
	if err != nil {
		t.Fatal(err)
	}
	if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		m := message.NewMessage("m-2", []byte("p"))
		m.Metadata.Set(outbox.DefaultKeyMetadata, "k")
		return ob.Add(ctx, tx, "orders", m)
	}); err != nil {
		t.Fatal(err)
	}
	var keyed, total int
	if err := pool.QueryRow(ctx, `SELECT count(key_hash), count(*) FROM `+schema+`.outbox`).Scan(&keyed, &total); err != nil || keyed != 1 || total != 2 {
		t.Errorf("outbox: %d keyed of %d rows (%v); want the old row kept and the new one keyed", keyed, total, err)
	}
}

// --dry-run prints the pending SQL and changes nothing: no table, no column,
// no version table.
func TestMigrateDryRunChangesNothing(t *testing.T) {
	pool, schema, url := migrateSchema(t)
	ctx := context.Background()
	loadFixture(t, pool, schema, "hospital_a263979.sql")
	before := schemaShape(t, pool, schema)
	code, stdout, stderr := runCode(t, "", migrateArgs(url, schema, "--dry-run")...)
	if code != exitOK {
		t.Fatalf("migrate --dry-run: exit %d: %s", code, stderr)
	}
	for _, want := range []string{
		`CREATE TABLE IF NOT EXISTS "` + schema + `"."deliveries"`,
		`ALTER TABLE "` + schema + `"."hosp_groups" ADD COLUMN IF NOT EXISTS consumer_version TEXT NOT NULL DEFAULT ''`,
		`-- hospital ` + schema + `.hosp: version 2 pending:`,
		`ALTER TABLE "` + schema + `"."outbox" ADD COLUMN IF NOT EXISTS key_hash BYTEA`,
		"-- dry run: 6 migrations pending, nothing applied",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("dry run printed no %q:\n%s", want, stdout)
		}
	}
	if after := schemaShape(t, pool, schema); after != before {
		t.Errorf("dry run changed the schema:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	var versionTable bool
	if err := pool.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, schema+".antidote_schema_versions").Scan(&versionTable); err != nil || versionTable {
		t.Errorf("dry run created the version table (%v)", err)
	}
	// Once applied, a dry run has nothing to print but that.
	if code, _, stderr := runCode(t, "", migrateArgs(url, schema)...); code != exitOK {
		t.Fatalf("migrate: exit %d: %s", code, stderr)
	}
	code, stdout, _ = runCode(t, "", migrateArgs(url, schema, "--dry-run")...)
	if code != exitOK || !strings.Contains(stdout, "-- dry run: 0 migrations pending") || strings.Contains(stdout, "CREATE") {
		t.Errorf("dry run of a current database: exit %d:\n%s", code, stdout)
	}
}

// Tables at a version newer than the binary knows: exit 1 with a message
// that says so, and nothing is changed (never a downgrade).
func TestMigrateRefusesNewerSchema(t *testing.T) {
	pool, schema, url := migrateSchema(t)
	ctx := context.Background()
	if code, _, stderr := runCode(t, "", migrateArgs(url, schema, "hospital")...); code != exitOK {
		t.Fatalf("migrate: exit %d: %s", code, stderr)
	}
	if _, err := pool.Exec(ctx, `UPDATE `+schema+`.antidote_schema_versions SET version = 7 WHERE component = 'hospital'`); err != nil {
		t.Fatal(err)
	}
	for _, dry := range []bool{true, false} {
		args := migrateArgs(url, schema, "hospital")
		if dry {
			args = append(args, "--dry-run")
		}
		code, stdout, stderr := runCode(t, "", args...)
		if code != exitFailure || !strings.Contains(stderr, "newer than this version of Antidote knows: version 7") || !strings.Contains(stderr, "knows up to 2") {
			t.Errorf("dry run %v: exit %d, stdout %q, stderr %q; want exit 1 naming versions 7 and 2", dry, code, stdout, stderr)
		}
	}
	if v := versions(t, pool, schema); v["hospital"] != 7 {
		t.Errorf("version now %d, want 7 left alone", v["hospital"])
	}
}

// Bad input is exit 2, an unreachable database exit 4.
func TestMigrateExitCodes(t *testing.T) {
	t.Setenv(envPostgresURL, "")
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"migrate"}, exitUsage, "no database"},
		{[]string{"migrate", "--postgres-url", "mysql://x"}, exitUsage, "not a PostgreSQL URL"},
		{[]string{"migrate", "--postgres-url", "postgres://postgres@127.0.0.1:1/test", "queues"}, exitUsage, `unknown tables "queues"`},
		{[]string{"migrate", "--postgres-url", "postgres://postgres@127.0.0.1:1/test", "outbox", "--hospital-table", "x"}, exitUsage, "--hospital-table given"},
		{[]string{"migrate", "--postgres-url", "postgres://postgres@127.0.0.1:1/test?connect_timeout=2"}, exitUnreachable, "did not answer"},
	} {
		code, _, stderr := runCode(t, "", tc.args...)
		if code != tc.code || !strings.Contains(stderr, tc.want) {
			t.Errorf("%q: exit %d, stderr %q; want exit %d with %q", tc.args, code, stderr, tc.code, tc.want)
		}
	}
	// A bad table name is bad usage, found before anything runs.
	_, _, url := migrateSchema(t)
	if code, _, stderr := runCode(t, "", "migrate", "--postgres-url", url, "deliveries", "--deliveries-table", "a-b"); code != exitUsage || !strings.Contains(stderr, "not a plain identifier") {
		t.Errorf("bad table: exit %d, %q", code, stderr)
	}
}

func hospitalLetter() hospital.Letter {
	return hospital.Letter{Identity: "kafka:orders.dlq/0/7", Broker: "kafka", DLQTopic: "orders.dlq", Format: hospital.FormatAntidote,
		UUID: "u-7", OriginalTopic: "orders", Handler: "h", Reason: "permanent", Error: "boom", Attempts: 1,
		Payload: []byte("x"), State: hospital.StateDead}
}
