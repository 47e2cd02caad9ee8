package claimcheck

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/antidote-mq/antidote/poison"
)

// DefaultPostgresTable is PostgresConfig.Table when empty.
const DefaultPostgresTable = "antidote_claim_checks"

var pgIdent = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$`)

// PostgresConfig configures NewPostgresStore. Set exactly one of Pool and URL.
type PostgresConfig struct {
	// Pool is an existing pgx pool; the store never closes it.
	Pool *pgxpool.Pool
	// URL is a connection string; the store opens its own pool and closes
	// it on Close.
	URL string
	// Table holds the claims, optionally schema-qualified. If empty, the
	// store uses "antidote_claim_checks".
	Table string
	// SkipCreateTable skips the CREATE TABLE IF NOT EXISTS of
	// NewPostgresStore, for schemas managed by migrations (CreateTableSQL).
	// If false, the store creates the table on start.
	SkipCreateTable bool
}

func (c *PostgresConfig) setDefaults() {
	if c.Table == "" {
		c.Table = DefaultPostgresTable
	}
}

// Validate reports every field that cannot work.
func (c PostgresConfig) Validate() error {
	var errs []error
	switch {
	case c.Pool == nil && c.URL == "":
		errs = append(errs, errors.New("claimcheck: PostgresConfig needs a database: set Pool to a *pgxpool.Pool or URL to a connection string such as postgres://postgres@127.0.0.1:5432/test?sslmode=disable"))
	case c.Pool != nil && c.URL != "":
		errs = append(errs, errors.New("claimcheck: PostgresConfig has both Pool and URL set; set only one"))
	}
	if !pgIdent.MatchString(c.Table) {
		errs = append(errs, fmt.Errorf("claimcheck: PostgresConfig.Table %q is not a plain identifier; use letters, digits and underscores (at most 63), optionally schema-qualified", c.Table))
	}
	return errors.Join(errs...)
}

// PostgresStore keeps claims in a PostgreSQL table (key TEXT PRIMARY KEY,
// data BYTEA, created_at). A claim takes up to 1 GB (PostgreSQL's limit for
// one value). Safe for concurrent use by many processes.
type PostgresStore struct {
	cfg      PostgresConfig
	pool     *pgxpool.Pool
	ownsPool bool
	table    string
}

// NewPostgresStore fills defaults, validates cfg, opens a pool when URL is
// set and creates the table unless SkipCreateTable.
func NewPostgresStore(ctx context.Context, cfg PostgresConfig) (*PostgresStore, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &PostgresStore{cfg: cfg, pool: cfg.Pool, table: pgx.Identifier(strings.Split(cfg.Table, ".")).Sanitize()}
	if s.pool == nil {
		pool, err := pgxpool.New(ctx, cfg.URL)
		if err != nil {
			return nil, fmt.Errorf("claimcheck: open pool for PostgresConfig.URL: %w", err)
		}
		s.pool, s.ownsPool = pool, true
	}
	if !cfg.SkipCreateTable {
		err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			// Concurrent CREATE TABLE IF NOT EXISTS can fail on pg_type.
			if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('antidote.claimcheck'), hashtext($1))`, cfg.Table); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, s.CreateTableSQL())
			return err
		})
		if err != nil {
			_ = s.Close()
			return nil, fmt.Errorf("claimcheck: create table %s (needs CREATE privilege; or create it with CreateTableSQL and set SkipCreateTable): %w", s.table, err)
		}
	}
	return s, nil
}

// CreateTableSQL is the DDL NewPostgresStore runs, for migrations.
func (s *PostgresStore) CreateTableSQL() string {
	return `CREATE TABLE IF NOT EXISTS ` + s.table + ` (
  key        TEXT PRIMARY KEY,
  data       BYTEA NOT NULL,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now()
)`
}

// Put implements poison.ClaimCheck.
func (s *PostgresStore) Put(ctx context.Context, key string, data []byte) error {
	if _, err := s.pool.Exec(ctx, `INSERT INTO `+s.table+` (key, data) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING`, key, data); err != nil {
		return fmt.Errorf("claimcheck: put %q (%d bytes): %w", key, len(data), err)
	}
	return nil
}

// Get implements poison.ClaimCheck.
func (s *PostgresStore) Get(ctx context.Context, key string) ([]byte, error) {
	var data []byte
	err := s.pool.QueryRow(ctx, `SELECT data FROM `+s.table+` WHERE key = $1`, key).Scan(&data)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("claimcheck: %q in %s: %w", key, s.table, poison.ErrClaimNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("claimcheck: get %q: %w", key, err)
	}
	return data, nil
}

// Delete implements poison.ClaimCheck.
func (s *PostgresStore) Delete(ctx context.Context, key string) error {
	if _, err := s.pool.Exec(ctx, `DELETE FROM `+s.table+` WHERE key = $1`, key); err != nil {
		return fmt.Errorf("claimcheck: delete %q: %w", key, err)
	}
	return nil
}

// Close closes the pool if the store opened it.
func (s *PostgresStore) Close() error {
	if s.ownsPool {
		s.pool.Close()
	}
	return nil
}
