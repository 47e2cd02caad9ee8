package pgstore

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/antidote-mq/antidote/internal/pgmigrate"
)

// Migration is one version of a store's schema: the SQL that takes its
// tables from the version before to this one. Each store's Migrations
// lists them; version 1 is the schema the stores created before versions
// existed (CREATE TABLE IF NOT EXISTS), so tables made then are adopted.
type Migration = pgmigrate.Step

// ErrSchemaTooNew is wrapped by a store's error when its tables are at a
// schema version newer than this version of Antidote knows: a newer
// version migrated them. The store refuses to start rather than run on a
// schema it does not know; it never downgrades.
var ErrSchemaTooNew = pgmigrate.ErrTooNew

// DefaultCleanupInterval is how often, at most, a store whose rows expire
// deletes expired rows when its config leaves CleanupInterval zero.
const DefaultCleanupInterval = time.Minute

// cleanupBatch bounds one DELETE of a cleanup, so it never holds row locks
// on a large part of the table at once.
const cleanupBatch = 5000

// exampleURL is the connection string the error messages suggest.
const exampleURL = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"

// identRE is a plain, optionally schema-qualified, identifier: what a
// Table may be, so it can be spliced into SQL.
var identRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$`)

// validateDB reports what is wrong with the database fields every config
// shares, in field order (Pool/URL, then Table). typ names the config in
// the messages; an empty table is valid (the default applies).
func validateDB(typ string, pool *pgxpool.Pool, url, table, defaultTable string) []error {
	var errs []error
	switch {
	case pool == nil && url == "":
		errs = append(errs, fmt.Errorf("pgstore: %s needs a database: set Pool to a *pgxpool.Pool or URL to a connection string such as %s", typ, exampleURL))
	case pool != nil && url != "":
		errs = append(errs, fmt.Errorf("pgstore: %s has both Pool and URL set; set only one (Pool to share an existing pool, URL to let the store open and close its own)", typ))
	}
	if table != "" && !identRE.MatchString(table) {
		errs = append(errs, fmt.Errorf("pgstore: %s.Table %q is not a plain identifier; use letters, digits and underscores (at most 63), optionally schema-qualified (\"schema.table\"), or leave it empty for %q", typ, table, defaultTable))
	}
	return errs
}

// validateDuration reports a duration field that is negative or below the
// 1ms the stores can honour; zero is valid (the default applies).
func validateDuration(field string, d, def time.Duration) error {
	if d < 0 || (d > 0 && d < time.Millisecond) {
		return fmt.Errorf("pgstore: %s is %s; set it to at least 1ms, or 0 for the default %s", field, d, def)
	}
	return nil
}

// table is what every store shares: the pool (its own or the caller's),
// the table's name, its DDL, and the sweeper of expired rows.
type table struct {
	what     string // "delivery tracker", in errors
	pool     *pgxpool.Pool
	ownsPool bool
	name     string // as configured, e.g. "ops.deliveries"
	ident    string // sanitized, ready to splice into SQL
	sweep    *sweeper
	schema   pgmigrate.Schema // set by setUp
}

// openTable opens a pool for url when pool is nil. typ names the config in
// errors. When expired is not empty (a condition on the table's columns)
// the sweeper deletes the rows matching it, at most cleanupBatch per
// statement and at most once per interval (negative: only when
// DeleteExpired is called); otherwise it deletes nothing and only tracks
// Close.
func openTable(ctx context.Context, what, typ string, pool *pgxpool.Pool, url, name, expired string, interval time.Duration) (*table, error) {
	t := &table{what: what, pool: pool, name: name, ident: pgx.Identifier(strings.Split(name, ".")).Sanitize()}
	if t.pool == nil {
		p, err := pgxpool.New(ctx, url)
		if err != nil {
			return nil, fmt.Errorf("pgstore: %s: open pool for %s.URL: %w", what, typ, err)
		}
		t.pool, t.ownsPool = p, true
	}
	var deleteSQL string
	if expired != "" {
		deleteSQL = fmt.Sprintf(`DELETE FROM %s WHERE key IN (SELECT key FROM %s WHERE %s LIMIT %d)`, t.ident, t.ident, expired, cleanupBatch)
	}
	t.sweep = newSweeper(t.pool, deleteSQL, cleanupBatch, interval)
	return t, nil
}

// indexName is an index name derived from the table's own (unqualified).
func (t *table) indexName(suffix string) string {
	parts := strings.Split(t.name, ".")
	return pgx.Identifier{parts[len(parts)-1] + suffix}.Sanitize()
}

// migrate applies the pending migrations of t's schema (see
// internal/pgmigrate: under the advisory lock (lockNS, table) the stores
// took before versions existed, so replicas and older binaries take turns).
func (t *table) migrate(ctx context.Context) ([]Migration, error) {
	applied, err := t.schema.Migrate(ctx, t.pool)
	if err != nil {
		return nil, fmt.Errorf("pgstore: %s: migrate %s (needs CREATE privilege; or run antidote migrate and set SkipCreateTable): %w", t.what, t.ident, err)
	}
	return applied, nil
}

// pending returns the migrations migrate would apply, changing nothing.
func (t *table) pending(ctx context.Context) ([]Migration, error) {
	p, err := t.schema.Pending(ctx, t.pool)
	if err != nil {
		return nil, fmt.Errorf("pgstore: %s: pending migrations of %s: %w", t.what, t.ident, err)
	}
	return p, nil
}

// closed reports whether close was called.
func (t *table) closed() bool { return t.sweep.Closed() }

// deleteExpired runs the sweep until a pass deletes less than a batch.
func (t *table) deleteExpired(ctx context.Context) (int64, error) {
	n, err := t.sweep.DeleteExpired(ctx)
	if err != nil {
		return n, fmt.Errorf("pgstore: %s: delete expired: %w", t.what, err)
	}
	return n, nil
}

// close cancels and waits for a running sweep, then closes the pool if the
// store opened it. Idempotent.
func (t *table) close() {
	if t.sweep.Close() && t.ownsPool {
		t.pool.Close()
	}
}

// setUp records the store's schema (probe: its table whose absence means
// none of its tables are there) and, unless skip, migrates it; on failure
// it closes t.
func (t *table) setUp(ctx context.Context, skip bool, component, lockNS, probe string, steps []Migration) error {
	t.schema = pgmigrate.Schema{Component: component, Name: t.name, LockNS: lockNS, Probe: probe, What: t.what, Steps: steps}
	if skip {
		return nil
	}
	if _, err := t.migrate(ctx); err != nil {
		t.close()
		return err
	}
	return nil
}

// migrations is a copy of t's schema steps.
func (t *table) migrations() []Migration { return slices.Clone(t.schema.Steps) }
