package adapters

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"
)

// LagSource reads a topic's backlog from the broker: it satisfies
// throttle.LagSource (backpressure for producers) and holds connections,
// released by Close.
type LagSource interface {
	// Lag returns how many messages of topic wait to be consumed.
	Lag(ctx context.Context, topic string) (int64, error)
	io.Closer
}

// OpenLagSource opens the LagSource for the broker cfg selects, connecting
// the way Open does: KafkaLag (the consumer group's lag), AMQPLag
// (the queue's depth) or PostgresLag (the queue table's rows). For Kafka
// with the embedded broker, pass the opened broker's Config
// (Broker.Config), which holds its address. The memory broker has
// no backlog to read (gochannel's Publish already waits for its
// subscribers), so it is an error.
func OpenLagSource(ctx context.Context, cfg Config) (LagSource, error) {
	cfg.SetDefaults()
	switch cfg.Broker {
	case KindKafka:
		return lagSource(NewKafkaLag(ctx, cfg))
	case KindAMQP:
		return lagSource(NewAMQPLag(ctx, cfg))
	case KindPostgres:
		return lagSource(NewPostgresLag(ctx, cfg))
	case KindMemory:
		return nil, fmt.Errorf("lag source: broker %q keeps no backlog to read (gochannel's Publish waits for subscribers already); use kafka, amqp or postgres", cfg.Broker)
	}
	return nil, fmt.Errorf("lag source: unknown broker %q; use kafka, amqp or postgres", cfg.Broker)
}

// lagSource returns a nil interface, not a typed nil, when err is set.
func lagSource[L LagSource](l L, err error) (LagSource, error) {
	if err != nil {
		return nil, err
	}
	return l, nil
}

// validated fills defaults and validates cfg for broker want (an unset
// Broker means want).
func validated(cfg Config, want Kind) (Config, error) {
	if cfg.Broker == "" {
		cfg.Broker = want
	}
	cfg.SetDefaults()
	if cfg.Broker != want {
		return cfg, fmt.Errorf("lag source: config is for broker %q, not %q: set broker: %s", cfg.Broker, want, want)
	}
	return cfg, cfg.Validate()
}

// KafkaLag is a consumer group's lag on a topic: the sum over its
// partitions of the high watermark (the next offset to be written) minus
// the group's committed offset; a partition the group never committed counts
// from its oldest offset, as the adapter's default initial offset does.
//
// It counts what the group has not committed, which includes messages
// handled and acked but not yet committed: with the adapter's asynchronous
// commits (every second; kafka.sync_commit false) the lag overstates the
// backlog by up to a second of consumption. That errs on the safe side for
// the high watermark; a producer waiting for the low watermark resumes up to
// a second later than it could.
//
// One ListOffsets request per partition leader and one OffsetFetch per
// reading. Sarama is not context-aware: a reading is bounded by the Sarama
// config's Net timeouts (KafkaLag sets Net.ReadTimeout to
// cfg.ConnectTimeout), not by ctx.
type KafkaLag struct {
	client sarama.Client
	admin  sarama.ClusterAdmin
	group  string
}

// NewKafkaLag connects to cfg.Kafka.Brokers (which must not be empty: for
// the embedded broker pass Broker.Config) for cfg.Kafka.ConsumerGroup.
func NewKafkaLag(ctx context.Context, cfg Config) (*KafkaLag, error) {
	cfg, err := validated(cfg, KindKafka)
	if err != nil {
		return nil, err
	}
	if len(cfg.Kafka.Brokers) == 0 {
		return nil, errors.New("lag source: kafka.brokers is empty: pass the opened broker's config (Broker.Config), which holds the embedded broker's address, or list the brokers")
	}
	sc, err := SaramaConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("lag source: kafka lag: %w", err)
	}
	sc.ClientID = cfg.Kafka.ClientID + "-lag"
	sc.Net.ReadTimeout = cfg.ConnectTimeout
	sc.Net.WriteTimeout = cfg.ConnectTimeout
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	client, err := sarama.NewClient(cfg.Kafka.Brokers, sc)
	if err != nil {
		return nil, fmt.Errorf("lag source: kafka lag: connect to %s: %w", strings.Join(cfg.Kafka.Brokers, ","), err)
	}
	admin, err := sarama.NewClusterAdminFromClient(client)
	if err != nil {
		_ = client.Close()
		return nil, fmt.Errorf("lag source: kafka lag: %w", err)
	}
	return &KafkaLag{client: client, admin: admin, group: cfg.Kafka.ConsumerGroup}, nil
}

// Lag returns the group's lag on topic; 0 for a topic that does not exist.
func (k *KafkaLag) Lag(ctx context.Context, topic string) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	partitions, err := k.client.Partitions(topic)
	if errors.Is(err, sarama.ErrUnknownTopicOrPartition) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("kafka lag of %q: partitions: %w", topic, err)
	}
	newest, err := k.offsets(topic, partitions, sarama.OffsetNewest)
	if err != nil {
		return 0, err
	}
	committed, err := k.admin.ListConsumerGroupOffsets(k.group, map[string][]int32{topic: partitions})
	if err != nil {
		_ = k.client.RefreshCoordinator(k.group)
		return 0, fmt.Errorf("kafka lag of %q for group %q: committed offsets: %w", topic, k.group, err)
	}
	if committed.Err != sarama.ErrNoError {
		return 0, fmt.Errorf("kafka lag of %q for group %q: committed offsets: %w", topic, k.group, committed.Err)
	}
	var lag int64
	var uncommitted []int32
	start := make(map[int32]int64, len(partitions))
	for _, p := range partitions {
		b := committed.GetBlock(topic, p)
		if b != nil && b.Err != sarama.ErrNoError {
			return 0, fmt.Errorf("kafka lag of %q/%d for group %q: %w", topic, p, k.group, b.Err)
		}
		if b == nil || b.Offset < 0 {
			uncommitted = append(uncommitted, p)
			continue
		}
		start[p] = b.Offset
	}
	if len(uncommitted) > 0 {
		oldest, err := k.offsets(topic, uncommitted, sarama.OffsetOldest)
		if err != nil {
			return 0, err
		}
		for p, o := range oldest {
			start[p] = o
		}
	}
	for _, p := range partitions {
		if d := newest[p] - start[p]; d > 0 {
			lag += d
		}
	}
	return lag, nil
}

// offsets asks each partition leader, once, for the offsets at time
// (sarama.OffsetNewest or OffsetOldest) of its partitions of topic.
func (k *KafkaLag) offsets(topic string, partitions []int32, at int64) (map[int32]int64, error) {
	requests := make(map[*sarama.Broker]*sarama.OffsetRequest)
	for _, p := range partitions {
		leader, err := k.client.Leader(topic, p)
		if err != nil {
			_ = k.client.RefreshMetadata(topic)
			return nil, fmt.Errorf("kafka lag of %q/%d: leader: %w", topic, p, err)
		}
		req, ok := requests[leader]
		if !ok {
			req = &sarama.OffsetRequest{Version: 1}
			requests[leader] = req
		}
		req.AddBlock(topic, p, at, 1)
	}
	out := make(map[int32]int64, len(partitions))
	for leader, req := range requests {
		resp, err := leader.GetAvailableOffsets(req)
		if err != nil {
			_ = k.client.RefreshMetadata(topic)
			return nil, fmt.Errorf("kafka lag of %q: list offsets from broker %s: %w", topic, leader.Addr(), err)
		}
		for _, p := range partitions {
			b := resp.GetBlock(topic, p)
			if b == nil {
				continue // another leader's partition
			}
			if b.Err != sarama.ErrNoError {
				_ = k.client.RefreshMetadata(topic)
				return nil, fmt.Errorf("kafka lag of %q/%d: list offsets: %w", topic, p, b.Err)
			}
			o := b.Offset
			if len(b.Offsets) > 0 {
				o = b.Offsets[0]
			}
			out[p] = o
		}
	}
	return out, nil
}

// Close closes the connections.
func (k *KafkaLag) Close() error { return k.admin.Close() } // closes the client too

// AMQPLag is a RabbitMQ queue's depth: the message count a passive
// declaration returns, which counts messages ready for delivery, not those
// delivered and unacked (at most the consumers' prefetch each). The queue is
// the one Open's subscriber consumes for the topic (watermill-amqp's
// durable queue config: the queue is named after the topic).
//
// It keeps one connection and channel, redialled after a failure. A reading
// honours ctx: when ctx ends mid-call the connection is closed, which ends
// the call.
type AMQPLag struct {
	url       string
	queueName func(topic string) string
	amqpCfg   amqp.Config

	mu   sync.Mutex
	conn *amqp.Connection
	ch   *amqp.Channel
}

// NewAMQPLag connects to cfg.AMQP.URL.
func NewAMQPLag(ctx context.Context, cfg Config) (*AMQPLag, error) {
	cfg, err := validated(cfg, KindAMQP)
	if err != nil {
		return nil, err
	}
	wc := AMQPConfigFor(cfg)
	a := &AMQPLag{
		url:       cfg.AMQP.URL,
		queueName: wc.Queue.GenerateName,
		amqpCfg:   amqp.Config{Dial: amqp.DefaultDial(cfg.ConnectTimeout), Heartbeat: 10 * time.Second, Locale: "en_US"},
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.connectLocked(ctx); err != nil {
		return nil, err
	}
	return a, nil
}

func (a *AMQPLag) connectLocked(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if a.conn == nil || a.conn.IsClosed() {
		conn, err := amqp.DialConfig(a.url, a.amqpCfg)
		if err != nil {
			// The client's error can quote the URL; name it without the password.
			return fmt.Errorf("lag source: amqp lag: connect to %s failed (check that RabbitMQ runs, and the user, password and vhost)", Redact(a.url))
		}
		a.conn, a.ch = conn, nil
	}
	if a.ch == nil || a.ch.IsClosed() {
		ch, err := a.conn.Channel()
		if err != nil {
			_ = a.conn.Close()
			a.conn = nil
			return fmt.Errorf("lag source: amqp lag: open channel: %w", err)
		}
		a.ch = ch
	}
	return nil
}

// Lag returns the number of ready messages in topic's queue; 0 when the
// queue does not exist yet.
func (a *AMQPLag) Lag(ctx context.Context, topic string) (int64, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.connectLocked(ctx); err != nil {
		return 0, err
	}
	conn := a.conn
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()
	name := a.queueName(topic)
	q, err := a.ch.QueueDeclarePassive(name, true, false, false, false, nil)
	if err != nil {
		var amqpErr *amqp.Error
		if errors.As(err, &amqpErr) && amqpErr.Code == amqp.NotFound {
			a.ch = nil // RabbitMQ closes the channel on a failed passive declare
			return 0, nil
		}
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		a.closeLocked()
		return 0, fmt.Errorf("amqp lag of queue %q: %w", name, err)
	}
	return int64(q.Messages), nil
}

func (a *AMQPLag) closeLocked() {
	if a.conn != nil {
		_ = a.conn.Close()
	}
	a.conn, a.ch = nil, nil
}

// Close closes the connection.
func (a *AMQPLag) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.closeLocked()
	return nil
}

// PostgresMaxCount is how many rows PostgresLag counts at most: counting
// reads every row, and past a million rows the exact figure no longer
// matters for backpressure.
const PostgresMaxCount = 1_000_000

// PostgresLag is the number of rows in topic's queue table
// (PostgresTable): the adapter deletes a row when its message is
// acked, so every row is a message published and not yet consumed,
// including the ones being handled.
//
// count(*) reads the whole table, so it stops at PostgresMaxCount rows: a
// lag of PostgresMaxCount means "at least". Set the high watermark well
// below it.
type PostgresLag struct {
	pool *pgxpool.Pool
	cfg  PostgresConfig
}

// NewPostgresLag opens a two-connection pool to cfg.Postgres.URL.
func NewPostgresLag(ctx context.Context, cfg Config) (*PostgresLag, error) {
	cfg, err := validated(cfg, KindPostgres)
	if err != nil {
		return nil, err
	}
	cfg.Postgres.MaxConns = 2 // one reading at a time; a spare for a reconnect
	pool, err := OpenPostgresPool(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("lag source: postgres lag: %w", err)
	}
	return &PostgresLag{pool: pool, cfg: cfg.Postgres}, nil
}

// Lag counts the rows of topic's queue table, up to PostgresMaxCount; 0
// when the table does not exist yet.
func (p *PostgresLag) Lag(ctx context.Context, topic string) (int64, error) {
	table := PostgresTable(p.cfg, topic)
	var n int64
	err := p.pool.QueryRow(ctx, `SELECT count(*) FROM (SELECT 1 FROM `+table+` LIMIT $1) AS q`, PostgresMaxCount).Scan(&n)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P01" { // undefined_table
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("postgres lag of table %s: %w", table, err)
	}
	return n, nil
}

// Close closes the pool.
func (p *PostgresLag) Close() error {
	p.pool.Close()
	return nil
}
