package dlq

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/hospital"
)

// postgresWard is a PostgreSQL DLQ's queue table: a letter is a row (its
// ID the row's offset), and treating it locks the row (FOR UPDATE SKIP
// LOCKED: a row another treatment, or an ingester, holds is skipped), runs
// the replay's insert in the same transaction and deletes the row, so the
// replay is in its topic's table exactly when the letter is gone.
type postgresWard struct {
	walk
	pool  *pgxpool.Pool
	table string
	tx    pgx.Tx // the treatment under way, under walk.mu
	ctx   context.Context
	ready map[string]bool // replay topics whose table exists, under walk.mu
}

func newPostgresWard(ctx context.Context, h *Hospital, dlqTopic string) (*postgresWard, error) {
	pool, err := adapters.OpenPostgresPool(ctx, h.cfg.Adapters)
	if err != nil {
		return nil, err
	}
	w := &postgresWard{walk: walk{h: h, dlqTopic: dlqTopic}, pool: pool, table: adapters.PostgresTable(h.cfg.Adapters.Postgres, dlqTopic),
		ready: map[string]bool{}}
	w.fetch = w.load
	return w, nil
}

func (w *postgresWard) close() error { w.pool.Close(); return nil }

func (w *postgresWard) load(ctx context.Context) ([]hospital.Letter, error) {
	rows, err := w.pool.Query(ctx, `SELECT "offset", uuid, payload, metadata, created_at FROM `+w.table+` WHERE acked = false ORDER BY "offset"`)
	if adapters.IsUndefinedTable(err) {
		return nil, nil // no table: nothing was ever dead-lettered
	}
	if err != nil {
		return nil, fmt.Errorf("dlq: read %s: %w", w.table, err)
	}
	defer rows.Close()
	var out []hospital.Letter
	for rows.Next() {
		var offset int64
		var uuid string
		var payload, raw []byte
		var created time.Time
		if err := rows.Scan(&offset, &uuid, &payload, &raw, &created); err != nil {
			return nil, fmt.Errorf("dlq: read %s: %w", w.table, err)
		}
		m := message.NewMessage(uuid, payload)
		m.Metadata, _ = adapters.PostgresMetadata(raw, offset) // a malformed column is kept in the metadata
		m.SetContext(antidote.WithRecord(ctx, antidote.Record{Place: strconv.FormatInt(offset, 10), Time: created}))
		l := w.h.letter(ctx, m, w.dlqTopic)
		l.ID, l.IngestedAt = offset, created
		out = append(out, l)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("dlq: read %s: %w", w.table, err)
	}
	return out, nil
}

// Treat implements hospital.Ward.
func (w *postgresWard) Treat(ctx context.Context, id int64, to hospital.State, actor, detail string, do func(hospital.Letter) error) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	l, err := w.taken(id)
	if err != nil {
		return err
	}
	tx, err := w.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("dlq: treat letter %s of %s: %w", l.UUID, w.table, err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	var one int
	err = tx.QueryRow(ctx, `SELECT 1 FROM `+w.table+` WHERE "offset" = $1 FOR UPDATE SKIP LOCKED`, id).Scan(&one)
	if errors.Is(err, pgx.ErrNoRows) {
		held := w.pool.QueryRow(ctx, `SELECT 1 FROM `+w.table+` WHERE "offset" = $1`, id).Scan(&one) == nil
		if held {
			return fmt.Errorf("dlq: letter %s of %s is being treated by another treatment (or ingested): %w", l.UUID, w.table, hospital.ErrNotDead)
		}
		return fmt.Errorf("dlq: letter %s of %s was treated by another treatment: %w", l.UUID, w.table, hospital.ErrNotDead)
	}
	if err != nil {
		return fmt.Errorf("dlq: lock letter %s of %s: %w", l.UUID, w.table, err)
	}
	if do != nil {
		w.tx, w.ctx = tx, ctx
		err := do(*l)
		w.tx, w.ctx = nil, nil
		if err != nil {
			return err
		}
	}
	if _, err := tx.Exec(ctx, `DELETE FROM `+w.table+` WHERE "offset" = $1`, id); err != nil {
		return fmt.Errorf("dlq: remove letter %s from %s: %w", l.UUID, w.table, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("dlq: commit the treatment of letter %s of %s: %w", l.UUID, w.table, err)
	}
	l.State = to
	w.logTreated(*l, to, actor, detail)
	return nil
}

// publisher publishes into the treatment's transaction.
func (w *postgresWard) publisher() message.Publisher { return postgresTxPublisher{w} }

type postgresTxPublisher struct{ w *postgresWard }

func (p postgresTxPublisher) Publish(topic string, msgs ...*message.Message) error {
	if p.w.tx == nil {
		return errors.New("dlq: a PostgreSQL DLQ's replays are published within the treatment of their letter only")
	}
	if !p.w.ready[topic] {
		if err := adapters.EnsurePostgresTable(p.w.ctx, p.w.h.cfg.Adapters, p.w.pool, topic); err != nil {
			return err
		}
		p.w.ready[topic] = true
	}
	pub, err := adapters.NewPostgresTxPublisher(p.w.h.cfg.Adapters, p.w.tx)
	if err != nil {
		return err
	}
	return pub.Publish(topic, msgs...)
}

func (postgresTxPublisher) Close() error { return nil }
