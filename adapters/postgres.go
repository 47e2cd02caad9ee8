package adapters

import (
	"context"
	"fmt"
	"net"
	"strconv"

	"github.com/ThreeDotsLabs/watermill"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/jackc/pgx/v5/pgxpool"
)

// PostgresTable is the quoted table name that holds topic's queue.
func PostgresTable(cfg PostgresConfig, topic string) string {
	return strconv.Quote(cfg.TablePrefix + topic)
}

// PostgresQueueSchema returns the watermill-sql queue schema and offsets
// adapter Open uses: one table per topic, BYTEA payloads (any bytes, not only
// valid JSON), rows deleted when acked (only those, see
// PostgresQueueOffsetsAdapter), rows decoded by TolerantPostgresQueueSchema,
// rows delayed by the Scheduler skipped until due.
func PostgresQueueSchema(cfg PostgresConfig) (TolerantPostgresQueueSchema, PostgresQueueOffsetsAdapter) {
	table := func(topic string) string { return PostgresTable(cfg, topic) }
	return TolerantPostgresQueueSchema{wsql.PostgreSQLQueueSchema{
			GeneratePayloadType:       func(string) string { return "BYTEA" },
			GenerateMessagesTableName: table,
			SubscribeBatchSize:        cfg.BatchSize,
			GenerateWhereClause: func(wsql.GenerateWhereClauseParams) (string, []any) {
				return postgresDueClause, nil
			},
		}}, PostgresQueueOffsetsAdapter{wsql.PostgreSQLQueueOffsetsAdapter{
			DeleteOnAck:               true,
			GenerateMessagesTableName: table,
		}}
}

// PostgresQueueOffsetsAdapter acks (deletes) only the rows whose messages
// were acked.
//
// watermill-sql's subscriber (v4.1.2) locks a batch of rows, hands them out
// one at a time and stops at the first message that is not acked: its ack
// deadline passed, or the subscriber is closing. It then runs the ack query
// with LastRow, the last acked row, but also Rows, the whole batch, and
// PostgreSQLQueueOffsetsAdapter deletes every row in Rows: the messages
// after the one that timed out were deleted without ever being delivered.
// Rows are handed out in order and the first unacked one ends the batch, so
// the acked rows are exactly those up to and including LastRow.
type PostgresQueueOffsetsAdapter struct {
	wsql.PostgreSQLQueueOffsetsAdapter
}

// AckMessageQuery implements sql.OffsetsAdapter.
func (a PostgresQueueOffsetsAdapter) AckMessageQuery(params wsql.AckMessageQueryParams) (wsql.Query, error) {
	params.Rows = ackedRows(params.Rows, params.LastRow)
	return a.PostgreSQLQueueOffsetsAdapter.AckMessageQuery(params)
}

// ackedRows is the prefix of rows up to and including last; none when last
// is not among them (nothing was acked).
func ackedRows(rows []wsql.Row, last wsql.Row) []wsql.Row {
	for i, r := range rows {
		if r.Offset == last.Offset {
			return rows[:i+1]
		}
	}
	return nil
}

// OpenPostgresPool connects a pgx pool to cfg.Postgres.URL and checks that
// the server answers within cfg.ConnectTimeout.
func OpenPostgresPool(ctx context.Context, cfg Config) (*pgxpool.Pool, error) {
	addr := Redact(cfg.Postgres.URL)
	pc, err := pgxpool.ParseConfig(cfg.Postgres.URL)
	if err != nil {
		return nil, fmt.Errorf("%w: postgres.url %s cannot be parsed; write it like postgres://user@host:5432/db?sslmode=disable", ErrInvalidConfig, addr)
	}
	pc.MaxConns = cfg.Postgres.MaxConns
	pc.ConnConfig.ConnectTimeout = cfg.ConnectTimeout
	if err := dialCheck(ctx, KindPostgres, net.JoinHostPort(pc.ConnConfig.Host, strconv.Itoa(int(pc.ConnConfig.Port))), cfg.ConnectTimeout); err != nil {
		return nil, err
	}
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("postgres at %s: %w", addr, err)
	}
	pctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
	defer cancel()
	if err := pool.Ping(pctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("%w: postgres at %s: %v", ErrUnreachable, addr, err)
	}
	return pool, nil
}

func openPostgres(ctx context.Context, b *Broker, cfg Config, logger watermill.LoggerAdapter) error {
	p := cfg.Postgres
	b.Addr = Redact(p.URL)
	pool, err := OpenPostgresPool(ctx, cfg)
	if err != nil {
		return err
	}
	b.onClose(func() error { pool.Close(); return nil })
	db := wsql.BeginnerFromPgx(pool)
	schema, offsets := PostgresQueueSchema(p)
	pub, err := wsql.NewPublisher(db, wsql.PublisherConfig{
		SchemaAdapter:        schema,
		AutoInitializeSchema: true,
	}, logger)
	if err != nil {
		return fmt.Errorf("postgres publisher: %w", err)
	}
	b.Publisher = &schemaSafePublisher{Publisher: pub}
	b.onClose(pub.Close)
	ack := p.AckDeadline
	sub, err := wsql.NewSubscriber(db, wsql.SubscriberConfig{
		PollInterval:     p.PollInterval,
		ResendInterval:   p.ResendInterval,
		AckDeadline:      &ack,
		SchemaAdapter:    schema,
		OffsetsAdapter:   offsets,
		InitializeSchema: true,
	}, logger)
	if err != nil {
		return fmt.Errorf("postgres subscriber: %w", err)
	}
	wrapped := newCloseWaitSubscriber(sub)
	b.Subscriber = wrapped
	b.onClose(wrapped.Close)
	return nil
}
