package adapters

import (
	"context"
	"fmt"

	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/poison"
)

// NewPostgresTxPublisher returns a publisher that inserts into the queue
// tables of cfg's PostgreSQL broker inside tx, with the checks Open's
// publisher makes (topic names, sizes, the metadata rule): what it publishes
// is in the queue exactly when tx commits. The topic's table must exist
// (EnsurePostgresTable): creating it inside tx could fail and end tx. The
// hospital replays a letter read from a PostgreSQL DLQ and deletes it in
// one transaction. Closing it does not end tx.
func NewPostgresTxPublisher(cfg Config, tx pgx.Tx) (message.Publisher, error) {
	cfg.SetDefaults()
	schema, _ := PostgresQueueSchema(cfg.Postgres)
	pub, err := wsql.NewPublisher(wsql.TxFromPgx(tx), wsql.PublisherConfig{SchemaAdapter: schema}, nil)
	if err != nil {
		return nil, fmt.Errorf("postgres publisher: %w", err)
	}
	return &postgresPublisher{cfg: cfg.Postgres, inner: &schemaSafePublisher{Publisher: pub}}, nil
}

// EnsurePostgresTable creates topic's queue table through pool when it
// does not exist, as Open's publisher does on its first publish.
func EnsurePostgresTable(ctx context.Context, cfg Config, pool *pgxpool.Pool, topic string) error {
	cfg.SetDefaults()
	if err := checkPostgresTopic(cfg.Postgres, topic); err != nil {
		return err
	}
	schema, _ := PostgresQueueSchema(cfg.Postgres)
	queries, err := schema.SchemaInitializingQueries(wsql.SchemaInitializingQueriesParams{Topic: topic})
	if err != nil {
		return err
	}
	for _, q := range queries {
		if _, err := pool.Exec(ctx, q.Query, q.Args...); err != nil && !isCreateRace(err) {
			return fmt.Errorf("postgres: create the table of %q: %w", topic, err)
		}
	}
	return nil
}

// PostgresMetadata decodes a DLQ row's metadata column as the hospital's
// subscriber does (TolerantPostgresQueueSchema with poison.LetterReader):
// scalar values become strings, SQL NULL and JSON null no metadata, the
// decoder's keys a row carries are foreign; a column that is not a JSON
// object is an error, and the metadata then holds
// antidote.MetadataUndecodable and the raw column
// (antidote.MetadataRawMetadata).
func PostgresMetadata(raw []byte, offset int64) (message.Metadata, error) {
	if len(raw) == 0 {
		return message.Metadata{}, nil
	}
	md, err := tolerantMetadata(raw)
	if err == nil {
		poison.LetterReader.Distrust(md)
	}
	if err != nil {
		return message.Metadata{
			antidote.MetadataUndecodable: fmt.Sprintf("postgres row %d: metadata is not a JSON object: %v", offset, err),
			antidote.MetadataRawMetadata: string(raw),
		}, err
	}
	return md, nil
}

// IsUndefinedTable reports PostgreSQL's undefined_table: a queue table
// that does not exist (nothing was ever published to its topic).
func IsUndefinedTable(err error) bool { return isUndefinedTable(err) }
