package poison

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/antidote-mq/antidote/internal/pgsweep"
)

// Defaults of PostgresDeliveryTrackerConfig.
const (
	// DefaultPostgresDeliveryTrackerTable is the table a
	// PostgresDeliveryTracker uses when the config leaves Table empty.
	DefaultPostgresDeliveryTrackerTable = "antidote_deliveries"
	// DefaultPostgresDeliveryTrackerCleanupInterval is how often, at most, a
	// PostgresDeliveryTracker deletes expired rows.
	DefaultPostgresDeliveryTrackerCleanupInterval = time.Minute
)

// pgDeliveriesCleanupBatch bounds one DELETE of the cleanup, so it never
// holds row locks on a large part of the table at once.
const pgDeliveriesCleanupBatch = 5000

var pgDeliveriesIdent = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$`)

// PostgresDeliveryTrackerConfig configures NewPostgresDeliveryTracker. Set
// exactly one of Pool and URL.
type PostgresDeliveryTrackerConfig struct {
	// Pool is an existing pgx pool. The tracker never closes it.
	Pool *pgxpool.Pool
	// URL is a connection string ("postgres://user@host:5432/db"); the
	// tracker opens its own pool and closes it on Close.
	URL string
	// Table holds the counts, optionally schema-qualified ("ops.deliveries").
	// Default "antidote_deliveries". Use a separate table per environment or
	// application if they share a database; keys already include topic and
	// handler.
	Table string
	// TTL is how long a count lives after its last Incr. Default 24h. A row
	// older than TTL counts as absent (its next Incr returns 1) even before
	// the cleanup deletes it. Keep it longer than the longest plausible
	// outage of the consumer, or a crash loop spanning the outage starts
	// counting again.
	TTL time.Duration
	// CleanupInterval is how often, at most, expired rows are deleted.
	// Default 1m. The cleanup is opportunistic: an Incr that finds the last
	// cleanup older than CleanupInterval starts one DELETE pass in a
	// goroutine that Close cancels and waits for, so the tracker starts no
	// timer and nothing outlives Close; an idle tracker deletes nothing.
	// Negative disables it (call DeleteExpired yourself, e.g. from a cron
	// job).
	CleanupInterval time.Duration
	// SkipCreateTable skips the CREATE TABLE IF NOT EXISTS done by
	// NewPostgresDeliveryTracker, for databases whose schema is managed by
	// migrations (the DDL is in PostgresDeliveryTracker.CreateTableSQL).
	SkipCreateTable bool
}

func (c *PostgresDeliveryTrackerConfig) setDefaults() {
	if c.Table == "" {
		c.Table = DefaultPostgresDeliveryTrackerTable
	}
	if c.TTL == 0 {
		c.TTL = DefaultDeliveryTrackerTTL
	}
	if c.CleanupInterval == 0 {
		c.CleanupInterval = DefaultPostgresDeliveryTrackerCleanupInterval
	}
}

// Validate reports a config that cannot work.
func (c PostgresDeliveryTrackerConfig) Validate() error {
	switch {
	case c.Pool == nil && c.URL == "":
		return errors.New("poison: PostgresDeliveryTrackerConfig needs a database: set Pool to a *pgxpool.Pool or URL to a connection string such as postgres://postgres@127.0.0.1:5432/test?sslmode=disable")
	case c.Pool != nil && c.URL != "":
		return errors.New("poison: PostgresDeliveryTrackerConfig has both Pool and URL set; set only one (Pool to share an existing pool, URL to let the tracker open and close its own)")
	}
	if c.Table != "" && !pgDeliveriesIdent.MatchString(c.Table) {
		return fmt.Errorf("poison: PostgresDeliveryTrackerConfig.Table %q is not a plain identifier; use letters, digits and underscores, optionally schema-qualified (\"schema.table\"), or leave it empty for %q", c.Table, DefaultPostgresDeliveryTrackerTable)
	}
	if c.TTL < 0 {
		return fmt.Errorf("poison: PostgresDeliveryTrackerConfig.TTL is %s; set it to a positive duration, or 0 for the default %s", c.TTL, DefaultDeliveryTrackerTTL)
	}
	if c.TTL > 0 && c.TTL < time.Millisecond {
		return fmt.Errorf("poison: PostgresDeliveryTrackerConfig.TTL is %s; set it to at least 1ms, or 0 for the default %s", c.TTL, DefaultDeliveryTrackerTTL)
	}
	return nil
}

// PostgresDeliveryTracker is a DeliveryTracker that keeps counts in a
// PostgreSQL table, one row per unsettled delivery target:
//
//	key TEXT PRIMARY KEY, count INTEGER, updated_at TIMESTAMPTZ
//
// Incr is one statement, INSERT ... ON CONFLICT (key) DO UPDATE SET count =
// count + 1 ... RETURNING count, committed before it returns, so the count
// survives a crash of the consumer right after. Forget deletes the row.
// Expired rows are deleted opportunistically (see CleanupInterval). Safe for
// concurrent use, by many processes sharing the table too.
type PostgresDeliveryTracker struct {
	cfg      PostgresDeliveryTrackerConfig
	pool     *pgxpool.Pool
	ownsPool bool
	table    string // sanitized, ready to splice into SQL

	incrSQL, decrSQL, forgetSQL string

	sweep *pgsweep.Sweeper
}

// NewPostgresDeliveryTracker validates cfg, opens a pool when cfg.URL is set,
// and creates the table (CREATE TABLE IF NOT EXISTS, serialized by an advisory
// lock so replicas starting together do not race) unless cfg.SkipCreateTable.
func NewPostgresDeliveryTracker(ctx context.Context, cfg PostgresDeliveryTrackerConfig) (*PostgresDeliveryTracker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()

	t := &PostgresDeliveryTracker{cfg: cfg, pool: cfg.Pool}
	t.table = pgx.Identifier(strings.Split(cfg.Table, ".")).Sanitize()
	if t.pool == nil {
		pool, err := pgxpool.New(ctx, cfg.URL)
		if err != nil {
			return nil, fmt.Errorf("poison: postgres delivery tracker: open pool for PostgresDeliveryTrackerConfig.URL: %w", err)
		}
		t.pool, t.ownsPool = pool, true
	}
	ttlMicros := cfg.TTL.Microseconds()
	expired := fmt.Sprintf("updated_at < now() - %d * interval '1 microsecond'", ttlMicros)
	t.incrSQL = `INSERT INTO ` + t.table + ` AS d (key, count, updated_at) VALUES ($1, 1, now())
ON CONFLICT (key) DO UPDATE SET
  count = CASE WHEN d.` + expired + ` THEN 1 ELSE d.count + 1 END,
  updated_at = now()
RETURNING count`
	t.forgetSQL = `DELETE FROM ` + t.table + ` WHERE key = $1`
	t.decrSQL = `UPDATE ` + t.table + ` SET count = count - 1 WHERE key = $1 AND count > 0 RETURNING count`
	t.sweep = pgsweep.New(t.pool, fmt.Sprintf(`DELETE FROM %s WHERE key IN (SELECT key FROM %s WHERE %s LIMIT %d)`,
		t.table, t.table, expired, pgDeliveriesCleanupBatch), pgDeliveriesCleanupBatch, t.cfg.CleanupInterval)

	if !cfg.SkipCreateTable {
		if err := t.createTable(ctx); err != nil {
			_ = t.Close()
			return nil, err
		}
	}
	return t, nil
}

// CreateTableSQL returns the DDL the tracker runs on start (unless
// SkipCreateTable), for schema migrations.
func (t *PostgresDeliveryTracker) CreateTableSQL() string {
	parts := strings.Split(t.cfg.Table, ".")
	index := pgx.Identifier{parts[len(parts)-1] + "_updated_at_idx"}.Sanitize()
	return `CREATE TABLE IF NOT EXISTS ` + t.table + ` (
  key        TEXT PRIMARY KEY,
  count      INTEGER NOT NULL,
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS ` + index + ` ON ` + t.table + ` (updated_at);`
}

func (t *PostgresDeliveryTracker) createTable(ctx context.Context) error {
	err := pgx.BeginFunc(ctx, t.pool, func(tx pgx.Tx) error {
		// Concurrent CREATE TABLE IF NOT EXISTS can still fail with a unique
		// violation on pg_type; serialize creators of this table.
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('antidote.deliveries'), hashtext($1))`, t.cfg.Table); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, t.CreateTableSQL())
		return err
	})
	if err != nil {
		return fmt.Errorf("poison: postgres delivery tracker: create table %s (needs CREATE privilege; or create it with CreateTableSQL and set SkipCreateTable): %w", t.table, err)
	}
	return nil
}

// Incr counts one more delivery of key and returns the new count.
func (t *PostgresDeliveryTracker) Incr(ctx context.Context, key string) (int, error) {
	if t.sweep.Closed() {
		return 0, ErrDeliveryTrackerClosed
	}
	var n int
	if err := t.pool.QueryRow(ctx, t.incrSQL, key).Scan(&n); err != nil {
		return 0, fmt.Errorf("poison: postgres delivery tracker: incr %q: %w", key, err)
	}
	t.sweep.Maybe()
	return n, nil
}

// Forget deletes key's count.
func (t *PostgresDeliveryTracker) Forget(ctx context.Context, key string) error {
	if t.sweep.Closed() {
		return ErrDeliveryTrackerClosed
	}
	if _, err := t.pool.Exec(ctx, t.forgetSQL, key); err != nil {
		return fmt.Errorf("poison: postgres delivery tracker: forget %q: %w", key, err)
	}
	return nil
}

// Decr implements DeliveryDecrementer.
func (t *PostgresDeliveryTracker) Decr(ctx context.Context, key string) (int, error) {
	if t.sweep.Closed() {
		return 0, ErrDeliveryTrackerClosed
	}
	var n int
	err := t.pool.QueryRow(ctx, t.decrSQL, key).Scan(&n)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("poison: postgres delivery tracker: decr %q: %w", key, err)
	}
	return n, nil
}

// DeleteExpired deletes the rows whose TTL has passed, in batches, and
// returns how many it deleted. The tracker calls it on its own every
// CleanupInterval (see there); call it directly when that is disabled.
func (t *PostgresDeliveryTracker) DeleteExpired(ctx context.Context) (int64, error) {
	n, err := t.sweep.DeleteExpired(ctx)
	if err != nil {
		return n, fmt.Errorf("poison: postgres delivery tracker: delete expired: %w", err)
	}
	return n, nil
}

// Close cancels and waits for a running cleanup, then closes the pool if the
// tracker opened it (never a Pool passed in the config). Idempotent.
func (t *PostgresDeliveryTracker) Close() error {
	if !t.sweep.Close() {
		return nil
	}
	if t.ownsPool {
		t.pool.Close()
	}
	return nil
}

var (
	_ DeliveryTracker     = (*PostgresDeliveryTracker)(nil)
	_ DeliveryDecrementer = (*PostgresDeliveryTracker)(nil)
)
