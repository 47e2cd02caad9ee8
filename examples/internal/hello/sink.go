package hello

import (
	"context"
	"fmt"
	"sync"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/antidote-mq/antidote/pgstore"
)

// Sink stores processed writes. Store must be idempotent per message UUID:
// at-least-once delivery hands the same message over more than once.
type Sink interface {
	Store(ctx context.Context, uuid string, h Hello) error
	Close() error
}

// MemorySink keeps writes in a map keyed by message UUID.
type MemorySink struct {
	mu   sync.Mutex
	rows map[string]Hello
}

// NewMemorySink returns an empty MemorySink.
func NewMemorySink() *MemorySink { return &MemorySink{rows: map[string]Hello{}} }

// Store records h under uuid.
func (s *MemorySink) Store(_ context.Context, uuid string, h Hello) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rows[uuid] = h
	return nil
}

// Len is the number of distinct messages stored.
func (s *MemorySink) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.rows)
}

// Close does nothing.
func (s *MemorySink) Close() error { return nil }

// SinkTable is the PostgreSQL sink's table.
const SinkTable = "hello_messages"

// EffectsTable is where the PostgreSQL sink writes in transactional mode
// (--idempotency postgres-tx): an append-only log with no unique key, so a
// write that happened twice shows as two rows. Only the idempotency
// transaction keeps it to one.
const EffectsTable = "hello_effects"

// PostgresSink writes to the hello_messages table, one row per message UUID;
// inside an idempotency transaction it appends to hello_effects instead.
type PostgresSink struct {
	pool *pgxpool.Pool
}

// NewPostgresSink creates the table if needed. It does not own pool.
func NewPostgresSink(ctx context.Context, pool *pgxpool.Pool) (*PostgresSink, error) {
	_, err := pool.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+SinkTable+` (
		uuid TEXT PRIMARY KEY,
		user_id BIGINT NOT NULL,
		msg TEXT NOT NULL,
		stored_at TIMESTAMPTZ NOT NULL DEFAULT now()
	)`)
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", SinkTable, err)
	}
	_, err = pool.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+EffectsTable+` (
		id BIGSERIAL PRIMARY KEY,
		uuid TEXT NOT NULL,
		user_id BIGINT NOT NULL,
		msg TEXT NOT NULL,
		stored_at TIMESTAMPTZ NOT NULL DEFAULT now()
	)`)
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", EffectsTable, err)
	}
	// The key and its number (--keys), so a test can check each key's
	// effects happened in publish order.
	if _, err := pool.Exec(ctx, `ALTER TABLE `+EffectsTable+` ADD COLUMN IF NOT EXISTS okey TEXT, ADD COLUMN IF NOT EXISTS oseq BIGINT`); err != nil {
		return nil, fmt.Errorf("alter %s: %w", EffectsTable, err)
	}
	return &PostgresSink{pool: pool}, nil
}

// Store inserts the row; a redelivered message changes nothing. In
// transactional mode the write joins the idempotency transaction, which
// commits it together with the key (or neither).
func (s *PostgresSink) Store(ctx context.Context, uuid string, h Hello) error {
	if tx, ok := pgstore.TxFromContext(ctx); ok {
		var key *string
		var seq *int64
		if t, ok := ctx.Value(orderTagKey{}).(orderTag); ok {
			key, seq = &t.key, &t.seq
		}
		_, err := tx.Exec(ctx, `INSERT INTO `+EffectsTable+` (uuid, user_id, msg, okey, oseq) VALUES ($1, $2, $3, $4, $5)`, uuid, h.UserID, h.Msg, key, seq)
		return err
	}
	_, err := s.pool.Exec(ctx, `INSERT INTO `+SinkTable+` (uuid, user_id, msg) VALUES ($1, $2, $3) ON CONFLICT (uuid) DO NOTHING`, uuid, h.UserID, h.Msg)
	return err
}

// Close does nothing: the pool belongs to the caller.
func (s *PostgresSink) Close() error { return nil }

// Ping reports whether the database answers: the breaker's HealthCheck, so
// a write that keeps failing while the database is up is dead-lettered
// instead of held like an outage.
func (s *PostgresSink) Ping(ctx context.Context) error { return s.pool.Ping(ctx) }
