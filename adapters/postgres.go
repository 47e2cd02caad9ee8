package adapters

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/poison"
)

// PostgresTable is the quoted table name that holds topic's queue.
func PostgresTable(cfg PostgresConfig, topic string) string {
	return pgx.Identifier{cfg.TablePrefix + topic}.Sanitize()
}

// PostgresMaxIdentifier is the longest identifier PostgreSQL keeps, in
// bytes (NAMEDATALEN-1 in a default build); a longer one is silently cut.
const PostgresMaxIdentifier = 63

// PostgresMaxTopic is the longest topic the table prefix leaves room for:
// the topic's table, <prefix><topic>, and its DLQ's,
// <prefix><topic>.dlq, must both be at most PostgresMaxIdentifier bytes.
// Below 1, no topic fits.
func PostgresMaxTopic(cfg PostgresConfig) int {
	return PostgresMaxIdentifier - len(cfg.TablePrefix) - len(antidote.DeadLetterSuffix)
}

// checkPostgresTopic reports whether topic can name a queue table: not
// empty, only ASCII letters, digits, '.', '_' and '-' (what watermill-sql
// allows, less ':' and '$', which no topic needs), and short enough that
// neither <prefix><topic> nor <prefix><topic>.dlq is cut to 63 bytes.
// PostgreSQL cuts longer names without a word, so a topic and its DLQ
// became one table: each letter was written back into the source, to be
// consumed and dead-lettered again, thousands of times a second.
//
// A topic that already ends in .dlq is a DLQ: only its own table must fit,
// so a topic at the limit can be dead-lettered and its DLQ read. Letters of
// its letters (<topic>.dlq.dlq) are then refused at Publish, never cut.
func checkPostgresTopic(cfg PostgresConfig, topic string) error {
	return checkTopic(func(name string) error { return checkPostgresName(cfg, name) }, topic)
}

// checkPostgresName checks that name can name a queue table.
func checkPostgresName(cfg PostgresConfig, topic string) error {
	bad := func(name, rule string) error {
		return &antidote.TopicError{Broker: string(KindPostgres), Topic: topic, Name: name, Rule: rule}
	}
	const allowed = "a topic names a table, so it may hold only ASCII letters, digits, '.', '_' and '-'"
	if topic == "" {
		return bad("", "the topic is empty; "+allowed)
	}
	for i := 0; i < len(topic); {
		r, size := utf8.DecodeRuneInString(topic[i:])
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '_', r == '-':
		case r == utf8.RuneError && size == 1:
			return bad("", fmt.Sprintf("%s; byte 0x%02x at %d is not valid UTF-8", allowed, topic[i], i))
		default:
			return bad("", fmt.Sprintf("%s; %q is not allowed", allowed, r))
		}
		i += size
	}
	name := cfg.TablePrefix + topic
	if len(name) <= PostgresMaxIdentifier {
		return nil
	}
	most := PostgresMaxTopic(cfg)
	room := fmt.Sprintf("with table_prefix %q a topic may be at most %d bytes (%d if it is a DLQ topic, ending in %s), so that <prefix><topic>%s fits too",
		cfg.TablePrefix, most, most+len(antidote.DeadLetterSuffix), antidote.DeadLetterSuffix, antidote.DeadLetterSuffix)
	if most < 1 {
		room = fmt.Sprintf("table_prefix %q (%d bytes) leaves no room for a topic; shorten it", cfg.TablePrefix, len(cfg.TablePrefix))
	}
	return bad(name, fmt.Sprintf("PostgreSQL identifiers are at most %d bytes and this one is %d (a longer name is cut, so a topic and its DLQ could share one table); %s",
		PostgresMaxIdentifier, len(name), room))
}

// postgresSubscriber refuses topics checkPostgresTopic refuses before
// watermill-sql creates their table.
type postgresSubscriber struct {
	*closeWaitSubscriber
	cfg PostgresConfig
}

// CheckName implements antidote.NameChecker.
func (s *postgresSubscriber) CheckName(name string) error { return checkPostgresName(s.cfg, name) }

func (s *postgresSubscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	if err := checkPostgresTopic(s.cfg, topic); err != nil {
		return nil, err
	}
	return s.closeWaitSubscriber.Subscribe(ctx, topic)
}

// SubscribeInitialize creates topic's table once the topic is checked.
func (s *postgresSubscriber) SubscribeInitialize(topic string) error {
	if err := checkPostgresTopic(s.cfg, topic); err != nil {
		return err
	}
	return s.closeWaitSubscriber.SubscribeInitialize(topic)
}

// PostgresQueueSchema returns the watermill-sql queue schema and offsets
// adapter Open uses: one table per topic, BYTEA payloads (any bytes, not only
// valid JSON), rows deleted when acked (only those, see
// PostgresQueueOffsetsAdapter), rows decoded by TolerantPostgresQueueSchema,
// rows delayed by the Scheduler skipped until due.
func PostgresQueueSchema(cfg PostgresConfig) (TolerantPostgresQueueSchema, PostgresQueueOffsetsAdapter) {
	table := func(topic string) string { return PostgresTable(cfg, topic) }
	return TolerantPostgresQueueSchema{PostgreSQLQueueSchema: wsql.PostgreSQLQueueSchema{
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

// checkPostgresURL accepts what pgx accepts: URLs (with several hosts,
// postgres://h1:5432,h2:5432/db), keyword/value strings (host=h dbname=d)
// and every parameter pgx knows (sslmode, target_session_attrs, ...). The
// error never holds the password.
func checkPostgresURL(raw string) error {
	if strings.TrimSpace(raw) == "" {
		return errors.New("is empty")
	}
	if _, err := pgxpool.ParseConfig(raw); err != nil {
		// pgx's errors hold the connection string with the password
		// redacted; redact again in case a future version does not.
		msg := err.Error()
		if pc, perr := pgconn.ParseConfig(raw); perr == nil {
			msg = redactSecret(msg, pc.Password)
		}
		// A string pgx cannot parse is quoted whole in its error, password
		// and all, wherever pgx could not tell the password apart: drop
		// every quoted part.
		msg = backquoted.ReplaceAllString(msg, "it")
		return fmt.Errorf("pgx cannot parse it: %s", redactPostgresPassword(msg))
	}
	return nil
}

// postgresAddrs lists the distinct TCP host:port pairs pc may connect to,
// its first host first; Unix sockets are left out (nothing to dial-check).
func postgresAddrs(pc *pgxpool.Config) []string {
	var addrs []string
	seen := map[string]bool{}
	add := func(host string, port uint16) {
		if strings.HasPrefix(host, "/") {
			return
		}
		a := net.JoinHostPort(host, strconv.Itoa(int(port)))
		if !seen[a] {
			seen[a] = true
			addrs = append(addrs, a)
		}
	}
	add(pc.ConnConfig.Host, pc.ConnConfig.Port)
	for _, f := range pc.ConnConfig.Fallbacks {
		add(f.Host, f.Port)
	}
	return addrs
}

// OpenPostgresPool connects a pgx pool to cfg.Postgres.URL and checks that
// the server answers within cfg.ConnectTimeout. With several hosts in the
// URL, any one answering is enough (pgx tries them in order, honouring
// target_session_attrs). PostgresConfig.ConfigurePool is called last on the
// pool config.
func OpenPostgresPool(ctx context.Context, cfg Config) (*pgxpool.Pool, error) {
	addr := Redact(cfg.Postgres.URL)
	pc, err := pgxpool.ParseConfig(cfg.Postgres.URL)
	if err != nil {
		return nil, fmt.Errorf("%w: postgres.url %s cannot be parsed; write it like postgres://user@host:5432/db?sslmode=disable", ErrInvalidConfig, addr)
	}
	pc.MaxConns = cfg.Postgres.MaxConns
	pc.ConnConfig.ConnectTimeout = cfg.ConnectTimeout
	if cfg.Postgres.ConfigurePool != nil {
		cfg.Postgres.ConfigurePool(pc)
	}
	if addrs := postgresAddrs(pc); len(addrs) > 0 {
		if err := anyAnswers(ctx, KindPostgres, addrs, cfg.ConnectTimeout, watermill.NopLogger{}); err != nil {
			return nil, err
		}
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
	safe := &schemaSafePublisher{Publisher: pub}
	pgPub := &postgresPublisher{cfg: p, inner: safe}
	b.Publisher = pgPub
	b.onClose(pgPub.Close)
	ack := p.AckDeadline
	// Each row's place moves into its message's context (takePostgresRecord).
	schema.stashRecord = true
	newSubscriber := func(schema TolerantPostgresQueueSchema) (*postgresSubscriber, *wsql.Subscriber, error) {
		sub, err := wsql.NewSubscriber(ackSafeBeginner{Beginner: db, timeout: cfg.ConnectTimeout}, wsql.SubscriberConfig{
			PollInterval:     p.PollInterval,
			ResendInterval:   p.ResendInterval,
			AckDeadline:      &ack,
			SchemaAdapter:    schema,
			OffsetsAdapter:   offsets,
			InitializeSchema: true,
		}, logger)
		if err != nil {
			return nil, nil, fmt.Errorf("postgres subscriber: %w", err)
		}
		cw := newCloseWaitSubscriber(sub)
		cw.prepare = takePostgresRecord
		return &postgresSubscriber{closeWaitSubscriber: cw, cfg: p}, sub, nil
	}
	// The hospital's, on the same pool: believes letter keys.
	letterSchema := schema
	letterSchema.Reader = poison.LetterReader
	letters, _, err := newSubscriber(letterSchema)
	if err != nil {
		return err
	}
	b.letters = letters
	b.onClose(letters.Close)
	wrapped, sub, err := newSubscriber(schema)
	if err != nil {
		return err
	}
	// The subscriber initialises a table on every call, unlike the publisher.
	safe.initialize = sub.SubscribeInitialize
	b.Subscriber = wrapped
	b.onClose(wrapped.Close)
	return nil
}

// ackSafeBeginner keeps a subscriber's acks when it is closed. watermill-sql
// acks (deletes) the rows of a batch that were acked, in the batch's
// transaction, only when the batch ends, and runs that statement and the
// commit under the subscription's context: a graceful shutdown (router
// closed, SIGTERM) cancels it, the transaction rolls back, and every
// message of the batch that was already handled, dead-lettered or not, is
// delivered again. Here the ack statement and the commit run detached from
// the subscription's cancellation, bounded by timeout; the SELECT that
// waits for rows still stops at once.
type ackSafeBeginner struct {
	wsql.Beginner
	timeout time.Duration
}

func (b ackSafeBeginner) BeginTx(ctx context.Context, opts *sql.TxOptions) (wsql.Tx, error) {
	tx, err := b.Beginner.BeginTx(ctx, opts)
	if ptx, ok := tx.(*wsql.PgxTx); ok && err == nil {
		return ackSafeTx{PgxTx: ptx, timeout: b.timeout}, nil
	}
	return tx, err
}

type ackSafeTx struct {
	*wsql.PgxTx
	timeout time.Duration
}

// ExecContext runs the subscriber's statements (the ack) to completion.
func (t ackSafeTx) ExecContext(ctx context.Context, query string, args ...any) (wsql.Result, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), t.timeout)
	defer cancel()
	return t.PgxTx.ExecContext(ctx, query, args...)
}

// Commit commits although the subscription was cancelled meanwhile.
func (t ackSafeTx) Commit() error {
	ctx, cancel := context.WithTimeout(context.Background(), t.timeout)
	defer cancel()
	return t.PgxTx.Tx.Commit(ctx)
}

// backquoted is a part of an error that pgx quoted from its input.
var backquoted = regexp.MustCompile("`[^`]*`")
