package adapters

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Kind names a broker.
type Kind string

// The brokers Open can build.
const (
	KindMemory   Kind = "memory"
	KindKafka    Kind = "kafka"
	KindAMQP     Kind = "amqp"
	KindPostgres Kind = "postgres"
)

// Kinds lists every supported Kind, in documentation order.
var Kinds = []Kind{KindMemory, KindKafka, KindAMQP, KindPostgres}

// MessagingSystem is the OpenTelemetry messaging.system value of k: "kafka",
// "rabbitmq", "postgresql" (no registered value exists for a
// PostgreSQL-backed queue) and "gochannel" (Watermill's in-memory Pub/Sub).
func (k Kind) MessagingSystem() string {
	switch k {
	case KindKafka:
		return "kafka"
	case KindAMQP:
		return "rabbitmq"
	case KindPostgres:
		return "postgresql"
	case KindMemory:
		return "gochannel"
	}
	return string(k)
}

// ErrInvalidConfig is wrapped by every error Validate returns.
var ErrInvalidConfig = errors.New("invalid adapters config")

// Config selects a broker and holds one section per broker. Only the section
// of the selected Broker is used. Broker must be set; every other field has
// a default.
type Config struct {
	// Broker picks the broker. Required: there is no default, since the
	// only broker that needs nothing (memory) keeps messages in the process
	// and loses them on exit; choose it explicitly for tests and demos.
	Broker Kind `yaml:"broker"`

	// ConnectTimeout bounds how long Open waits for an unreachable broker
	// before failing with an error naming it. Default 5s. Too short fails on
	// a slow network; too long delays start-up failures.
	ConnectTimeout time.Duration `yaml:"connect_timeout"`

	Memory   MemoryConfig   `yaml:"memory"`
	Kafka    KafkaConfig    `yaml:"kafka"`
	AMQP     AMQPConfig     `yaml:"amqp"`
	Postgres PostgresConfig `yaml:"postgres"`
}

// MemoryConfig configures Watermill's gochannel Pub/Sub. Messages live only in
// the process: for unit tests and demos.
type MemoryConfig struct {
	// OutputBuffer is each subscriber's channel buffer. Default 0 (unbuffered):
	// a slow consumer slows the publisher, which is the honest behaviour.
	OutputBuffer int64 `yaml:"output_buffer"`
}

// KafkaConfig configures watermill-kafka (Sarama).
type KafkaConfig struct {
	// Brokers are the bootstrap addresses (host:port). Required unless
	// Embedded. In YAML a list or one comma-separated string.
	Brokers HostList `yaml:"brokers"`

	// Embedded starts a Kafka-protocol broker in the process (franz-go's
	// kfake) instead of connecting to Brokers: nothing to install, and
	// nothing kept after the process exits, so it is an explicit choice
	// for tests and demos, logged as not durable. Default false.
	Embedded bool `yaml:"embedded"`

	// ConsumerGroup the subscriber joins. Default "antidote". Offsets are
	// committed per group, and only for acked messages.
	ConsumerGroup string `yaml:"consumer_group"`

	// Partitions of the topics the adapter creates: a topic it subscribes
	// or publishes to that does not exist yet (created before the first
	// Subscribe or Publish of this process, so that no consumer or
	// producer has the broker auto-create it with its own defaults), the
	// DLQ topics, the embedded broker's auto-created topics and
	// SubscribeInitialize's. A topic that exists is left as it is, whatever
	// its partitions. Default 4. More partitions let more consumers of a
	// group share a topic (at most one per partition) and, with
	// Concurrency 1, more messages run at once; a key stays in one
	// partition, so its order holds either way. Adding partitions later
	// moves keys to other partitions, so choose before the first run.
	Partitions int `yaml:"partitions"`

	// ReplicationFactor of the topics the adapter creates (see
	// Partitions). Default 1: right for one broker, and for nothing else
	// in production, where 3 keeps a topic through a broker's loss.
	ReplicationFactor int `yaml:"replication_factor"`

	// InitialOffset is where a new consumer group starts: "oldest" (default;
	// nothing published before the group existed is missed) or "newest".
	InitialOffset string `yaml:"initial_offset"`

	// Version is the Kafka protocol version Sarama speaks. Default "2.1.0".
	// Higher versions break consumer groups with Sarama 1.43 (OffsetFetch v6).
	Version string `yaml:"version"`

	// PartitionKey is the metadata key whose value becomes the record key, so
	// messages with the same value keep their order. Default "partition_key".
	// Messages without it are spread over partitions.
	PartitionKey string `yaml:"partition_key"`

	// NackResendSleep is the pause before a nacked message is redelivered.
	// Default 100ms. A nack blocks its partition until the message is acked
	// (with Concurrency above 1 and Ordering key: its key only).
	NackResendSleep time.Duration `yaml:"nack_resend_sleep"`

	// Concurrency is how many messages of one partition are handled at
	// once. Default 1: watermill-kafka's subscriber, one message per
	// partition at a time (a nack blocks the partition). Above 1 the
	// adapter's own key-ordered subscriber runs up to Concurrency messages
	// of each partition at once, in the order Ordering says; the committed
	// offset of a partition is the lowest offset not yet acked, so a crash
	// redelivers only unfinished messages (and whatever finished above
	// them), and a nack holds back only its key.
	Concurrency int `yaml:"concurrency"`

	// Ordering is what Concurrency above 1 keeps in order: "key" (default:
	// messages with the same record key run one at a time, in offset
	// order; messages without a key are not ordered, since the producer
	// left their partition, and so their order, to chance), "partition"
	// (one message of a partition at a time, as with Concurrency 1) or
	// "unordered" (any Concurrency messages of a partition at once).
	Ordering string `yaml:"ordering"`

	// ReadAheadBytes bounds, with Concurrency above 1, the bytes of records
	// (key, value, headers) one partition holds read and not yet finished:
	// in flight, or waiting behind a message of their key. Default 64 MiB.
	// Reading pauses at the bound (and at max(1000, 64×Concurrency)
	// records) until messages finish, so a key held back by retries cannot
	// pull a partition of large records into memory. Lower: less memory
	// per partition, fewer large messages at once; it never stops a
	// partition, one record is always let through. Sarama's own buffer
	// (256 records per partition) comes on top, as with Concurrency 1.
	ReadAheadBytes int `yaml:"read_ahead_bytes"`

	// SyncCommit commits each acked offset before the next message of the
	// partition is handled, instead of Sarama committing acked offsets in the
	// background every second. Default false: a synchronous commit costs a
	// broker round trip per message (about 50x slower on the embedded broker).
	// Either way only acked offsets are committed; async means a crash
	// redelivers up to a second of already processed messages.
	SyncCommit bool `yaml:"sync_commit"`

	// CommitInterval is how often Sarama commits acked offsets when
	// SyncCommit is off. Default 1s. Shorter keeps the committed offset (and
	// so the consumer lag that backpressure reads) closer to the truth and
	// redelivers less after a crash, at one commit request per interval.
	CommitInterval time.Duration `yaml:"commit_interval"`

	// SessionTimeout is how long the group coordinator waits for a silent
	// member before giving its partitions to others. Default 10s. Shorter
	// means a crashed consumer's partitions move sooner; too short makes
	// slow handlers lose their partitions.
	SessionTimeout time.Duration `yaml:"session_timeout"`

	// RebalanceTimeout is how long the group coordinator waits, once a
	// rebalance starts, for the members to rejoin (each first finishing
	// the messages it holds) before it drops those that have not. Default
	// 60s (Sarama's), or SessionTimeout if longer; at least SessionTimeout,
	// at most 30m. The
	// consumers' network read timeout follows it (RebalanceTimeout + 5s,
	// at least Sarama's 30s): a JoinGroup is answered only when the
	// rebalance ends, and a client that gave up on it first would rejoin
	// as a new member while the group waited for the old one. Longer
	// gives slow handlers time to finish before a rebalance, but a
	// rebalance waiting on a dead member, and a broker that stops
	// answering, take that long to be noticed; shorter is the reverse.
	RebalanceTimeout time.Duration `yaml:"rebalance_timeout"`

	// ClientID identifies this process to the brokers. Default "antidote".
	ClientID string `yaml:"client_id"`

	// EmbeddedAddr is where the embedded broker listens (Embedded only).
	// Default "127.0.0.1:0" (a free port).
	EmbeddedAddr string `yaml:"embedded_addr"`

	// MaxMessageBytes is the largest record the publisher sends, counted as
	// Kafka counts it (value, key, headers and record overhead). Default
	// 1048576 (1 MiB, what a Kafka broker's message.max.bytes allows by
	// default). A larger message is refused at Publish with an error naming
	// its size, this limit and this setting. Raise it only together with the
	// topics' max.message.bytes. Dead letters may exceed it by
	// antidote.LetterHeadroom: the DLQ topics the adapter creates allow that much more.
	MaxMessageBytes int `yaml:"max_message_bytes"`

	// Unmarshaler replaces Watermill's default record decoding (code only,
	// not YAML). Whatever it is, it is wrapped in TolerantKafkaUnmarshaler,
	// so a record it rejects is dead-lettered instead of blocking the partition.
	Unmarshaler kafka.Unmarshaler `yaml:"-"`

	// TLS encrypts the connections to the brokers (kafka.tls.*). If
	// TLS.Enabled is false (the default), connections are plain TCP.
	TLS TLSConfig `yaml:"tls"`

	// SASL authenticates to the brokers (kafka.sasl.*). If SASL.Mechanism
	// is empty and no TokenProvider is set (the default), the client does
	// not authenticate.
	SASL KafkaSASLConfig `yaml:"sasl"`

	// ConfigureSarama, if set, is called last on every Sarama config the
	// adapter builds (SaramaConfig: subscriber, publisher, dead letters'
	// producer, admin, lag sources, the dlq package), for settings this
	// struct does not cover (code only, not YAML). If ConfigureSarama is
	// nil, the config is used as built. What it changes is not validated.
	ConfigureSarama func(*sarama.Config) `yaml:"-"`
}

// AMQPConfig configures watermill-amqp: one durable queue per topic.
type AMQPConfig struct {
	// URL of RabbitMQ. Default "amqp://guest:guest@127.0.0.1:5672/".
	URL string `yaml:"url"`

	// Quorum declares queues as quorum queues (replicated, and RabbitMQ keeps
	// an x-delivery-count). Default false: classic durable queues. A queue's
	// type cannot change once declared.
	Quorum bool `yaml:"quorum"`

	// SingleActiveConsumer declares each topic's queue with RabbitMQ's
	// x-single-active-consumer (a quorum queue also with x-delivery-limit
	// 2147483647, so that a nacked message returns to the head): of the
	// workers consuming a queue only one receives its messages, in queue
	// order; when that worker's connection goes (crash, SIGKILL, network)
	// RabbitMQ puts its unacked messages back at the head and hands the
	// queue to another. Default false: the workers compete, throughput
	// grows with them, and messages of one key are handled out of order.
	// The trade-off: a queue goes as fast as one consumer, whatever the
	// workers. Retries must stay in place for order (router.New refuses
	// DelayedRetry with it: a delay queue returns a message to the tail).
	// DLQ queues (topics ending in antidote.DeadLetterSuffix, dead
	// letters, LetterSubscriber) are declared without it: the hospital
	// reads them with basic.get, which a quorum queue with it refuses.
	// Every process declaring a queue (the services, the hospital's
	// replays) must agree: a queue declared before with other arguments is
	// refused (ErrQueueArguments).
	SingleActiveConsumer bool `yaml:"single_active_consumer"`

	// Prefetch is the consumer's QoS prefetch count. Default 10, or 1 with
	// SingleActiveConsumer. Higher means more throughput and more messages
	// redelivered after a crash; and, since the prefetched messages are
	// already on their way, a nacked message (a breaker hold, a DLQ that
	// failed) comes back after them: only 1 keeps order across nacks.
	Prefetch int `yaml:"prefetch"`

	// MaxMessageBytes is the largest message body the publisher sends.
	// Default 134217728 (128 MiB, RabbitMQ 3.x's max_message_size; RabbitMQ
	// 4 lowered its default to 16 MiB: set this to the server's value). A
	// larger body is refused at Publish with an error naming its size, this
	// limit and this setting, instead of RabbitMQ closing the channel.
	// Headers have a limit of their own: they must fit in one AMQP frame.
	MaxMessageBytes int `yaml:"max_message_bytes"`

	// TLS configures the TLS connection to RabbitMQ (amqp.tls.*): custom CA,
	// client certificate, server name. An amqps:// URL uses TLS even if
	// TLS.Enabled is false (with the system's CAs); setting TLS.Enabled with
	// an amqp:// URL is an error, since RabbitMQ listens for TLS on its own
	// port (5671). If TLS.Enabled is false (the default), an amqp:// URL
	// connects in plain TCP.
	TLS TLSConfig `yaml:"tls"`

	// ExternalAuth authenticates with SASL EXTERNAL: RabbitMQ takes the
	// user from the client certificate (rabbitmq_auth_mechanism_ssl) and the
	// URL's user and password are not sent. It needs amqp.tls.cert_file and
	// amqp.tls.key_file and an amqps:// URL. Default false: the URL's user
	// and password (SASL PLAIN).
	ExternalAuth bool `yaml:"external_auth"`
}

// PostgresConfig configures watermill-sql/v4 with pgx and its PostgreSQL queue
// schema: a row is deleted when its message is acked. One table per topic,
// created on first use.
type PostgresConfig struct {
	// URL of the database. Default
	// "postgres://postgres@127.0.0.1:5432/test?sslmode=disable".
	URL string `yaml:"url"`

	// TablePrefix is prepended to the topic to name its table. Default
	// "antidote_queue_".
	TablePrefix string `yaml:"table_prefix"`

	// PollInterval between queries when the queue is empty. Default 100ms.
	// Lower means lower latency and more idle queries.
	PollInterval time.Duration `yaml:"poll_interval"`

	// ResendInterval before a nacked message is delivered again. Default 1s.
	ResendInterval time.Duration `yaml:"resend_interval"`

	// AckDeadline after which an unacked message is delivered again.
	// Default 30s; it must exceed the slowest handler.
	AckDeadline time.Duration `yaml:"ack_deadline"`

	// BatchSize is how many rows one subscriber query locks and hands out.
	// Default 100. Larger is faster; the rows of a batch stay in the table
	// (counted as backlog, redelivered after a crash) until the batch is done.
	BatchSize int `yaml:"batch_size"`

	// MaxConns of the pgx pool. Default 10.
	MaxConns int32 `yaml:"max_conns"`

	// MaxMessageBytes is the largest message (payload plus metadata as JSON)
	// the publisher inserts. Default 67108864 (64 MiB). PostgreSQL itself
	// takes up to 1 GB per field, but the subscriber holds a whole batch of
	// rows in memory (BatchSize); a larger message is refused at Publish with
	// an error naming its size, this limit and this setting. Dead letters may
	// exceed it by antidote.LetterHeadroom.
	MaxMessageBytes int `yaml:"max_message_bytes"`

	// ConfigurePool, if set, is called last on the pgx pool config the
	// adapter builds (OpenPostgresPool: the subscriber's and publisher's
	// pool, the lag source, the dlq package), for anything the URL cannot
	// say: a BeforeConnect that fetches a cloud IAM token, AfterConnect,
	// tracers (code only, not YAML). If ConfigurePool is nil, the pool is
	// built from URL, MaxConns and connect_timeout alone.
	ConfigurePool func(*pgxpool.Config) `yaml:"-"`
}

// Defaults used by SetDefaults.
const (
	DefaultConnectTimeout = 5 * time.Second
	DefaultConsumerGroup  = "antidote"
	DefaultAMQPURL        = "amqp://guest:guest@127.0.0.1:5672/"
	DefaultPostgresURL    = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	DefaultKafkaVersion   = "2.1.0"

	DefaultKafkaRebalanceTimeout = 60 * time.Second
	// MaxKafkaRebalanceTimeout bounds kafka.rebalance_timeout: the
	// consumers' read timeout follows it, and a dead broker connection
	// would go unnoticed that long.
	MaxKafkaRebalanceTimeout = 30 * time.Minute

	DefaultKafkaMaxMessageBytes    = 1 << 20
	DefaultKafkaReadAheadBytes     = 64 << 20
	DefaultAMQPMaxMessageBytes     = 128 << 20
	DefaultPostgresMaxMessageBytes = 64 << 20
)

// SetDefaults fills every unset field with its documented default.
func (c *Config) SetDefaults() {
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = DefaultConnectTimeout
	}
	k := &c.Kafka
	if k.ConsumerGroup == "" {
		k.ConsumerGroup = DefaultConsumerGroup
	}
	if k.Partitions == 0 {
		k.Partitions = 4
	}
	if k.ReplicationFactor == 0 {
		k.ReplicationFactor = 1
	}
	if k.InitialOffset == "" {
		k.InitialOffset = "oldest"
	}
	if k.Version == "" {
		k.Version = DefaultKafkaVersion
	}
	if k.PartitionKey == "" {
		k.PartitionKey = "partition_key"
	}
	if k.NackResendSleep == 0 {
		k.NackResendSleep = 100 * time.Millisecond
	}
	if k.Concurrency == 0 {
		k.Concurrency = 1
	}
	if k.ReadAheadBytes == 0 {
		k.ReadAheadBytes = DefaultKafkaReadAheadBytes
	}
	if k.Ordering == "" {
		k.Ordering = KafkaOrderingKey
	}
	if k.CommitInterval == 0 {
		k.CommitInterval = time.Second
	}
	if k.SessionTimeout == 0 {
		k.SessionTimeout = 10 * time.Second
	}
	if k.RebalanceTimeout == 0 {
		k.RebalanceTimeout = max(DefaultKafkaRebalanceTimeout, k.SessionTimeout)
	}
	if k.ClientID == "" {
		k.ClientID = "antidote"
	}
	if k.EmbeddedAddr == "" {
		k.EmbeddedAddr = "127.0.0.1:0"
	}
	if k.MaxMessageBytes == 0 {
		k.MaxMessageBytes = DefaultKafkaMaxMessageBytes
	}
	a := &c.AMQP
	if a.URL == "" {
		a.URL = DefaultAMQPURL
	}
	if a.Prefetch == 0 {
		a.Prefetch = 10
		if a.SingleActiveConsumer {
			a.Prefetch = 1 // order across nacks: see Prefetch
		}
	}
	if a.MaxMessageBytes == 0 {
		a.MaxMessageBytes = DefaultAMQPMaxMessageBytes
	}
	p := &c.Postgres
	if p.URL == "" {
		p.URL = DefaultPostgresURL
	}
	if p.TablePrefix == "" {
		p.TablePrefix = "antidote_queue_"
	}
	if p.PollInterval == 0 {
		p.PollInterval = 100 * time.Millisecond
	}
	if p.ResendInterval == 0 {
		p.ResendInterval = time.Second
	}
	if p.AckDeadline == 0 {
		p.AckDeadline = 30 * time.Second
	}
	if p.BatchSize == 0 {
		p.BatchSize = 100
	}
	if p.MaxConns == 0 {
		p.MaxConns = 10
	}
	if p.MaxMessageBytes == 0 {
		p.MaxMessageBytes = DefaultPostgresMaxMessageBytes
	}
}

// Validate reports every field that cannot work, each naming the field (as in
// YAML) and the fix. Call SetDefaults first; Open does both.
func (c Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: %s: %s", ErrInvalidConfig, field, fmt.Sprintf(format, args...)))
	}
	switch c.Broker {
	case KindMemory, KindKafka, KindAMQP, KindPostgres:
	case "":
		bad("broker", "is not set; choose one of %s (memory keeps messages in this process only: for tests and demos)", kindList())
	default:
		bad("broker", "unknown broker %q; use one of %s", c.Broker, kindList())
	}
	if c.ConnectTimeout < 0 {
		bad("connect_timeout", "%s is negative; use a positive duration such as 5s", c.ConnectTimeout)
	}
	switch c.Broker {
	case KindKafka:
		k := c.Kafka
		for i, b := range k.Brokers {
			if err := checkHostPort(b); err != nil {
				bad(fmt.Sprintf("kafka.brokers[%d]", i), "%q is not host:port (%v); write it like 127.0.0.1:9092", b, err)
			}
		}
		switch {
		case len(k.Brokers) == 0 && !k.Embedded:
			bad("kafka.brokers", "is empty; list the bootstrap brokers (host:port), or set kafka.embedded: true (ANTIDOTE_KAFKA_EMBEDDED=true) for an in-process test broker that keeps nothing after exit")
		case len(k.Brokers) > 0 && k.Embedded:
			bad("kafka.embedded", "is true while kafka.brokers lists %d brokers; set only one", len(k.Brokers))
		}
		if strings.TrimSpace(k.ConsumerGroup) == "" {
			bad("kafka.consumer_group", "is blank; name the consumer group, e.g. my-service")
		}
		if k.Partitions < 1 {
			bad("kafka.partitions", "%d is less than 1; use 1 or more", k.Partitions)
		}
		if k.ReplicationFactor < 1 {
			bad("kafka.replication_factor", "%d is less than 1; use 1 or more", k.ReplicationFactor)
		}
		if k.InitialOffset != "oldest" && k.InitialOffset != "newest" {
			bad("kafka.initial_offset", "%q is not oldest or newest", k.InitialOffset)
		}
		if _, err := parseKafkaVersion(k.Version); err != nil {
			bad("kafka.version", "%v; use a Kafka version such as 2.1.0", err)
		}
		if k.CommitInterval < 0 {
			bad("kafka.commit_interval", "%s is negative; use a duration such as 1s", k.CommitInterval)
		}
		if k.SessionTimeout < time.Second {
			bad("kafka.session_timeout", "%s is under 1s; use a duration such as 10s", k.SessionTimeout)
		}
		switch {
		case k.RebalanceTimeout < k.SessionTimeout:
			bad("kafka.rebalance_timeout", "%s is under kafka.session_timeout (%s): the members of a rebalance would be dropped before a dead one is noticed; use at least the session timeout, e.g. 60s", k.RebalanceTimeout, k.SessionTimeout)
		case k.RebalanceTimeout > MaxKafkaRebalanceTimeout:
			bad("kafka.rebalance_timeout", "%s is over %s: the consumers' read timeout follows it, and a dead broker would go unnoticed that long; use e.g. 60s", k.RebalanceTimeout, MaxKafkaRebalanceTimeout)
		}
		if k.NackResendSleep < 0 {
			bad("kafka.nack_resend_sleep", "%s is negative; use a positive duration", k.NackResendSleep)
		}
		if k.Concurrency < 1 {
			bad("kafka.concurrency", "%d is less than 1; use 1 (one message per partition at a time) or more", k.Concurrency)
		}
		if k.ReadAheadBytes < 0 {
			bad("kafka.read_ahead_bytes", "%d is negative; use a size in bytes such as 67108864 (64 MiB)", k.ReadAheadBytes)
		}
		switch k.Ordering {
		case KafkaOrderingKey, KafkaOrderingPartition, KafkaOrderingUnordered:
		default:
			bad("kafka.ordering", "%q is not key, partition or unordered", k.Ordering)
		}
		if k.MaxMessageBytes < 1 {
			bad("kafka.max_message_bytes", "%d is less than 1; use the topics' max.message.bytes, e.g. 1048576", k.MaxMessageBytes)
		}
		for _, err := range k.TLS.validate("kafka.tls") {
			errs = append(errs, fmt.Errorf("%w: %v", ErrInvalidConfig, err))
		}
		for _, err := range k.SASL.validate() {
			errs = append(errs, fmt.Errorf("%w: %v", ErrInvalidConfig, err))
		}
		if k.Embedded {
			if err := checkHostPort(k.EmbeddedAddr); err != nil {
				bad("kafka.embedded_addr", "%q is not host:port (%v); use e.g. 127.0.0.1:9092", k.EmbeddedAddr, err)
			}
		}
	case KindAMQP:
		if err := checkURL(c.AMQP.URL, "amqp", "amqps"); err != nil {
			bad("amqp.url", "%v; write it like amqp://user:password@host:5672/", err)
		}
		if c.AMQP.Prefetch < 1 {
			bad("amqp.prefetch", "%d is less than 1; use 1 or more", c.AMQP.Prefetch)
		}
		if c.AMQP.MaxMessageBytes < 1 {
			bad("amqp.max_message_bytes", "%d is less than 1; use the server's max_message_size, e.g. 134217728", c.AMQP.MaxMessageBytes)
		}
		for _, err := range c.AMQP.validateTLS() {
			errs = append(errs, fmt.Errorf("%w: %v", ErrInvalidConfig, err))
		}
	case KindPostgres:
		p := c.Postgres
		if err := checkPostgresURL(p.URL); err != nil {
			bad("postgres.url", "%v; write it like postgres://user@host:5432/db?sslmode=disable (or host=... dbname=... keyword/value, or several hosts postgres://h1:5432,h2:5432/db)", err)
		}
		if !validTablePrefix(p.TablePrefix) {
			bad("postgres.table_prefix", "%q must be letters, digits and underscores, starting with a letter", p.TablePrefix)
		}
		for name, d := range map[string]time.Duration{"poll_interval": p.PollInterval, "resend_interval": p.ResendInterval, "ack_deadline": p.AckDeadline} {
			if d <= 0 {
				bad("postgres."+name, "%s is not positive; use a duration such as 1s", d)
			}
		}
		if p.BatchSize < 1 {
			bad("postgres.batch_size", "%d is less than 1; use 1 or more", p.BatchSize)
		}
		if p.MaxConns < 1 {
			bad("postgres.max_conns", "%d is less than 1; use 1 or more", p.MaxConns)
		}
		if p.MaxMessageBytes < 1 {
			bad("postgres.max_message_bytes", "%d is less than 1; use e.g. 67108864 (64 MiB)", p.MaxMessageBytes)
		}
	}
	if c.Memory.OutputBuffer < 0 {
		bad("memory.output_buffer", "%d is negative; use 0 or more", c.Memory.OutputBuffer)
	}
	return errors.Join(errs...)
}

func kindList() string {
	s := make([]string, len(Kinds))
	for i, k := range Kinds {
		s[i] = string(k)
	}
	return strings.Join(s, ", ")
}

func checkHostPort(s string) error {
	i := strings.LastIndex(s, ":")
	if i <= 0 || i == len(s)-1 {
		return errors.New("missing host or port")
	}
	for _, r := range s[i+1:] {
		if r < '0' || r > '9' {
			return errors.New("port is not a number")
		}
	}
	return nil
}

func checkURL(raw string, schemes ...string) error {
	u, err := url.Parse(raw)
	if err != nil {
		// url.Parse errors quote the input, which may hold a password.
		return errors.New("not a valid URL")
	}
	for _, s := range schemes {
		if u.Scheme == s {
			if u.Host == "" {
				return errors.New("URL has no host")
			}
			return nil
		}
	}
	// Not even the scheme is quoted: in a malformed URL it may be a password.
	return fmt.Errorf("the scheme is not %s (the URL is not shown: it may hold a password)", strings.Join(schemes, " or "))
}

func validTablePrefix(s string) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r == '_':
		case r >= '0' && r <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// Redact hides the password of a URL, for logs and errors. A PostgreSQL
// keyword/value string (host=h password=p) gets its password hidden too.
func Redact(raw string) string {
	if !strings.Contains(raw, "://") {
		return redactPostgresPassword(raw)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "<unparseable URL>"
	}
	return u.Redacted()
}

// redactPostgresPassword hides the value of every password= keyword (quoted
// or not) of a keyword/value connection string, and of ?password= in a URL.
func redactPostgresPassword(s string) string {
	var b strings.Builder
	for {
		i := strings.Index(s, "password=")
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}
		b.WriteString(s[:i+len("password=")])
		b.WriteString("xxxxx")
		rest := s[i+len("password="):]
		end := 0
		if strings.HasPrefix(rest, "'") {
			end = 1
			for end < len(rest) && rest[end] != '\'' {
				if rest[end] == '\\' {
					end++
				}
				end++
			}
			end++
		} else {
			for end < len(rest) && rest[end] != ' ' && rest[end] != '&' {
				end++
			}
		}
		s = rest[min(end, len(rest)):]
	}
}
