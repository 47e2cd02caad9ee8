package adapters

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/internal/textcut"
)

// postgresPublisher checks what watermill-sql would otherwise get wrong
// before anything reaches the database (no table is created, no row
// inserted): the topic (checkPostgresTopic), each message's size and UUID
// (checkPostgresMessage). It also makes UUIDs and metadata valid UTF-8
// (withMetadataRule).
//
// A batch is all or nothing. watermill-sql inserts it with one INSERT, which
// PostgreSQL applies whole or not at all, and a batch holding one message
// that cannot be published is refused whole, before the INSERT, with an
// error naming that message: nothing of it is in the queue, so the caller
// can fix or drop that message and publish the batch again without
// duplicating the others.
type postgresPublisher struct {
	cfg   PostgresConfig
	inner *schemaSafePublisher
	gate  closeGate
}

// CheckName implements antidote.NameChecker.
func (p *postgresPublisher) CheckName(name string) error { return checkPostgresName(p.cfg, name) }

// Publish inserts msgs into topic's table, once topic and every message are
// checked.
func (p *postgresPublisher) Publish(topic string, msgs ...*message.Message) error {
	if err := checkPostgresTopic(p.cfg, topic); err != nil {
		return err
	}
	out := make([]*message.Message, len(msgs))
	for i, msg := range msgs {
		out[i] = withMetadataRule(msg)
		if err := checkPostgresMessage(p.cfg, topic, out[i]); err != nil {
			if len(msgs) > 1 {
				return fmt.Errorf("message %d of the %d in this Publish (none of them was published): %w", i+1, len(msgs), err)
			}
			return err
		}
	}
	if err := p.gate.enter(); err != nil {
		return err
	}
	defer p.gate.leave()
	return p.inner.Publish(topic, out...)
}

// CheckMessage implements antidote.MessageChecker.
func (p *postgresPublisher) CheckMessage(topic string, msg *message.Message) error {
	if err := checkPostgresTopic(p.cfg, topic); err != nil {
		return err
	}
	return checkPostgresMessage(p.cfg, topic, withMetadataRule(msg))
}

// PostgresUUIDColumn is the type of watermill-sql's uuid column.
const PostgresUUIDColumn = "VARCHAR(36)"

// postgresMaxUUID is how many characters PostgresUUIDColumn holds.
const postgresMaxUUID = 36

// checkPostgresMessage refuses a message (made valid UTF-8 by
// withMetadataRule) the queue table cannot hold, or that is larger than
// postgres.max_message_bytes allows: its payload plus its metadata as JSON
// (what is inserted), with antidote.LetterHeadroom more for a dead letter.
func checkPostgresMessage(cfg PostgresConfig, topic string, msg *message.Message) error {
	if strings.IndexByte(msg.UUID, 0) >= 0 {
		return fmt.Errorf("%s: message %q to %q cannot be published: its UUID holds a NUL byte, which no PostgreSQL text column can store; use a UUID without NUL",
			KindPostgres, shortUUID(msg.UUID), topic)
	}
	if n := utf8.RuneCountInString(msg.UUID); n > postgresMaxUUID {
		err := error(&antidote.TooLargeError{Broker: string(KindPostgres), Topic: topic, UUID: shortUUID(msg.UUID), What: "uuid",
			Size: n, Limit: postgresMaxUUID, Setting: "the queue table's uuid column (" + PostgresUUIDColumn + ")"})
		if n != len(msg.UUID) {
			err = fmt.Errorf("%w (counted in characters, as %s counts)", err, PostgresUUIDColumn)
		}
		return err
	}
	limit, setting := cfg.MaxMessageBytes, "postgres.max_message_bytes"
	if antidote.IsLetter(msg.Context()) {
		limit += antidote.LetterHeadroom
		setting += fmt.Sprintf(", plus %d bytes for a dead letter", antidote.LetterHeadroom)
	}
	// watermill-sql marshals the metadata itself: marshal it here too only
	// when the cheap upper bound (every byte escaped as \u00XX) could be over.
	if len(msg.Payload)+jsonMetadataBound(msg.Metadata) <= limit {
		return nil
	}
	meta, err := json.Marshal(msg.Metadata)
	if err != nil { // a map of strings always marshals
		return fmt.Errorf("%s: message %q to %q: metadata: %w", KindPostgres, msg.UUID, topic, err)
	}
	if size := len(msg.Payload) + len(meta); size > limit {
		return &antidote.TooLargeError{Broker: string(KindPostgres), Topic: topic, UUID: msg.UUID, What: "message",
			Size: size, Limit: limit, Setting: setting}
	}
	return nil
}

// jsonMetadataBound is at least len(json.Marshal(md)): "null" or braces,
// and per entry two quoted strings whose bytes take at most 6 each
// (\u00XX), a colon and a comma.
func jsonMetadataBound(md message.Metadata) int {
	n := len("null")
	for k, v := range md {
		n += 6*(len(k)+len(v)) + 6
	}
	return n
}

// shortUUID keeps an error about a huge UUID readable.
func shortUUID(uuid string) string {
	const keep = 64
	if len(uuid) <= keep {
		return uuid
	}
	return fmt.Sprintf("%s... (%d bytes)", textcut.Prefix(uuid, keep), len(uuid))
}

// Close waits for running publishes and closes the watermill-sql publisher.
func (p *postgresPublisher) Close() error {
	if !p.gate.close() {
		return nil
	}
	return p.inner.Close()
}

// schemaSafePublisher serialises the first publish to each topic.
// watermill-sql creates a topic's table on its first publish, and two
// concurrent CREATE TABLE IF NOT EXISTS of the same table make PostgreSQL
// fail one of them with a unique violation on pg_type: concurrent producers
// would see spurious publish errors. A publish that still hits that race
// (another process creating the table) is retried once.
//
// watermill-sql creates a table only on the first publish to it, so a table
// dropped while the service runs (an operator cleaning up, a DLQ table
// "emptied" with DROP) would fail every later publish: each dead letter
// nacked forever. A publish that finds its table missing creates it again
// (initialize) and is retried once.
type schemaSafePublisher struct {
	message.Publisher
	mu    sync.Mutex
	ready sync.Map // topic -> struct{}
	// initialize creates topic's table (CREATE TABLE IF NOT EXISTS).
	initialize func(topic string) error
}

func (p *schemaSafePublisher) Publish(topic string, msgs ...*message.Message) error {
	if _, ok := p.ready.Load(topic); ok {
		err := p.Publisher.Publish(topic, msgs...)
		if !isUndefinedTable(err) || p.initialize == nil {
			return err
		}
		p.ready.Delete(topic)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	err := p.Publisher.Publish(topic, msgs...)
	if isCreateRace(err) {
		err = p.Publisher.Publish(topic, msgs...)
	}
	if isUndefinedTable(err) && p.initialize != nil {
		if ierr := p.initialize(topic); ierr != nil {
			return fmt.Errorf("%w (creating the table again failed: %v)", err, ierr)
		}
		err = p.Publisher.Publish(topic, msgs...)
	}
	if err == nil {
		p.ready.Store(topic, struct{}{})
	}
	return err
}

// isUndefinedTable reports PostgreSQL's undefined_table (42P01).
func isUndefinedTable(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "42P01"
}

func isCreateRace(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23505" && pgErr.ConstraintName == "pg_type_typname_nsp_index"
}
