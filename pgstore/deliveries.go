package pgstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/antidote-mq/antidote/poison"
)

// DefaultDeliveryTrackerTable is the table a DeliveryTracker uses when the
// config leaves Table empty.
const DefaultDeliveryTrackerTable = "antidote_deliveries"

// DeliveryTrackerConfig configures NewDeliveryTracker. Set exactly one of
// Pool and URL.
type DeliveryTrackerConfig struct {
	// Pool is an existing pgx pool; the tracker never closes it. If Pool is
	// nil, URL must be set.
	Pool *pgxpool.Pool
	// URL is a connection string ("postgres://user@host:5432/db"); the
	// tracker opens its own pool and closes it on Close. If URL is empty,
	// Pool must be set.
	URL string
	// Table holds the counts, optionally schema-qualified
	// ("ops.deliveries"). If Table is empty, the tracker uses
	// "antidote_deliveries". Use a separate table per environment or
	// application if they share a database; keys already include topic and
	// handler.
	Table string
	// TTL is how long a count lives after its last Incr. If TTL is zero,
	// the tracker uses poison.DefaultDeliveryTrackerTTL (24h). A row older
	// than TTL counts as absent (its next Incr returns 1) even before the
	// cleanup deletes it. Keep it longer than the longest plausible outage
	// of the consumer, or a crash loop spanning the outage starts counting
	// again.
	TTL time.Duration
	// CleanupInterval is how often, at most, expired rows are deleted. If
	// CleanupInterval is zero, the tracker uses DefaultCleanupInterval (1m);
	// if it is negative, the tracker never deletes on its own (call
	// DeleteExpired, e.g. from a cron job). The cleanup is opportunistic:
	// an Incr that finds the last cleanup older than CleanupInterval starts
	// one DELETE pass in a goroutine that Close cancels and waits for; an
	// idle tracker deletes nothing.
	CleanupInterval time.Duration
	// SkipCreateTable skips the migrations NewDeliveryTracker applies
	// (creating the table, upgrading one of an older version:
	// DeliveryTracker.Migrate), for teams that apply them themselves (antidote
	// migrate, or DeliveryTracker.Migrations in their own tool). If false, the zero
	// value, the tracker migrates on start, which needs CREATE privilege.
	SkipCreateTable bool
}

func (c *DeliveryTrackerConfig) setDefaults() {
	if c.Table == "" {
		c.Table = DefaultDeliveryTrackerTable
	}
	if c.TTL == 0 {
		c.TTL = poison.DefaultDeliveryTrackerTTL
	}
	if c.CleanupInterval == 0 {
		c.CleanupInterval = DefaultCleanupInterval
	}
}

// Validate reports every field that cannot work, in field order.
func (c DeliveryTrackerConfig) Validate() error {
	errs := validateDB("DeliveryTrackerConfig", c.Pool, c.URL, c.Table, DefaultDeliveryTrackerTable)
	errs = append(errs, validateDuration("DeliveryTrackerConfig.TTL", c.TTL, poison.DefaultDeliveryTrackerTTL))
	return errors.Join(errs...)
}

// DeliveryTracker is a poison.DeliveryTracker that keeps counts in a
// PostgreSQL table, one row per unsettled delivery target:
//
//	key TEXT PRIMARY KEY, count INTEGER, updated_at TIMESTAMPTZ
//
// Incr is one statement, INSERT ... ON CONFLICT (key) DO UPDATE SET count =
// count + 1 ... RETURNING count, committed before it returns, so the count
// survives a crash of the consumer right after. Forget deletes the row.
// Expired rows are deleted opportunistically (see CleanupInterval). Safe for
// concurrent use, by many processes sharing the table too.
type DeliveryTracker struct {
	t *table

	incrSQL, decrSQL, countSQL, forgetSQL string
}

// NewDeliveryTracker fills cfg's defaults, validates it, opens a pool when
// cfg.URL is set, and creates the table (CREATE TABLE IF NOT EXISTS,
// serialized by an advisory lock so replicas starting together do not
// race) unless cfg.SkipCreateTable.
func NewDeliveryTracker(ctx context.Context, cfg DeliveryTrackerConfig) (*DeliveryTracker, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	expired := fmt.Sprintf("updated_at < now() - %d * interval '1 microsecond'", cfg.TTL.Microseconds())
	t, err := openTable(ctx, "delivery tracker", "DeliveryTrackerConfig", cfg.Pool, cfg.URL, cfg.Table, expired, cfg.CleanupInterval)
	if err != nil {
		return nil, err
	}
	d := &DeliveryTracker{t: t}
	d.incrSQL = `INSERT INTO ` + t.ident + ` AS d (key, count, updated_at) VALUES ($1, 1, now())
ON CONFLICT (key) DO UPDATE SET
  count = CASE WHEN d.` + expired + ` THEN 1 ELSE d.count + 1 END,
  updated_at = now()
RETURNING count`
	d.forgetSQL = `DELETE FROM ` + t.ident + ` WHERE key = $1`
	d.decrSQL = `UPDATE ` + t.ident + ` SET count = count - 1 WHERE key = $1 AND count > 0 RETURNING count`
	d.countSQL = `SELECT CASE WHEN ` + expired + ` THEN 0 ELSE count END FROM ` + t.ident + ` WHERE key = $1`
	if err := t.setUp(ctx, cfg.SkipCreateTable, "deliveries", "antidote.deliveries", t.name, d.steps()); err != nil {
		return nil, err
	}
	return d, nil
}

// steps are the versions of the tracker's schema.
func (d *DeliveryTracker) steps() []Migration {
	return []Migration{{Version: 1, Description: "create the table (the schema before versions)", SQL: `CREATE TABLE IF NOT EXISTS ` + d.t.ident + ` (
  key        TEXT PRIMARY KEY,
  count      INTEGER NOT NULL,
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS ` + d.t.indexName("_updated_at_idx") + ` ON ` + d.t.ident + ` (updated_at);`}}
}

// CreateTableSQL returns the SQL of every migration (Migrations), which
// creates the table or brings one of any earlier version up to date,
// for teams that apply schema changes themselves. It records no version:
// antidote migrate (or Migrate) does.
func (d *DeliveryTracker) CreateTableSQL() string { return d.t.schema.SQL() }

// Migrations returns every version of the tracker's schema, for its
// configured table, in order.
func (d *DeliveryTracker) Migrations() []Migration { return d.t.migrations() }

// PendingMigrations returns the migrations not applied to the table yet,
// changing nothing (no lock taken, no table created): what Migrate would
// apply now. An error wrapping ErrSchemaTooNew says the table is newer
// than this version of Antidote.
func (d *DeliveryTracker) PendingMigrations(ctx context.Context) ([]Migration, error) {
	return d.t.pending(ctx)
}

// Migrate applies the pending migrations, in one transaction under the
// advisory lock the tracker takes on start, and returns them (none when
// the table is current). The constructor does this unless SkipCreateTable.
func (d *DeliveryTracker) Migrate(ctx context.Context) ([]Migration, error) { return d.t.migrate(ctx) }

// Incr counts one more delivery of key and returns the new count.
func (d *DeliveryTracker) Incr(ctx context.Context, key string) (int, error) {
	if d.t.closed() {
		return 0, poison.ErrDeliveryTrackerClosed
	}
	var n int
	if err := d.t.pool.QueryRow(ctx, d.incrSQL, key).Scan(&n); err != nil {
		return 0, fmt.Errorf("pgstore: delivery tracker: incr %q: %w", key, err)
	}
	d.t.sweep.Maybe()
	return n, nil
}

// Forget deletes key's count.
func (d *DeliveryTracker) Forget(ctx context.Context, key string) error {
	if d.t.closed() {
		return poison.ErrDeliveryTrackerClosed
	}
	if _, err := d.t.pool.Exec(ctx, d.forgetSQL, key); err != nil {
		return fmt.Errorf("pgstore: delivery tracker: forget %q: %w", key, err)
	}
	return nil
}

// Count implements poison.DeliveryPeeker.
func (d *DeliveryTracker) Count(ctx context.Context, key string) (int, error) {
	return d.existingCount(ctx, "count", d.countSQL, key)
}

// Decr implements poison.DeliveryDecrementer.
func (d *DeliveryTracker) Decr(ctx context.Context, key string) (int, error) {
	return d.existingCount(ctx, "decr", d.decrSQL, key)
}

// existingCount runs query, which returns key's count if it has a row,
// for operation op: no row is a count of 0.
func (d *DeliveryTracker) existingCount(ctx context.Context, op, query, key string) (int, error) {
	if d.t.closed() {
		return 0, poison.ErrDeliveryTrackerClosed
	}
	var n int
	err := d.t.pool.QueryRow(ctx, query, key).Scan(&n)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("pgstore: delivery tracker: %s %q: %w", op, key, err)
	}
	return n, nil
}

// DeleteExpired deletes the rows whose TTL has passed, in batches, and
// returns how many it deleted. The tracker calls it on its own every
// CleanupInterval (see there); call it directly when that is disabled.
func (d *DeliveryTracker) DeleteExpired(ctx context.Context) (int64, error) {
	return d.t.deleteExpired(ctx)
}

// Close cancels and waits for a running cleanup, then closes the pool if the
// tracker opened it (never a Pool passed in the config). Idempotent.
func (d *DeliveryTracker) Close() error {
	d.t.close()
	return nil
}

var (
	_ poison.DeliveryTracker     = (*DeliveryTracker)(nil)
	_ poison.DeliveryDecrementer = (*DeliveryTracker)(nil)
)
