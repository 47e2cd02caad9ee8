package adapters

import (
	"errors"
	"fmt"
	"strings"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote"
)

// ErrFenced is wrapped by a KafkaTxn's errors once a newer producer with
// the same transactional id took over: nothing more can be committed
// through it, and what it had not committed is aborted.
var ErrFenced = errors.New("kafka: a newer transactional producer with the same id took over")

// KafkaTxn publishes to Kafka in transactions that also commit a consumer
// group's offsets (Kafka's exactly-once consume-and-produce): the hospital
// replays a DLQ's letter and moves its own offset past it in one
// transaction, so the replay is consumed (by read_committed consumers, as
// Open's are) exactly when the letter is resolved. Its transactional id
// names the DLQ it treats: a second hospital treating the same DLQ fences
// the first (ErrFenced) rather than giving a letter two fates. Publish
// makes the checks Open's publisher makes (names, sizes, the metadata
// rule). Not safe for concurrent use.
type KafkaTxn struct {
	cfg       Config
	client    sarama.Client
	producer  sarama.SyncProducer
	marshaler interface {
		Marshal(topic string, msg *message.Message) (*sarama.ProducerMessage, error)
	}
}

// NewKafkaTxn starts a transactional producer with transactionalID on cfg's
// brokers; starting it fences every earlier producer with that id, and the
// coordinator aborts what that one had not committed.
func NewKafkaTxn(cfg Config, transactionalID string) (*KafkaTxn, error) {
	cfg.SetDefaults()
	sc, err := SaramaConfig(cfg)
	if err != nil {
		return nil, err
	}
	sc.Producer.Idempotent = true
	sc.Producer.RequiredAcks = sarama.WaitForAll
	sc.Producer.Transaction.ID = transactionalID
	sc.Net.MaxOpenRequests = 1
	client, err := sarama.NewClient(cfg.Kafka.Brokers, sc)
	if err != nil {
		return nil, fmt.Errorf("%w: kafka at %s: %v", ErrUnreachable, strings.Join(cfg.Kafka.Brokers, ","), err)
	}
	producer, err := sarama.NewSyncProducerFromClient(client)
	if err != nil {
		_ = client.Close()
		return nil, fmt.Errorf("kafka: transactional producer %q: %w", transactionalID, err)
	}
	return &KafkaTxn{cfg: cfg, client: client, producer: producer, marshaler: KafkaMarshaler(cfg.Kafka.PartitionKey)}, nil
}

// EnsureTopic creates topic, with one partition, when it does not exist.
func (t *KafkaTxn) EnsureTopic(topic string) error {
	admin, err := sarama.NewClusterAdminFromClient(t.client)
	if err != nil {
		return fmt.Errorf("kafka: admin: %w", err)
	}
	// Not closed: closing an admin made from a client closes the client.
	err = admin.CreateTopic(topic, &sarama.TopicDetail{NumPartitions: 1, ReplicationFactor: int16(t.cfg.Kafka.ReplicationFactor)}, false)
	if err != nil && !errors.Is(err, sarama.ErrTopicAlreadyExists) {
		return fmt.Errorf("kafka: create topic %q: %w", topic, err)
	}
	return nil
}

// Begin starts a transaction.
func (t *KafkaTxn) Begin() error { return t.fenced(t.producer.BeginTxn()) }

// Publish sends msgs to topic in the open transaction.
func (t *KafkaTxn) Publish(topic string, msgs ...*message.Message) error {
	if err := checkTopic(checkKafkaName, topic); err != nil {
		return err
	}
	recs := make([]*sarama.ProducerMessage, len(msgs))
	for i, msg := range msgs {
		msg = withMetadataRule(msg)
		limit := t.cfg.Kafka.MaxMessageBytes
		if size := kafkaRecordSize(msg, t.cfg.Kafka.PartitionKey); size > limit {
			return &antidote.TooLargeError{Broker: string(KindKafka), Topic: topic, UUID: msg.UUID, What: "message", Size: size, Limit: limit, Setting: "kafka.max_message_bytes"}
		}
		rec, err := t.marshaler.Marshal(topic, msg)
		if err != nil {
			return fmt.Errorf("kafka: marshal %s: %w", msg.UUID, err)
		}
		recs[i] = rec
	}
	return t.fenced(t.producer.SendMessages(recs))
}

// Commit commits the open transaction with group's offset of topic's
// partition moved to offset (the next record to read) with metadata.
func (t *KafkaTxn) Commit(group, topic string, partition int32, offset int64, metadata string) error {
	offsets := map[string][]*sarama.PartitionOffsetMetadata{topic: {{Partition: partition, Offset: offset, Metadata: &metadata}}}
	if err := t.fenced(t.producer.AddOffsetsToTxn(offsets, group)); err != nil {
		return err
	}
	return t.fenced(t.producer.CommitTxn())
}

// Abort aborts the open transaction, if any.
func (t *KafkaTxn) Abort() error {
	if t.producer.TxnStatus()&sarama.ProducerTxnFlagInTransaction == 0 {
		return nil
	}
	return t.fenced(t.producer.AbortTxn())
}

// fenced wraps err with ErrFenced when a newer producer took over: Kafka
// answers a fenced producer with PRODUCER_FENCED or INVALID_PRODUCER_EPOCH
// (in a send's ProducerErrors too).
func (t *KafkaTxn) fenced(err error) error {
	if err == nil {
		return nil
	}
	isFenced := func(e error) bool {
		return errors.Is(e, sarama.ErrProducerFenced) || errors.Is(e, sarama.ErrInvalidProducerEpoch)
	}
	fenced := isFenced(err)
	var perrs sarama.ProducerErrors
	if errors.As(err, &perrs) {
		for _, pe := range perrs {
			fenced = fenced || isFenced(pe.Err)
		}
	}
	if len(perrs) > 0 {
		// ProducerErrors says only how many: name why.
		causes := make([]error, len(perrs))
		for i, pe := range perrs {
			causes[i] = pe.Err
		}
		err = fmt.Errorf("%w: %w", err, errors.Join(causes...))
	}
	if fenced {
		return fmt.Errorf("%w: %w", ErrFenced, err)
	}
	return err
}

// Ready reports whether a new transaction can begin: after an error and
// Abort, Sarama's producer is ready again unless the error left it unable
// to go on (fenced, fatal, or a state it cannot leave).
func (t *KafkaTxn) Ready() bool {
	return t.producer.TxnStatus()&sarama.ProducerTxnFlagReady != 0
}

// Broken reports whether the producer can run no more transactions (it was
// fenced, or hit an error Kafka calls fatal): a new one must be started.
func (t *KafkaTxn) Broken() bool {
	return t.producer.TxnStatus()&sarama.ProducerTxnFlagFatalError != 0
}

// Close closes the producer and its client.
func (t *KafkaTxn) Close() error {
	return errors.Join(t.producer.Close(), t.client.Close())
}
