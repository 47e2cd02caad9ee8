package outbox

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync/atomic"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/otel/propagation"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/internal/pgmigrate"
)

// DefaultTable is the outbox table when Config.Table is empty; its
// dead-letter table is "<table>_dead".
const DefaultTable = "antidote_outbox"

// ErrDuplicate is wrapped by Add's error for a message whose UUID is in the
// outbox already: the same message added twice.
var ErrDuplicate = errors.New("outbox: a message with this id is in the outbox already")

// DefaultKeyMetadata is the metadata key of a message's ordering key when
// Config.KeyMetadata is empty: the Kafka adapter's record key
// (adapters.KafkaConfig.PartitionKey's default), so a row is ordered by the
// key it is published with.
const DefaultKeyMetadata = "partition_key"

// Config names the outbox table.
type Config struct {
	// Table holds the outbox rows, optionally schema-qualified. If Table is
	// empty, "antidote_outbox".
	Table string
	// KeyMetadata is the metadata key whose value is a message's ordering
	// key: rows with the same key are sent in the order they were added
	// (Debezium's aggregateid). If empty, "partition_key", the Kafka
	// adapter's record key; set it to adapters.KafkaConfig.PartitionKey if
	// you changed that. A message without it, or with an empty value (no
	// record key on Kafka either), is keyless: no order, never waits.
	KeyMetadata string
}

func (c *Config) setDefaults() {
	if c.Table == "" {
		c.Table = DefaultTable
	}
	if c.KeyMetadata == "" {
		c.KeyMetadata = DefaultKeyMetadata
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
	cfgTable    string // as configured, e.g. "ops.outbox"
	keyMD       string
	// hasKeyColumn: the table has key_hash (a table of the previous
	// schema gets it from CreateTables; until then keyed rows go in
	// keyless rather than failing the business transaction).
	hasKeyColumn atomic.Bool
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
	return &Outbox{table: pgx.Identifier(parts).Sanitize(), dead: pgx.Identifier(dead).Sanitize(), name: parts[len(parts)-1], cfgTable: cfg.Table, keyMD: cfg.KeyMetadata}, nil
}

// Migration is one version of the outbox's schema: the SQL that takes its
// tables from the version before to this one. Version 1 is the schema
// CreateTables made before versions existed, so tables made then are
// adopted (and upgraded in place if they predate key_hash).
type Migration = pgmigrate.Step

// ErrSchemaTooNew is wrapped by the error of CreateTables, Migrate and
// NewRelay when the outbox tables are at a schema version newer than this
// version of Antidote knows: a newer version migrated them. It never
// downgrades.
var ErrSchemaTooNew = pgmigrate.ErrTooNew

// Migrations returns every version of the outbox's schema, for its
// configured table, in order.
//
// key_hash is the SHA-256 of a row's ordering key (NULL: keyless); a writer
// of its own can order its rows with Add's by inserting
// sha256(convert_to(key, 'UTF8')). A hash, not the key, so keys of any size
// and bytes fit the index; two keys with one hash would only share an order.
func (o *Outbox) Migrations() []Migration {
	idx := func(suffix string) string { return pgx.Identifier{o.name + suffix}.Sanitize() }
	// The ALTER TABLE upgrades tables created before the ordering key in
	// place (the CREATE INDEX after it holds writes for the time it takes
	// to read the table once).
	v1 := `CREATE TABLE IF NOT EXISTS ` + o.table + ` (
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
  sent_at         TIMESTAMPTZ,
  key_hash        BYTEA
);
ALTER TABLE ` + o.table + ` ADD COLUMN IF NOT EXISTS key_hash BYTEA;
CREATE INDEX IF NOT EXISTS ` + idx("_pending") + ` ON ` + o.table + ` (id) WHERE sent_at IS NULL;
CREATE INDEX IF NOT EXISTS ` + idx("_keyless") + ` ON ` + o.table + ` (id) WHERE sent_at IS NULL AND key_hash IS NULL;
CREATE INDEX IF NOT EXISTS ` + idx("_keyed") + ` ON ` + o.table + ` (key_hash, id) WHERE sent_at IS NULL AND key_hash IS NOT NULL;
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
	return []Migration{{Version: 1, Description: "create the outbox and its dead-letter table (the schema before versions; adds key_hash to older tables)", SQL: v1}}
}

// schema is the outbox's versioned schema. Its lock is the one
// CreateTables took before versions existed.
func (o *Outbox) schema() pgmigrate.Schema {
	return pgmigrate.Schema{Component: "outbox", Name: o.cfgTable, LockNS: "antidote.outbox", LockKey: o.table, Probe: o.cfgTable, What: "outbox", Steps: o.Migrations()}
}

// CreateTableSQL returns the SQL of every migration (Migrations), which
// creates the tables or brings those of any earlier version up to date,
// for teams that apply schema changes themselves. It records no version:
// antidote migrate (or Migrate) does.
func (o *Outbox) CreateTableSQL() string { return o.schema().SQL() }

// CreateTables creates or upgrades the tables: Migrate without the list.
func (o *Outbox) CreateTables(ctx context.Context, db interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}) error {
	_, err := o.Migrate(ctx, db)
	return err
}

// Migrate applies the pending migrations in one transaction, under an
// advisory lock (replicas starting together take turns, with binaries from
// before versions too), and returns them (none when the tables are
// current). NewRelay runs it unless RelayConfig.SkipCreateTables.
func (o *Outbox) Migrate(ctx context.Context, db interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}) ([]Migration, error) {
	applied, err := o.schema().Migrate(ctx, db)
	if err != nil {
		return nil, fmt.Errorf("outbox: migrate %s (needs CREATE privilege; or run antidote migrate and set RelayConfig.SkipCreateTables): %w", o.table, err)
	}
	o.hasKeyColumn.Store(true)
	return applied, nil
}

// PendingMigrations returns the migrations not applied to the tables yet,
// changing nothing (no lock taken, no table created): what Migrate would
// apply now.
func (o *Outbox) PendingMigrations(ctx context.Context, db interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}) ([]Migration, error) {
	p, err := o.schema().Pending(ctx, db)
	if err != nil {
		return nil, fmt.Errorf("outbox: pending migrations of %s: %w", o.table, err)
	}
	return p, nil
}

// row is one message as Add stores it.
type row struct {
	id, topic string
	payload   []byte
	metadata  []byte
	keyHash   []byte // nil: keyless
}

// keyHash is the SHA-256 of the ordering key as it will be published: the
// metadata goes through JSON, which turns each byte of invalid UTF-8 into
// U+FFFD (as converting to runes does), so two keys the broker sees as one
// are one order.
func keyHash(key string) []byte {
	if !utf8.ValidString(key) {
		key = string([]rune(key))
	}
	h := sha256.Sum256([]byte(key))
	return h[:]
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
		r := row{id: m.UUID, topic: topic, payload: m.Payload, metadata: data}
		if key := md[o.keyMD]; key != "" {
			r.keyHash = keyHash(key)
		}
		out = append(out, r)
	}
	return out, nil
}

const (
	insertSQL      = ` (message_id, topic, payload, metadata) VALUES ($1, $2, $3, $4)`
	insertKeyedSQL = ` (message_id, topic, payload, metadata, key_hash) VALUES ($1, $2, $3, $4, $5)`
	// hasKeySQL never fails (a failed statement would abort the caller's
	// transaction): false for a table of the previous schema, or none.
	hasKeySQL = `SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($1) AND attname = 'key_hash' AND NOT attisdropped)`
)

// Add inserts msgs for topic into the outbox in tx, the transaction of the
// business write: they are sent if and only if it commits. A message with
// an ordering key (its Config.KeyMetadata metadata) is sent after the rows
// of its key added before it. A message whose UUID is in the outbox already
// is an error wrapping ErrDuplicate (the transaction is then aborted, as any
// failed statement aborts it).
//
// Into a table of the previous schema (before CreateTables or NewRelay
// upgraded it) keyed messages go in keyless: no order, as before, rather
// than a failed business transaction.
func (o *Outbox) Add(ctx context.Context, tx pgx.Tx, topic string, msgs ...*message.Message) error {
	return o.add(ctx, topic, msgs, func(q string, args ...any) error {
		_, err := tx.Exec(ctx, q, args...)
		return err
	}, func(ok *bool) error {
		return tx.QueryRow(ctx, hasKeySQL, o.table).Scan(ok)
	})
}

// AddSQL is Add for a database/sql transaction (the pgx stdlib driver, or
// lib/pq).
func (o *Outbox) AddSQL(ctx context.Context, tx *sql.Tx, topic string, msgs ...*message.Message) error {
	return o.add(ctx, topic, msgs, func(q string, args ...any) error {
		_, err := tx.ExecContext(ctx, q, args...)
		return err
	}, func(ok *bool) error {
		return tx.QueryRowContext(ctx, hasKeySQL, o.table).Scan(ok)
	})
}

func (o *Outbox) add(ctx context.Context, topic string, msgs []*message.Message, exec func(string, ...any) error, hasKey func(*bool) error) error {
	rows, err := o.rows(ctx, topic, msgs)
	if err != nil {
		return err
	}
	for _, r := range rows {
		if r.keyHash != nil && !o.hasKeyColumn.Load() {
			var ok bool
			if err := hasKey(&ok); err != nil {
				return fmt.Errorf("outbox: add message %s to %s: looking for its key_hash column: %w", r.id, o.table, err)
			}
			if ok {
				o.hasKeyColumn.Store(true)
			} else {
				r.keyHash = nil
			}
		}
		if r.keyHash == nil {
			err = exec(`INSERT INTO `+o.table+insertSQL, r.id, r.topic, nonNil(r.payload), r.metadata)
		} else {
			err = exec(`INSERT INTO `+o.table+insertKeyedSQL, r.id, r.topic, nonNil(r.payload), r.metadata, r.keyHash)
		}
		if err != nil {
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
