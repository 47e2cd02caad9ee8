package idempotency

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/antidote-mq/antidote/internal/pgsweep"
)

// Defaults of PostgresStoreConfig.
const (
	// DefaultPostgresStoreTable is the table a PostgresStore uses when the
	// config leaves Table empty.
	DefaultPostgresStoreTable = "antidote_idempotency"
	// DefaultPostgresStoreCleanupInterval is how often, at most, expired
	// rows are deleted.
	DefaultPostgresStoreCleanupInterval = time.Minute
)

// pgCleanupBatch bounds one DELETE of the cleanup, so it never locks a large
// part of the table at once.
const pgCleanupBatch = 5000

// pgClaimAttempts bounds how often Claim retries when the row it conflicted
// with vanished before it could read it (released or cleaned up meanwhile).
const pgClaimAttempts = 5

// pgTxRollbackTimeout bounds a rollback, which runs even when the caller's
// context is cancelled.
const pgTxRollbackTimeout = 5 * time.Second

// pgTxCommitTimeout bounds the completion and commit of a transaction whose
// handler has finished, which run even when the caller's context is
// cancelled.
const pgTxCommitTimeout = 10 * time.Second

var pgIdent = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$`)

// PostgresStoreConfig configures NewPostgresStore. Set exactly one of Pool
// and URL.
type PostgresStoreConfig struct {
	// Pool is an existing pgx pool. The store never closes it. For the
	// transactional mode (RunTx) it must reach the database the handler
	// writes to, and every handler running at once holds one connection.
	Pool *pgxpool.Pool
	// URL is a connection string; the store opens its own pool and closes
	// it on Close.
	URL string
	// Table holds the keys, optionally schema-qualified ("ops.idempotency").
	// Default "antidote_idempotency". Keys are scoped by the middleware
	// (handler name, or IdempotencyConfig.Scope), so applications sharing a
	// database may share the table.
	Table string
	// Retention is how long a completed key is remembered. Default 24h.
	// Longer catches later duplicates and keeps more rows.
	Retention time.Duration
	// CleanupInterval is how often, at most, rows past their lease or
	// retention are deleted. Default 1m. The cleanup is opportunistic: a
	// Claim that finds the last cleanup older than this starts one batched
	// DELETE pass in a goroutine that Close cancels and waits for, so there
	// is no timer and nothing outlives Close; an idle store deletes nothing.
	// Negative disables it (call DeleteExpired yourself, e.g. from a cron
	// job). Expired rows count as absent either way.
	CleanupInterval time.Duration
	// SkipCreateTable skips the CREATE TABLE IF NOT EXISTS done by
	// NewPostgresStore, for schemas managed by migrations (see
	// PostgresStore.CreateTableSQL).
	SkipCreateTable bool
	// TxOptions are the options of RunTx's transactions. Default: the
	// server's default isolation (READ COMMITTED). Under REPEATABLE READ or
	// SERIALIZABLE, two copies racing for a key can fail with a
	// serialization error (SQLSTATE 40001), which the poison classifier
	// treats as transient, so the copy is retried.
	TxOptions pgx.TxOptions
}

func (c *PostgresStoreConfig) setDefaults() {
	if c.Table == "" {
		c.Table = DefaultPostgresStoreTable
	}
	if c.Retention == 0 {
		c.Retention = DefaultRetention
	}
	if c.CleanupInterval == 0 {
		c.CleanupInterval = DefaultPostgresStoreCleanupInterval
	}
}

// Validate reports a config that cannot work.
func (c PostgresStoreConfig) Validate() error {
	switch {
	case c.Pool == nil && c.URL == "":
		return errors.New("idempotency: PostgresStoreConfig needs a database: set Pool to a *pgxpool.Pool or URL to a connection string such as postgres://postgres@127.0.0.1:5432/test?sslmode=disable")
	case c.Pool != nil && c.URL != "":
		return errors.New("idempotency: PostgresStoreConfig has both Pool and URL set; set only one (Pool to share an existing pool, URL to let the store open and close its own)")
	}
	if c.Table != "" && !pgIdent.MatchString(c.Table) {
		return fmt.Errorf("idempotency: PostgresStoreConfig.Table %q is not a plain identifier; use letters, digits and underscores, optionally schema-qualified (\"schema.table\"), or leave it empty for %q", c.Table, DefaultPostgresStoreTable)
	}
	return validRetention("PostgresStoreConfig", c.Retention)
}

// PostgresStore is a Store in one PostgreSQL table, shared by every consumer
// that uses it:
//
//	key TEXT PRIMARY KEY, token TEXT, completed BOOLEAN, result BYTEA,
//	expires_at TIMESTAMPTZ
//
// expires_at is the end of the lease for a claim and the end of the
// retention for a completed key; a row past it counts as absent. Claim is
// one INSERT ... ON CONFLICT (key) DO UPDATE ... WHERE expires_at <= now()
// (a new or expired key is claimed atomically, a live one is left alone),
// plus a SELECT to report a live one's status. Complete and Release change
// the row only while it holds the caller's token. Times are the database's
// clock, so consumers on hosts with skewed clocks agree on leases.
//
// RunTx is the transactional mode: see there. Safe for concurrent use.
type PostgresStore struct {
	cfg      PostgresStoreConfig
	pool     *pgxpool.Pool
	ownsPool bool
	table    string // sanitized

	claimSQL, statusSQL, completeSQL, releaseSQL string
	txClaimSQL, txCompleteSQL                    string

	sweep *pgsweep.Sweeper
}

// NewPostgresStore validates cfg, opens a pool when cfg.URL is set and
// creates the table (unless SkipCreateTable; serialized by an advisory lock
// so replicas starting together do not race).
func NewPostgresStore(ctx context.Context, cfg PostgresStoreConfig) (*PostgresStore, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	s := &PostgresStore{cfg: cfg, pool: cfg.Pool}
	s.table = pgx.Identifier(strings.Split(cfg.Table, ".")).Sanitize()
	if s.pool == nil {
		pool, err := pgxpool.New(ctx, cfg.URL)
		if err != nil {
			return nil, fmt.Errorf("idempotency: postgres store: open pool for PostgresStoreConfig.URL: %w", err)
		}
		s.pool, s.ownsPool = pool, true
	}
	t := s.table
	const upsertClaim = `ON CONFLICT (key) DO UPDATE SET token = EXCLUDED.token, completed = false, result = NULL, expires_at = EXCLUDED.expires_at
  WHERE k.expires_at <= now()`
	s.claimSQL = `INSERT INTO ` + t + ` AS k (key, token, completed, result, expires_at)
VALUES ($1, $2, false, NULL, now() + $3::bigint * interval '1 microsecond')
` + upsertClaim + `
RETURNING true`
	s.statusSQL = `SELECT completed, result, (extract(epoch FROM expires_at - now()) * 1000000)::bigint
FROM ` + t + ` WHERE key = $1 AND expires_at > now()`
	s.completeSQL = `INSERT INTO ` + t + ` AS k (key, token, completed, result, expires_at)
VALUES ($1, $2, true, $3, now() + $4::bigint * interval '1 microsecond')
ON CONFLICT (key) DO UPDATE SET completed = true, result = EXCLUDED.result, expires_at = EXCLUDED.expires_at
  WHERE k.token = EXCLUDED.token
RETURNING true`
	s.releaseSQL = `DELETE FROM ` + t + ` WHERE key = $1 AND token = $2 AND NOT completed`
	// The advisory lock is taken first (the CTE is volatile, so evaluated
	// once, before the INSERT that reads it); ON CONFLICT judges the latest
	// committed row, not the statement's snapshot, so a completion committed
	// by a previous holder of the lock is seen.
	s.txClaimSQL = `WITH l AS (SELECT pg_try_advisory_xact_lock($1) AS locked),
ins AS (
  INSERT INTO ` + t + ` AS k (key, token, completed, result, expires_at)
  SELECT $2, $3, false, NULL, now() + interval '1 hour' FROM l WHERE l.locked
  ` + upsertClaim + `
  RETURNING true
)
SELECT l.locked, EXISTS (SELECT 1 FROM ins) FROM l`
	s.txCompleteSQL = `UPDATE ` + t + ` SET completed = true, result = $3, expires_at = now() + $4::bigint * interval '1 microsecond'
WHERE key = $1 AND token = $2`
	s.sweep = pgsweep.New(s.pool, fmt.Sprintf(`DELETE FROM %s WHERE key IN (SELECT key FROM %s WHERE expires_at <= now() LIMIT %d)`, t, t, pgCleanupBatch),
		pgCleanupBatch, s.cfg.CleanupInterval)

	if !cfg.SkipCreateTable {
		if err := s.createTable(ctx); err != nil {
			_ = s.Close()
			return nil, err
		}
	}
	return s, nil
}

// CreateTableSQL returns the DDL the store runs on start (unless
// SkipCreateTable), for schema migrations.
func (s *PostgresStore) CreateTableSQL() string {
	parts := strings.Split(s.cfg.Table, ".")
	index := pgx.Identifier{parts[len(parts)-1] + "_expires_at_idx"}.Sanitize()
	return `CREATE TABLE IF NOT EXISTS ` + s.table + ` (
  key        TEXT PRIMARY KEY,
  token      TEXT NOT NULL,
  completed  BOOLEAN NOT NULL DEFAULT false,
  result     BYTEA,
  expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS ` + index + ` ON ` + s.table + ` (expires_at);`
}

func (s *PostgresStore) createTable(ctx context.Context) error {
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// Concurrent CREATE TABLE IF NOT EXISTS can still fail with a unique
		// violation on pg_type; serialize creators of this table.
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('antidote.idempotency'), hashtext($1))`, s.cfg.Table); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, s.CreateTableSQL())
		return err
	})
	if err != nil {
		return fmt.Errorf("idempotency: postgres store: create table %s (needs CREATE privilege; or create it with CreateTableSQL and set SkipCreateTable): %w", s.table, err)
	}
	return nil
}

// Claim implements Store.
func (s *PostgresStore) Claim(ctx context.Context, key string, lease time.Duration) (Claim, error) {
	if s.sweep.Closed() {
		return Claim{}, fmt.Errorf("idempotency: claim %q: %w", key, ErrClosed)
	}
	if err := validLease(lease); err != nil {
		return Claim{}, err
	}
	s.sweep.Maybe()
	for attempt := 0; attempt < pgClaimAttempts; attempt++ {
		token := newToken()
		var claimed bool
		err := s.pool.QueryRow(ctx, s.claimSQL, key, token, lease.Microseconds()).Scan(&claimed)
		if err == nil {
			return Claim{Key: key, Status: StatusClaimed, Token: token}, nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return Claim{}, fmt.Errorf("idempotency: postgres store: claim %q: %w", key, err)
		}
		// A live row is in the way: report what it is.
		c, found, err := s.status(ctx, s.pool, key)
		if err != nil {
			return Claim{}, err
		}
		if found {
			return c, nil
		}
		// It was released or expired between the two statements: try again.
	}
	return Claim{}, fmt.Errorf("idempotency: postgres store: claim %q: the key changed hands %d times while claiming; try again", key, pgClaimAttempts)
}

type pgQuerier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// status reads a live row of key.
func (s *PostgresStore) status(ctx context.Context, q pgQuerier, key string) (Claim, bool, error) {
	var (
		completed bool
		result    []byte
		leftMicro int64
	)
	err := q.QueryRow(ctx, s.statusSQL, key).Scan(&completed, &result, &leftMicro)
	if errors.Is(err, pgx.ErrNoRows) {
		return Claim{}, false, nil
	}
	if err != nil {
		return Claim{}, false, fmt.Errorf("idempotency: postgres store: read status of %q: %w", key, err)
	}
	if completed {
		return Claim{Key: key, Status: StatusCompleted, Result: result}, true, nil
	}
	return Claim{Key: key, Status: StatusInProgress, LeaseLeft: time.Duration(max(leftMicro, 0)) * time.Microsecond}, true, nil
}

// Complete implements Store.
func (s *PostgresStore) Complete(ctx context.Context, c Claim, result []byte) error {
	if err := checkClaimed(c); err != nil {
		return err
	}
	if s.sweep.Closed() {
		return fmt.Errorf("idempotency: complete %q: %w", c.Key, ErrClosed)
	}
	var ok bool
	err := s.pool.QueryRow(ctx, s.completeSQL, c.Key, c.Token, result, s.cfg.Retention.Microseconds()).Scan(&ok)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("idempotency: postgres store: complete %q: %w", c.Key, ErrClaimLost)
	}
	if err != nil {
		return fmt.Errorf("idempotency: postgres store: complete %q: %w", c.Key, err)
	}
	return nil
}

// Release implements Store.
func (s *PostgresStore) Release(ctx context.Context, c Claim) error {
	if err := checkClaimed(c); err != nil {
		return err
	}
	if s.sweep.Closed() {
		return fmt.Errorf("idempotency: release %q: %w", c.Key, ErrClosed)
	}
	if _, err := s.pool.Exec(ctx, s.releaseSQL, c.Key, c.Token); err != nil {
		return fmt.Errorf("idempotency: postgres store: release %q: %w", c.Key, err)
	}
	return nil
}

// TxStore is a Store that can also claim a key, run the handler and complete
// the key in one database transaction (PostgresStore does).
type TxStore interface {
	Store
	RunTx(ctx context.Context, key string, fn func(ctx context.Context) (result []byte, err error)) (Claim, error)
}

type txContextKey struct{}

// TxFromContext returns the transaction RunTx runs fn in. A handler under
// middleware.Idempotency in transactional mode gets it from msg.Context():
//
//	tx, ok := idempotency.TxFromContext(msg.Context())
//
// Write through tx and the writes commit together with the key's completion,
// or not at all. Do not Commit or Rollback it yourself.
func TxFromContext(ctx context.Context) (pgx.Tx, bool) {
	tx, ok := ctx.Value(txContextKey{}).(pgx.Tx)
	return tx, ok
}

// ContextWithTx returns ctx carrying tx for TxFromContext, for tests of
// handlers that run in transactional mode and for custom TxStores.
func ContextWithTx(ctx context.Context, tx pgx.Tx) context.Context {
	return context.WithValue(ctx, txContextKey{}, tx)
}

// RunTx is the transactional mode: exactly-once effects for a handler that
// writes to this database. In one transaction it
//
//  1. takes a transaction-scoped advisory lock on key without waiting
//     (pg_try_advisory_xact_lock); held by another RunTx: StatusInProgress;
//  2. claims the key's row (completed: StatusCompleted with its result; a
//     live claim from Claim: StatusInProgress);
//  3. runs fn with ctx carrying the transaction (TxFromContext);
//  4. marks the key completed with fn's result, and commits.
//
// fn's writes and the completion commit together, so whatever happens to
// the consumer (a crash, a SIGKILL, a lost connection) the effect is applied
// exactly once: before the commit PostgreSQL rolls everything back (and
// releases the lock the moment the connection dies, so the redelivery runs
// at once, without waiting for a lease); after it, the redelivery finds the
// key completed. No lease is involved.
//
// It returns the Claim with StatusCompleted or StatusInProgress (fn did not
// run), or StatusClaimed: fn ran, and the error is nil (committed), fn's own
// error as returned (rolled back), or a store error (rolled back, or a
// commit whose outcome is unknown: a redelivery will find out). Messages
// the handler publishes are not part of the transaction: publish them
// through a transactional outbox in the same database (watermill-sql's
// publisher on the transaction) or return them from the handler.
func (s *PostgresStore) RunTx(ctx context.Context, key string, fn func(ctx context.Context) ([]byte, error)) (c Claim, err error) {
	if s.sweep.Closed() {
		return Claim{}, fmt.Errorf("idempotency: run %q in a transaction: %w", key, ErrClosed)
	}
	s.sweep.Maybe()
	tx, err := s.pool.BeginTx(ctx, s.cfg.TxOptions)
	if err != nil {
		return Claim{}, fmt.Errorf("idempotency: postgres store: begin transaction for %q: %w", key, err)
	}
	committed := false
	defer func() {
		if committed {
			return
		}
		// Runs on panics too; without cancel, so a shutdown cannot leave the
		// connection in an aborted transaction.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), pgTxRollbackTimeout)
		defer cancel()
		_ = tx.Rollback(rctx)
	}()

	token := newToken()
	var locked, claimed bool
	if err := tx.QueryRow(ctx, s.txClaimSQL, s.lockID(key), key, token).Scan(&locked, &claimed); err != nil {
		return Claim{}, fmt.Errorf("idempotency: postgres store: claim %q in a transaction: %w", key, err)
	}
	if !locked {
		return Claim{Key: key, Status: StatusInProgress}, nil
	}
	if !claimed {
		st, found, err := s.status(ctx, tx, key)
		if err != nil {
			return Claim{}, err
		}
		if !found {
			// Released between the two statements: report busy, the
			// caller asks again shortly.
			st = Claim{Key: key, Status: StatusInProgress}
		}
		return st, nil
	}

	c = Claim{Key: key, Status: StatusClaimed, Token: token}
	result, ferr := fn(ContextWithTx(ctx, tx))
	if ferr != nil {
		return c, ferr
	}
	// fn is done: complete and commit even if ctx was cancelled meanwhile
	// (a router closing), or the finished work is rolled back and redone.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), pgTxCommitTimeout)
	defer cancel()
	tag, err := tx.Exec(sctx, s.txCompleteSQL, key, token, result, s.cfg.Retention.Microseconds())
	if err != nil {
		return c, fmt.Errorf("idempotency: postgres store: complete %q in the transaction: %w", key, err)
	}
	if tag.RowsAffected() != 1 {
		return c, fmt.Errorf("idempotency: postgres store: complete %q in the transaction: %w", key, ErrClaimLost)
	}
	if err := tx.Commit(sctx); err != nil {
		return c, fmt.Errorf("idempotency: postgres store: commit %q: %w", key, err)
	}
	committed = true
	return c, nil
}

// lockID maps (table, key) to the 64-bit advisory lock key. A collision
// between two keys only makes one of them wait for the other.
func (s *PostgresStore) lockID(key string) int64 {
	h := fnv.New64a()
	h.Write([]byte(s.cfg.Table))
	h.Write([]byte{0})
	h.Write([]byte(key))
	return int64(h.Sum64())
}

// DeleteExpired deletes rows past their lease or retention, in batches, and
// returns how many. The store calls it on its own every CleanupInterval.
func (s *PostgresStore) DeleteExpired(ctx context.Context) (int64, error) {
	n, err := s.sweep.DeleteExpired(ctx)
	if err != nil {
		return n, fmt.Errorf("idempotency: postgres store: delete expired: %w", err)
	}
	return n, nil
}

// Close cancels and waits for a running cleanup, then closes the pool if the
// store opened it (never a Pool passed in the config). Idempotent.
func (s *PostgresStore) Close() error {
	if !s.sweep.Close() {
		return nil
	}
	if s.ownsPool {
		s.pool.Close()
	}
	return nil
}

var _ TxStore = (*PostgresStore)(nil)
