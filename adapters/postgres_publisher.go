package adapters

import (
	"errors"
	"sync"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgconn"
)

// postgresPublisher checks what watermill-sql would otherwise get wrong
// before anything reaches the database: the topic (checkPostgresTopic).
type postgresPublisher struct {
	cfg   PostgresConfig
	inner *schemaSafePublisher
}

// CheckTopic implements TopicChecker.
func (p *postgresPublisher) CheckTopic(topic string) error { return checkPostgresTopic(p.cfg, topic) }

// Publish inserts msgs into topic's table, once topic is checked.
func (p *postgresPublisher) Publish(topic string, msgs ...*message.Message) error {
	if err := p.CheckTopic(topic); err != nil {
		return err
	}
	return p.inner.Publish(topic, msgs...)
}

// Close closes the watermill-sql publisher.
func (p *postgresPublisher) Close() error { return p.inner.Close() }

// schemaSafePublisher serialises the first publish to each topic.
// watermill-sql creates a topic's table on its first publish, and two
// concurrent CREATE TABLE IF NOT EXISTS of the same table make PostgreSQL
// fail one of them with a unique violation on pg_type: concurrent producers
// would see spurious publish errors. A publish that still hits that race
// (another process creating the table) is retried once.
type schemaSafePublisher struct {
	message.Publisher
	mu    sync.Mutex
	ready sync.Map // topic -> struct{}
}

func (p *schemaSafePublisher) Publish(topic string, msgs ...*message.Message) error {
	if _, ok := p.ready.Load(topic); ok {
		return p.Publisher.Publish(topic, msgs...)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	err := p.Publisher.Publish(topic, msgs...)
	if isCreateRace(err) {
		err = p.Publisher.Publish(topic, msgs...)
	}
	if err == nil {
		p.ready.Store(topic, struct{}{})
	}
	return err
}

func isCreateRace(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23505" && pgErr.ConstraintName == "pg_type_typname_nsp_index"
}
