package pgstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/antidote-mq/antidote/poison"
)

// DefaultClaimCheckStoreTable is the table a ClaimCheckStore uses when the
// config leaves Table empty.
const DefaultClaimCheckStoreTable = "antidote_claim_checks"

// ClaimCheckStoreConfig configures NewClaimCheckStore. Set exactly one of
// Pool and URL.
type ClaimCheckStoreConfig struct {
	// Pool is an existing pgx pool; the store never closes it. If Pool is
	// nil, URL must be set.
	Pool *pgxpool.Pool
	// URL is a connection string; the store opens its own pool and closes
	// it on Close. If URL is empty, Pool must be set.
	URL string
	// Table holds the claims, optionally schema-qualified. If Table is
	// empty, the store uses "antidote_claim_checks".
	Table string
	// SkipCreateTable skips the migrations NewClaimCheckStore applies
	// (creating the table, upgrading one of an older version:
	// ClaimCheckStore.Migrate), for teams that apply them themselves (antidote
	// migrate, or ClaimCheckStore.Migrations in their own tool). If false, the zero
	// value, the store migrates on start, which needs CREATE privilege.
	SkipCreateTable bool
}

func (c *ClaimCheckStoreConfig) setDefaults() {
	if c.Table == "" {
		c.Table = DefaultClaimCheckStoreTable
	}
}

// Validate reports every field that cannot work, in field order.
func (c ClaimCheckStoreConfig) Validate() error {
	return errors.Join(validateDB("ClaimCheckStoreConfig", c.Pool, c.URL, c.Table, DefaultClaimCheckStoreTable)...)
}

// ClaimCheckStore is a poison.ClaimCheck in a PostgreSQL table (key TEXT
// PRIMARY KEY, data BYTEA, created_at). A claim takes up to 1 GB
// (PostgreSQL's limit for one value). Claims never expire: a claim that
// expired before its letter would lose the message. Safe for concurrent use
// by many processes.
type ClaimCheckStore struct {
	t *table

	putSQL, getSQL, deleteSQL string
}

// NewClaimCheckStore fills cfg's defaults, validates it, opens a pool when
// cfg.URL is set and creates the table unless cfg.SkipCreateTable.
func NewClaimCheckStore(ctx context.Context, cfg ClaimCheckStoreConfig) (*ClaimCheckStore, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	t, err := openTable(ctx, "claim-check store", "ClaimCheckStoreConfig", cfg.Pool, cfg.URL, cfg.Table, "", -1)
	if err != nil {
		return nil, err
	}
	s := &ClaimCheckStore{t: t}
	s.putSQL = `INSERT INTO ` + t.ident + ` (key, data) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING`
	s.getSQL = `SELECT data FROM ` + t.ident + ` WHERE key = $1`
	s.deleteSQL = `DELETE FROM ` + t.ident + ` WHERE key = $1`
	if err := t.setUp(ctx, cfg.SkipCreateTable, "claimcheck", "antidote.claimcheck", t.name, s.steps()); err != nil {
		return nil, err
	}
	return s, nil
}

// steps are the versions of the store's schema.
func (s *ClaimCheckStore) steps() []Migration {
	return []Migration{{Version: 1, Description: "create the table (the schema before versions)", SQL: `CREATE TABLE IF NOT EXISTS ` + s.t.ident + ` (
  key        TEXT PRIMARY KEY,
  data       BYTEA NOT NULL,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now()
)`}}
}

// CreateTableSQL returns the SQL of every migration (Migrations), which
// creates the table or brings one of any earlier version up to date, for
// teams that apply schema changes themselves. It records no version:
// antidote migrate (or Migrate) does.
func (s *ClaimCheckStore) CreateTableSQL() string { return s.t.schema.SQL() }

// Migrations returns every version of the store's schema, for its
// configured table, in order.
func (s *ClaimCheckStore) Migrations() []Migration { return s.t.migrations() }

// PendingMigrations returns the migrations not applied to the table yet,
// changing nothing (no lock taken, no table created): what Migrate would
// apply now. An error wrapping ErrSchemaTooNew says the table is newer
// than this version of Antidote.
func (s *ClaimCheckStore) PendingMigrations(ctx context.Context) ([]Migration, error) {
	return s.t.pending(ctx)
}

// Migrate applies the pending migrations, in one transaction under the
// advisory lock the store takes on start, and returns them (none when
// the table is current). The constructor does this unless SkipCreateTable.
func (s *ClaimCheckStore) Migrate(ctx context.Context) ([]Migration, error) { return s.t.migrate(ctx) }

// Put implements poison.ClaimCheck.
func (s *ClaimCheckStore) Put(ctx context.Context, key string, data []byte) error {
	if _, err := s.t.pool.Exec(ctx, s.putSQL, key, data); err != nil {
		return fmt.Errorf("pgstore: claim-check store: put %q (%d bytes): %w", key, len(data), err)
	}
	return nil
}

// Get implements poison.ClaimCheck.
func (s *ClaimCheckStore) Get(ctx context.Context, key string) ([]byte, error) {
	var data []byte
	err := s.t.pool.QueryRow(ctx, s.getSQL, key).Scan(&data)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("pgstore: claim-check store: %q in %s: %w", key, s.t.ident, poison.ErrClaimNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("pgstore: claim-check store: get %q: %w", key, err)
	}
	return data, nil
}

// Delete implements poison.ClaimCheck.
func (s *ClaimCheckStore) Delete(ctx context.Context, key string) error {
	if _, err := s.t.pool.Exec(ctx, s.deleteSQL, key); err != nil {
		return fmt.Errorf("pgstore: claim-check store: delete %q: %w", key, err)
	}
	return nil
}

// Close closes the pool if the store opened it (never a Pool passed in the
// config). Idempotent.
func (s *ClaimCheckStore) Close() error {
	s.t.close()
	return nil
}

var _ poison.ClaimCheck = (*ClaimCheckStore)(nil)
