package outbox

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/otel/propagation"

	"github.com/antidote-mq/antidote"
)

// DefaultTable is the outbox table when Config.Table is empty; its
// dead-letter table is "<table>_dead".
const DefaultTable = "antidote_outbox"

// ErrDuplicate is wrapped by Add's error for a message whose UUID is in the
// outbox already: the same message added twice.
var ErrDuplicate = errors.New("outbox: a message with this id is in the outbox already")

// Config names the outbox table.
type Config struct {
	// Table holds the outbox rows, optionally schema-qualified. If Table is
	// empty, "antidote_outbox".
	Table string
}

func (c *Config) setDefaults() {
	if c.Table == "" {
		c.Table = DefaultTable
	}
}

var identRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,57}(\.[A-Za-z_][A-Za-z0-9_]{0,57})?$`)

// Validate names what cannot work.
func (c Config) Validate() error {
	if !identRE.MatchString(c.Table) {
		return fmt.Errorf("outbox: Config.Table %q is not a plain identifier of at most 58 bytes (the dead-letter table adds _dead); use letters, digits and underscores, optionally schema-qualified", c.Table)
	}
	return nil
}

// Outbox is the outbox table: Add writes to it inside the caller's
// transaction, a Relay sends what it holds.
type Outbox struct {
	table, dead string // sanitized identifiers
	name        string
}

// New validates cfg (after defaults). It touches no database: create the
// tables with CreateTables, or with CreateTableSQL in a migration.
func New(cfg Config) (*Outbox, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	parts := strings.Split(cfg.Table, ".")
	dead := append([]string(nil), parts...)
	dead[len(dead)-1] += "_dead"
	return &Outbox{table: pgx.Identifier(parts).Sanitize(), dead: pgx.Identifier(dead).Sanitize(), name: parts[len(parts)-1]}, nil
}

// CreateTableSQL is the DDL of the outbox and its dead-letter table.
func (o *Outbox) CreateTableSQL() string {
	pending := pgx.Identifier{o.name + "_pending"}.Sanitize()
	return `CREATE TABLE IF NOT EXISTS ` + o.table + ` (
  id              BIGSERIAL PRIMARY KEY,
  message_id      TEXT NOT NULL UNIQUE,
  topic           TEXT NOT NULL,
  payload         BYTEA NOT NULL,
  metadata        BYTEA NOT NULL,
  created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
  attempts        INTEGER NOT NULL DEFAULT 0,
  last_error      TEXT NOT NULL DEFAULT '',
  next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  locked_by       TEXT,
  locked_until    TIMESTAMPTZ,
  sent_at         TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS ` + pending + ` ON ` + o.table + ` (id) WHERE sent_at IS NULL;
CREATE TABLE IF NOT EXISTS ` + o.dead + ` (
  id         BIGINT PRIMARY KEY,
  message_id TEXT NOT NULL,
  topic      TEXT NOT NULL,
  payload    BYTEA NOT NULL,
  metadata   BYTEA NOT NULL,
  created_at TIMESTAMPTZ NOT NULL,
  attempts   INTEGER NOT NULL,
  reason     TEXT NOT NULL,
  dead_at    TIMESTAMPTZ NOT NULL DEFAULT now()
)`
}

// CreateTables creates the tables if they do not exist, under an advisory
// lock (replicas starting together do not race on CREATE TABLE).
func (o *Outbox) CreateTables(ctx context.Context, db interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}) error {
	tx, err := db.Begin(ctx)
	if err != nil {
		return fmt.Errorf("outbox: create tables: %w", err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('antidote.outbox'), hashtext($1))`, o.table); err != nil {
		return fmt.Errorf("outbox: create tables: %w", err)
	}
	if _, err := tx.Exec(ctx, o.CreateTableSQL()); err != nil {
		return fmt.Errorf("outbox: create tables %s (needs CREATE privilege; or run CreateTableSQL in a migration): %w", o.table, err)
	}
	return tx.Commit(ctx)
}

// row is one message as Add stores it.
type row struct {
	id, topic string
	payload   []byte
	metadata  []byte
}

func (o *Outbox) rows(ctx context.Context, topic string, msgs []*message.Message) ([]row, error) {
	if strings.TrimSpace(topic) == "" {
		return nil, errors.New("outbox: Add with an empty topic; name the topic the messages go to")
	}
	out := make([]row, 0, len(msgs))
	for i, m := range msgs {
		if m == nil || m.UUID == "" {
			return nil, fmt.Errorf("outbox: message %d has no UUID: it is the message's id in the outbox and its idempotency key; set it (watermill.NewUUID())", i)
		}
		md := make(map[string]string, len(m.Metadata)+1)
		for k, v := range m.Metadata {
			md[k] = v
		}
		// The trace starts at the business transaction: the relay's send
		// continues the trace the message was added in.
		if md["traceparent"] == "" {
			c := m.Context()
			if c == context.Background() {
				c = ctx
			}
			propagation.TraceContext{}.Inject(c, antidote.MetadataCarrier(md))
		}
		data, err := json.Marshal(md)
		if err != nil {
			return nil, fmt.Errorf("outbox: metadata of message %s: %w", m.UUID, err)
		}
		out = append(out, row{id: m.UUID, topic: topic, payload: m.Payload, metadata: data})
	}
	return out, nil
}

const insertSQL = ` (message_id, topic, payload, metadata) VALUES ($1, $2, $3, $4)`

// Add inserts msgs for topic into the outbox in tx, the transaction of the
// business write: they are sent if and only if it commits. A message whose
// UUID is in the outbox already is an error wrapping ErrDuplicate (the
// transaction is then aborted, as any failed statement aborts it).
func (o *Outbox) Add(ctx context.Context, tx pgx.Tx, topic string, msgs ...*message.Message) error {
	rows, err := o.rows(ctx, topic, msgs)
	if err != nil {
		return err
	}
	for _, r := range rows {
		if _, err := tx.Exec(ctx, `INSERT INTO `+o.table+insertSQL, r.id, r.topic, nonNil(r.payload), r.metadata); err != nil {
			return o.addErr(r.id, err)
		}
	}
	return nil
}

// AddSQL is Add for a database/sql transaction (the pgx stdlib driver, or
// lib/pq).
func (o *Outbox) AddSQL(ctx context.Context, tx *sql.Tx, topic string, msgs ...*message.Message) error {
	rows, err := o.rows(ctx, topic, msgs)
	if err != nil {
		return err
	}
	for _, r := range rows {
		if _, err := tx.ExecContext(ctx, `INSERT INTO `+o.table+insertSQL, r.id, r.topic, nonNil(r.payload), r.metadata); err != nil {
			return o.addErr(r.id, err)
		}
	}
	return nil
}

func (o *Outbox) addErr(id string, err error) error {
	var sqlState interface{ SQLState() string }
	if errors.As(err, &sqlState) && sqlState.SQLState() == "23505" {
		return fmt.Errorf("%w: message %s (%s)", ErrDuplicate, id, o.table)
	}
	return fmt.Errorf("outbox: add message %s to %s: %w", id, o.table, err)
}

func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}
