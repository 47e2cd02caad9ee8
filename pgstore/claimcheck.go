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
	// SkipCreateTable skips the CREATE TABLE IF NOT EXISTS of
	// NewClaimCheckStore, for schemas managed by migrations
	// (ClaimCheckStore.CreateTableSQL). If false, the store creates the
	// table on start.
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
	if err := t.setUp(ctx, cfg.SkipCreateTable, "antidote.claimcheck", s.CreateTableSQL()); err != nil {
		return nil, err
	}
	return s, nil
}

// CreateTableSQL is the DDL NewClaimCheckStore runs, for migrations.
func (s *ClaimCheckStore) CreateTableSQL() string {
	return `CREATE TABLE IF NOT EXISTS ` + s.t.ident + ` (
  key        TEXT PRIMARY KEY,
  data       BYTEA NOT NULL,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now()
)`
}

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
