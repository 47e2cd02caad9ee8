package dlq

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/adapters"
)

// postgresStore reads the DLQ's queue table directly: a letter is a row, and
// resolving it deletes the row, as an ack does.
type postgresStore struct {
	pool *pgxpool.Pool
	cfg  adapters.PostgresConfig
}

func newPostgresStore(ctx context.Context, cfg Config) (*postgresStore, error) {
	pool, err := adapters.OpenPostgresPool(ctx, cfg.Adapters)
	if err != nil {
		return nil, err
	}
	return &postgresStore{pool: pool, cfg: cfg.Adapters.Postgres}, nil
}

func (s *postgresStore) close() error { s.pool.Close(); return nil }

type pgRow struct {
	offset   int64
	uuid     string
	payload  []byte
	metadata []byte
}

func (s *postgresStore) visit(ctx context.Context, dlqTopic string, fn func(*message.Message) (bool, error)) error {
	table := adapters.PostgresTable(s.cfg, dlqTopic)
	rows, err := s.pool.Query(ctx, `SELECT "offset", uuid, payload, metadata FROM `+table+` ORDER BY "offset"`)
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42P01" { // no table: nothing was ever dead-lettered
			return nil
		}
		return fmt.Errorf("dlq: read %s: %w", table, err)
	}
	var all []pgRow
	for rows.Next() {
		var r pgRow
		if err := rows.Scan(&r.offset, &r.uuid, &r.payload, &r.metadata); err != nil {
			rows.Close()
			return fmt.Errorf("dlq: read %s: %w", table, err)
		}
		all = append(all, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("dlq: read %s: %w", table, err)
	}
	for _, r := range all {
		m := message.NewMessage(r.uuid, r.payload)
		if len(r.metadata) > 0 {
			var md map[string]string
			if err := json.Unmarshal(r.metadata, &md); err != nil {
				m.Metadata.Set(antidote.MetadataRawMetadata, string(r.metadata))
			} else {
				m.Metadata = md
			}
		}
		resolve, err := fn(m)
		if errors.Is(err, errStop) {
			return nil
		}
		if err != nil {
			return err
		}
		if resolve {
			if _, err := s.pool.Exec(ctx, `DELETE FROM `+table+` WHERE "offset" = $1`, r.offset); err != nil {
				return fmt.Errorf("dlq: remove letter %s from %s: %w", r.uuid, table, err)
			}
		}
	}
	return nil
}
