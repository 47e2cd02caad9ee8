package pgstore

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/antidote-mq/antidote/idempotency"
)

// DefaultIdempotencyStoreTable is the table an IdempotencyStore uses when
// the config leaves Table empty.
const DefaultIdempotencyStoreTable = "antidote_idempotency"

// claimAttempts bounds how often Claim retries when the row it conflicted
// with vanished before it could read it (released or cleaned up meanwhile).
const claimAttempts = 5

// txRollbackTimeout bounds a rollback, which runs even when the caller's
// context is cancelled.
const txRollbackTimeout = 5 * time.Second

// txCommitTimeout bounds the completion and commit of a transaction whose
// handler has finished, which run even when the caller's context is
// cancelled.
const txCommitTimeout = 10 * time.Second

// IdempotencyStoreConfig configures NewIdempotencyStore. Set exactly one of
// Pool and URL.
type IdempotencyStoreConfig struct {
	// Pool is an existing pgx pool; the store never closes it. If Pool is
	// nil, URL must be set. For the transactional mode (RunTx) it must reach
	// the database the handler writes to, and every handler running at once
	// holds one connection.
	Pool *pgxpool.Pool
	// URL is a connection string; the store opens its own pool and closes
	// it on Close. If URL is empty, Pool must be set.
	URL string
	// Table holds the keys, optionally schema-qualified
	// ("ops.idempotency"). If Table is empty, the store uses
	// "antidote_idempotency". Keys are scoped by the middleware (handler
	// name, or IdempotencyConfig.Scope), so applications sharing a database
	// may share the table.
	Table string
	// Retention is how long a completed key is remembered. If Retention is
	// zero, the store uses idempotency.DefaultRetention (24h). Longer
	// catches later duplicates and keeps more rows.
	Retention time.Duration
	// CleanupInterval is how often, at most, rows past their lease or
	// retention are deleted. If CleanupInterval is zero, the store uses
	// DefaultCleanupInterval (1m); if it is negative, the store never
	// deletes on its own (call DeleteExpired, e.g. from a cron job). The
	// cleanup is opportunistic: a Claim that finds the last cleanup older
	// than this starts one batched DELETE pass in a goroutine that Close
	// cancels and waits for; an idle store deletes nothing. Expired rows
	// count as absent either way.
	CleanupInterval time.Duration
	// SkipCreateTable skips the migrations NewIdempotencyStore applies
	// (creating the table, upgrading one of an older version:
	// IdempotencyStore.Migrate), for teams that apply them themselves (antidote
	// migrate, or IdempotencyStore.Migrations in their own tool). If false, the zero
	// value, the store migrates on start, which needs CREATE privilege.
	SkipCreateTable bool
	// TxOptions are the options of RunTx's transactions. If TxOptions is
	// zero, the server's default isolation applies (READ COMMITTED). Under
	// REPEATABLE READ or SERIALIZABLE, two copies racing for a key can fail
	// with a serialization error (SQLSTATE 40001), which the poison
	// classifier treats as transient, so the copy is retried.
	TxOptions pgx.TxOptions
}

func (c *IdempotencyStoreConfig) setDefaults() {
	if c.Table == "" {
		c.Table = DefaultIdempotencyStoreTable
	}
	if c.Retention == 0 {
		c.Retention = idempotency.DefaultRetention
	}
	if c.CleanupInterval == 0 {
		c.CleanupInterval = DefaultCleanupInterval
	}
}

// Validate reports every field that cannot work, in field order.
func (c IdempotencyStoreConfig) Validate() error {
	errs := validateDB("IdempotencyStoreConfig", c.Pool, c.URL, c.Table, DefaultIdempotencyStoreTable)
	errs = append(errs, validateDuration("IdempotencyStoreConfig.Retention", c.Retention, idempotency.DefaultRetention))
	return errors.Join(errs...)
}

// IdempotencyStore is an idempotency.TxStore in one PostgreSQL table,
// shared by every consumer that uses it:
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
type IdempotencyStore struct {
	cfg IdempotencyStoreConfig
	t   *table

	claimSQL, statusSQL, completeSQL, releaseSQL string
	txClaimSQL, txCompleteSQL                    string
}

// NewIdempotencyStore fills cfg's defaults, validates it, opens a pool when
// cfg.URL is set and creates the table (unless SkipCreateTable; serialized
// by an advisory lock so replicas starting together do not race).
func NewIdempotencyStore(ctx context.Context, cfg IdempotencyStoreConfig) (*IdempotencyStore, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	tb, err := openTable(ctx, "idempotency store", "IdempotencyStoreConfig", cfg.Pool, cfg.URL, cfg.Table, "expires_at <= now()", cfg.CleanupInterval)
	if err != nil {
		return nil, err
	}
	s := &IdempotencyStore{cfg: cfg, t: tb}
	t := tb.ident
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
	if err := tb.setUp(ctx, cfg.SkipCreateTable, "idempotency", "antidote.idempotency", tb.name, s.steps()); err != nil {
		return nil, err
	}
	return s, nil
}

// steps are the versions of the store's schema.
func (s *IdempotencyStore) steps() []Migration {
	return []Migration{{Version: 1, Description: "create the table (the schema before versions)", SQL: `CREATE TABLE IF NOT EXISTS ` + s.t.ident + ` (
  key        TEXT PRIMARY KEY,
  token      TEXT NOT NULL,
  completed  BOOLEAN NOT NULL DEFAULT false,
  result     BYTEA,
  expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS ` + s.t.indexName("_expires_at_idx") + ` ON ` + s.t.ident + ` (expires_at);`}}
}

// CreateTableSQL returns the SQL of every migration (Migrations), which
// creates the table or brings one of any earlier version up to date, for
// teams that apply schema changes themselves. It records no version:
// antidote migrate (or Migrate) does.
func (s *IdempotencyStore) CreateTableSQL() string { return s.t.schema.SQL() }

// Migrations returns every version of the store's schema, for its
// configured table, in order.
func (s *IdempotencyStore) Migrations() []Migration { return s.t.migrations() }

// PendingMigrations returns the migrations not applied to the table yet,
// changing nothing (no lock taken, no table created): what Migrate would
// apply now. An error wrapping ErrSchemaTooNew says the table is newer
// than this version of Antidote.
func (s *IdempotencyStore) PendingMigrations(ctx context.Context) ([]Migration, error) {
	return s.t.pending(ctx)
}

// Migrate applies the pending migrations, in one transaction under the
// advisory lock the store takes on start, and returns them (none when
// the table is current). The constructor does this unless SkipCreateTable.
func (s *IdempotencyStore) Migrate(ctx context.Context) ([]Migration, error) { return s.t.migrate(ctx) }

// Claim implements idempotency.Store.
func (s *IdempotencyStore) Claim(ctx context.Context, key string, lease time.Duration) (idempotency.Claim, error) {
	if s.t.closed() {
		return idempotency.Claim{}, fmt.Errorf("pgstore: idempotency store: claim %q: %w", key, idempotency.ErrClosed)
	}
	if err := idempotency.CheckLease(lease); err != nil {
		return idempotency.Claim{}, err
	}
	s.t.sweep.Maybe()
	for attempt := 0; attempt < claimAttempts; attempt++ {
		token := idempotency.NewToken()
		var claimed bool
		err := s.t.pool.QueryRow(ctx, s.claimSQL, key, token, lease.Microseconds()).Scan(&claimed)
		if err == nil {
			return idempotency.Claim{Key: key, Status: idempotency.StatusClaimed, Token: token}, nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return idempotency.Claim{}, fmt.Errorf("pgstore: idempotency store: claim %q: %w", key, err)
		}
		// A live row is in the way: report what it is.
		c, found, err := s.status(ctx, s.t.pool, key)
		if err != nil {
			return idempotency.Claim{}, err
		}
		if found {
			return c, nil
		}
		// It was released or expired between the two statements: try again.
	}
	return idempotency.Claim{}, fmt.Errorf("pgstore: idempotency store: claim %q: the key changed hands %d times while claiming; try again", key, claimAttempts)
}

type pgQuerier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// status reads a live row of key.
func (s *IdempotencyStore) status(ctx context.Context, q pgQuerier, key string) (idempotency.Claim, bool, error) {
	var (
		completed bool
		result    []byte
		leftMicro int64
	)
	err := q.QueryRow(ctx, s.statusSQL, key).Scan(&completed, &result, &leftMicro)
	if errors.Is(err, pgx.ErrNoRows) {
		return idempotency.Claim{}, false, nil
	}
	if err != nil {
		return idempotency.Claim{}, false, fmt.Errorf("pgstore: idempotency store: read status of %q: %w", key, err)
	}
	if completed {
		return idempotency.Claim{Key: key, Status: idempotency.StatusCompleted, Result: result}, true, nil
	}
	return idempotency.Claim{Key: key, Status: idempotency.StatusInProgress, LeaseLeft: time.Duration(max(leftMicro, 0)) * time.Microsecond}, true, nil
}

// Complete implements idempotency.Store.
func (s *IdempotencyStore) Complete(ctx context.Context, c idempotency.Claim, result []byte) error {
	if err := idempotency.CheckClaimed(c); err != nil {
		return err
	}
	if s.t.closed() {
		return fmt.Errorf("pgstore: idempotency store: complete %q: %w", c.Key, idempotency.ErrClosed)
	}
	var ok bool
	err := s.t.pool.QueryRow(ctx, s.completeSQL, c.Key, c.Token, result, s.cfg.Retention.Microseconds()).Scan(&ok)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("pgstore: idempotency store: complete %q: %w", c.Key, idempotency.ErrClaimLost)
	}
	if err != nil {
		return fmt.Errorf("pgstore: idempotency store: complete %q: %w", c.Key, err)
	}
	return nil
}

// Release implements idempotency.Store.
func (s *IdempotencyStore) Release(ctx context.Context, c idempotency.Claim) error {
	if err := idempotency.CheckClaimed(c); err != nil {
		return err
	}
	if s.t.closed() {
		return fmt.Errorf("pgstore: idempotency store: release %q: %w", c.Key, idempotency.ErrClosed)
	}
	if _, err := s.t.pool.Exec(ctx, s.releaseSQL, c.Key, c.Token); err != nil {
		return fmt.Errorf("pgstore: idempotency store: release %q: %w", c.Key, err)
	}
	return nil
}

type txContextKey struct{}

// TxFromContext returns the transaction RunTx runs fn in. A handler under
// middleware.Idempotency in transactional mode gets it from msg.Context():
//
//	tx, ok := pgstore.TxFromContext(msg.Context())
//
// Write through tx and the writes commit together with the key's completion,
// or not at all. Do not Commit or Rollback it yourself.
func TxFromContext(ctx context.Context) (pgx.Tx, bool) {
	tx, ok := ctx.Value(txContextKey{}).(pgx.Tx)
	return tx, ok
}

// ContextWithTx returns ctx carrying tx for TxFromContext, for tests of
// handlers that run in transactional mode and for custom
// idempotency.TxStores.
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
func (s *IdempotencyStore) RunTx(ctx context.Context, key string, fn func(ctx context.Context) ([]byte, error)) (c idempotency.Claim, err error) {
	if s.t.closed() {
		return idempotency.Claim{}, fmt.Errorf("pgstore: idempotency store: run %q in a transaction: %w", key, idempotency.ErrClosed)
	}
	s.t.sweep.Maybe()
	tx, err := s.t.pool.BeginTx(ctx, s.cfg.TxOptions)
	if err != nil {
		return idempotency.Claim{}, fmt.Errorf("pgstore: idempotency store: begin transaction for %q: %w", key, err)
	}
	committed := false
	defer func() {
		if committed {
			return
		}
		// Runs on panics too; without cancel, so a shutdown cannot leave the
		// connection in an aborted transaction.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), txRollbackTimeout)
		defer cancel()
		_ = tx.Rollback(rctx)
	}()

	token := idempotency.NewToken()
	var locked, claimed bool
	if err := tx.QueryRow(ctx, s.txClaimSQL, s.lockID(key), key, token).Scan(&locked, &claimed); err != nil {
		return idempotency.Claim{}, fmt.Errorf("pgstore: idempotency store: claim %q in a transaction: %w", key, err)
	}
	if !locked {
		return idempotency.Claim{Key: key, Status: idempotency.StatusInProgress}, nil
	}
	if !claimed {
		st, found, err := s.status(ctx, tx, key)
		if err != nil {
			return idempotency.Claim{}, err
		}
		if !found {
			// Released between the two statements: report busy, the
			// caller asks again shortly.
			st = idempotency.Claim{Key: key, Status: idempotency.StatusInProgress}
		}
		return st, nil
	}

	c = idempotency.Claim{Key: key, Status: idempotency.StatusClaimed, Token: token}
	result, ferr := fn(ContextWithTx(ctx, tx))
	if ferr != nil {
		return c, ferr
	}
	// fn is done: complete and commit even if ctx was cancelled meanwhile
	// (a router closing), or the finished work is rolled back and redone.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), txCommitTimeout)
	defer cancel()
	tag, err := tx.Exec(sctx, s.txCompleteSQL, key, token, result, s.cfg.Retention.Microseconds())
	if err != nil {
		return c, fmt.Errorf("pgstore: idempotency store: complete %q in the transaction: %w", key, err)
	}
	if tag.RowsAffected() != 1 {
		return c, fmt.Errorf("pgstore: idempotency store: complete %q in the transaction: %w", key, idempotency.ErrClaimLost)
	}
	if err := tx.Commit(sctx); err != nil {
		return c, fmt.Errorf("pgstore: idempotency store: commit %q: %w", key, err)
	}
	committed = true
	return c, nil
}

// lockID maps (table, key) to the 64-bit advisory lock key. A collision
// between two keys only makes one of them wait for the other.
func (s *IdempotencyStore) lockID(key string) int64 {
	h := fnv.New64a()
	h.Write([]byte(s.cfg.Table))
	h.Write([]byte{0})
	h.Write([]byte(key))
	return int64(h.Sum64())
}

// DeleteExpired deletes rows past their lease or retention, in batches, and
// returns how many. The store calls it on its own every CleanupInterval.
func (s *IdempotencyStore) DeleteExpired(ctx context.Context) (int64, error) {
	return s.t.deleteExpired(ctx)
}

// Close cancels and waits for a running cleanup, then closes the pool if the
// store opened it (never a Pool passed in the config). Idempotent.
func (s *IdempotencyStore) Close() error {
	s.t.close()
	return nil
}

var _ idempotency.TxStore = (*IdempotencyStore)(nil)
