// Package hospitalstore gives tests a PostgreSQL hospital store with
// tables of their own, dropped (every one the store made) when the test
// ends.
package hospitalstore

import (
	"context"
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/pgstore"
)

// New returns a store on the test database whose tables are named
// prefix + a random part + "_letters", "_groups", ...; the pool it runs on
// (for tests that look at the rows); and that table name.
func New(t testing.TB, prefix string) (*pgstore.HospitalStore, *pgxpool.Pool, string) {
	t.Helper()
	table := Name(t, prefix)
	pool := Pool(t)
	s, err := pgstore.NewHospitalStore(context.Background(), pgstore.HospitalStoreConfig{Pool: pool, Table: table})
	if err != nil {
		t.Fatal(err)
	}
	return s, pool, table
}

// Pool is a pool on the test database, closed when the test ends.
func Pool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), testenv.PostgresURL(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// Name is a fresh table name, prefix and a random part, whose tables (the
// store's, made by the test or a process it runs) are dropped when the
// test ends.
func Name(t testing.TB, prefix string) string {
	t.Helper()
	table := prefix + strings.ToLower(watermill.NewShortUUID())
	url := testenv.PostgresURL(t)
	// Registered before any pool's Close, so it runs after them, on a
	// connection of its own.
	t.Cleanup(func() { drop(t, url, table) })
	return table
}

// drop removes every table named table_*, and its row in the shared
// version table.
func drop(t testing.TB, url, table string) {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Logf("hospital store tables %s_*: not dropped: %v", table, err)
		return
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND starts_with(tablename, $1)`, table+"_")
	if err != nil {
		t.Logf("hospital store tables %s_*: not listed: %v", table, err)
		return
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Logf("hospital store tables %s_*: not listed: %v", table, err)
		return
	}
	for _, n := range names {
		if _, err := conn.Exec(ctx, `DROP TABLE IF EXISTS `+pgx.Identifier{n}.Sanitize()+` CASCADE`); err != nil {
			t.Logf("hospital store table %s: not dropped: %v", n, err)
		}
	}
	if _, err := conn.Exec(ctx, `DELETE FROM antidote_schema_versions WHERE component = 'hospital' AND name = $1`, table); err != nil {
		t.Logf("hospital store %s: version row not deleted: %v", table, err)
	}
}
