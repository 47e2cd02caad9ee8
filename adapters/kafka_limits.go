package adapters

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote"
)

// kafkaMaxTopicLen is Kafka's limit on topic names.
const kafkaMaxTopicLen = 249

// CheckKafkaTopic reports whether name can be a Kafka topic: an error
// (*antidote.TopicError) naming the rule it breaks, nil if it can. The
// embedded broker (devkafka) creates only topics that pass it.
func CheckKafkaTopic(name string) error { return checkKafkaName(name) }

// checkKafkaName reports whether name can be a Kafka topic.
func checkKafkaName(name string) error {
	bad := func(rule string) error {
		return &antidote.TopicError{Broker: string(KindKafka), Topic: name, Name: name, Rule: rule}
	}
	switch {
	case name == "":
		return bad("a topic name cannot be empty")
	case name == "." || name == "..":
		return bad(`Kafka does not allow the topic names "." and ".."`)
	case len(name) > kafkaMaxTopicLen:
		return bad(fmt.Sprintf("Kafka topic names are at most %d characters; this one has %d", kafkaMaxTopicLen, len(name)))
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return bad(fmt.Sprintf("Kafka topic names may contain only ASCII letters, digits, '.', '_' and '-'; byte %d is %q", i, c))
		}
	}
	return nil
}

// kafkaBatchOverhead is the record batch header (v2) a broker counts
// against max.message.bytes on top of the records.
const kafkaBatchOverhead = 61

// kafkaRecordSize is an upper bound of what a broker counts against
// max.message.bytes for msg sent alone as the adapter's marshaler encodes it:
// Sarama's ProducerMessage.ByteSize (value, key, the UUID header, one header
// per metadata entry, maximal varint overheads) plus the batch header,
// computed without encoding anything. A broker at its default
// message.max.bytes (1048588) takes every message this counts at 1 MiB or
// less.
func kafkaRecordSize(msg *message.Message, partitionKey string) int {
	const recordOverhead = 5*binary.MaxVarintLen32 + binary.MaxVarintLen64 + 1
	const headerOverhead = 2 * binary.MaxVarintLen32
	size := kafkaBatchOverhead + recordOverhead + len(msg.Payload)
	size += len(kafka.UUIDHeaderKey) + len(msg.UUID) + headerOverhead
	for k, v := range msg.Metadata {
		size += len(k) + len(v) + headerOverhead
	}
	size += len(msg.Metadata.Get(partitionKey))
	return size
}

// kafkaPublisher is the publisher Open returns for Kafka: watermill-kafka's,
// with every limit checked before anything is sent, so a batch is refused
// whole instead of half sent, and with a broker's MESSAGE_TOO_LARGE turned
// into a *antidote.TooLargeError.
//
// Letters (antidote.WithLetter) may be antidote.LetterHeadroom larger than MaxMessageBytes.
// They go through a producer of their own, started on the first letter:
// Sarama packs messages into batches up to its Producer.MaxMessageBytes,
// and a batch over the topic's limit is refused whole, so the ordinary
// producer's must stay at the ordinary limit. The first letter to a topic
// also makes sure the topic accepts letters (see ensureLetterTopic).
type kafkaPublisher struct {
	*kafka.Publisher
	cfg       Config
	marshaler kafka.Marshaler
	logger    watermill.LoggerAdapter

	lettersOnce sync.Once
	letters     *kafka.Publisher
	lettersErr  error

	adminOnce sync.Once
	admin     sarama.ClusterAdmin
	adminErr  error
	mu        sync.Mutex
	ready     map[string]bool       // letter topics checked
	topics    map[string]topicState // source topics checked (ensureTopic)

	gate closeGate
}

func (p *kafkaPublisher) CheckName(name string) error { return checkKafkaName(name) }

func (p *kafkaPublisher) Publish(topic string, msgs ...*message.Message) error {
	if err := checkTopic(checkKafkaName, topic); err != nil {
		return err
	}
	if err := p.gate.enter(); err != nil {
		return err
	}
	defer p.gate.leave()
	letters := false
	for _, msg := range msgs {
		if err := p.checkSize(topic, msg); err != nil {
			return err
		}
		letters = letters || antidote.IsLetter(msg.Context())
	}
	pub := p.Publisher
	if letters {
		var err error
		if pub, err = p.letterPublisher(); err != nil {
			return err
		}
		p.ensureLetterTopic(topic)
	} else {
		p.ensureTopic(topic)
	}
	err := pub.Publish(topic, msgs...)
	if letters && errors.Is(err, sarama.ErrUnknownTopicOrPartition) {
		// The DLQ topic was deleted while we ran (brokers that create
		// topics on first use have it back already): create it again.
		p.mu.Lock()
		delete(p.ready, topic)
		p.mu.Unlock()
		p.ensureLetterTopic(topic)
		err = pub.Publish(topic, msgs...)
	}
	if errors.Is(err, sarama.ErrMessageSizeTooLarge) {
		// The topic's own limit is lower than ours.
		size := 0
		for _, msg := range msgs {
			size = max(size, kafkaRecordSize(msg, p.cfg.Kafka.PartitionKey))
		}
		return fmt.Errorf("%w (%v)", &antidote.TooLargeError{Broker: string(KindKafka), Topic: topic, What: "message", Size: size, Limit: p.topicLimit(topic),
			Setting: "the topic's max.message.bytes on the broker (kafka.max_message_bytes must not exceed it)"}, err)
	}
	return err
}

// CheckMessage implements antidote.MessageChecker.
func (p *kafkaPublisher) CheckMessage(topic string, msg *message.Message) error {
	if err := checkTopic(checkKafkaName, topic); err != nil {
		return err
	}
	return p.checkSize(topic, msg)
}

// checkSize refuses a record over kafka.max_message_bytes (a letter:
// antidote.LetterHeadroom more).
func (p *kafkaPublisher) checkSize(topic string, msg *message.Message) error {
	limit := p.cfg.Kafka.MaxMessageBytes
	setting := "kafka.max_message_bytes"
	if antidote.IsLetter(msg.Context()) {
		limit += antidote.LetterHeadroom
		setting = "kafka.max_message_bytes + antidote.LetterHeadroom for dead letters"
	}
	if size := kafkaRecordSize(msg, p.cfg.Kafka.PartitionKey); size > limit {
		return &antidote.TooLargeError{Broker: string(KindKafka), Topic: topic, UUID: msg.UUID, What: "message", Size: size, Limit: limit, Setting: setting}
	}
	return nil
}

// letterPublisher starts the letters' producer on first use.
func (p *kafkaPublisher) letterPublisher() (*kafka.Publisher, error) {
	p.lettersOnce.Do(func() {
		sc, err := SaramaConfig(p.cfg)
		if err != nil {
			p.lettersErr = err
			return
		}
		sc.Producer.MaxMessageBytes = p.cfg.Kafka.MaxMessageBytes + antidote.LetterHeadroom
		p.letters, p.lettersErr = kafka.NewPublisher(kafka.PublisherConfig{
			Brokers:               p.cfg.Kafka.Brokers,
			Marshaler:             p.marshaler,
			OverwriteSaramaConfig: sc,
		}, p.logger)
		if p.lettersErr != nil {
			p.lettersErr = fmt.Errorf("kafka: start the dead letters' producer: %w", p.lettersErr)
		}
	})
	return p.letters, p.lettersErr
}

func (p *kafkaPublisher) Close() error {
	if !p.gate.close() {
		return nil
	}
	err := p.Publisher.Close()
	p.lettersOnce.Do(func() {}) // no producer starts after Close
	if p.letters != nil {
		err = errors.Join(err, p.letters.Close())
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.adminOnce.Do(func() {})
	if p.admin != nil {
		err = errors.Join(err, p.admin.Close())
		p.admin = nil
	}
	return err
}

func (p *kafkaPublisher) clusterAdmin() (sarama.ClusterAdmin, error) {
	p.adminOnce.Do(func() {
		sc, err := SaramaConfig(p.cfg)
		if err != nil {
			p.adminErr = err
			return
		}
		p.admin, p.adminErr = sarama.NewClusterAdmin(p.cfg.Kafka.Brokers, sc)
	})
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.admin == nil && p.adminErr == nil {
		return nil, errors.New("kafka: publisher closed")
	}
	return p.admin, p.adminErr
}

// letterTopicBytes is the max.message.bytes a DLQ topic needs.
func (p *kafkaPublisher) letterTopicBytes() int {
	// The broker counts a record batch: the record plus the batch header.
	return p.cfg.Kafka.MaxMessageBytes + antidote.LetterHeadroom + 1024
}

// ensureLetterTopic makes sure a topic that receives dead letters accepts
// every letter of a message its source accepted: it creates the topic with
// max.message.bytes raised by antidote.LetterHeadroom, or, when it exists with a
// lower limit, says so once (a letter that then does not fit fails with a
// *antidote.TooLargeError, and DeadLetter shrinks it or moves its payload to a
// claim check). Best effort: an error is logged, the publish goes on.
func (p *kafkaPublisher) ensureLetterTopic(topic string) {
	p.mu.Lock()
	done := p.ready[topic]
	if !done {
		if p.ready == nil {
			p.ready = map[string]bool{}
		}
		p.ready[topic] = true
	}
	p.mu.Unlock()
	if done {
		return
	}
	admin, err := p.clusterAdmin()
	if err != nil {
		p.logger.Error("Cannot check the DLQ topic's max.message.bytes", err, watermill.LogFields{"topic": topic})
		return
	}
	want := p.letterTopicBytes()
	v := strconv.Itoa(want)
	err = admin.CreateTopic(topic, &sarama.TopicDetail{
		NumPartitions:     int32(p.cfg.Kafka.Partitions),
		ReplicationFactor: int16(p.cfg.Kafka.ReplicationFactor),
		ConfigEntries:     map[string]*string{"max.message.bytes": &v},
	}, false)
	if err == nil {
		p.logger.Info("Created the DLQ topic with room for the envelope", watermill.LogFields{"topic": topic, "max.message.bytes": want})
		return
	}
	if !errors.Is(err, sarama.ErrTopicAlreadyExists) {
		p.logger.Error("Cannot create the DLQ topic", err, watermill.LogFields{"topic": topic})
		return
	}
	if got := p.topicLimit(topic); got > 0 && got < want {
		p.logger.Info("The DLQ topic exists with a max.message.bytes below kafka.max_message_bytes + the envelope's headroom: a letter of a message near the limit will be shrunk or claim-checked; raise the topic's max.message.bytes to avoid that", watermill.LogFields{
			"topic": topic, "max.message.bytes": got, "wanted": want,
		})
	}
}

// topicLimit reads the topic's max.message.bytes; 0 when unknown.
func (p *kafkaPublisher) topicLimit(topic string) int {
	admin, err := p.clusterAdmin()
	if err != nil {
		return 0
	}
	entries, err := admin.DescribeConfig(sarama.ConfigResource{Type: sarama.TopicResource, Name: topic, ConfigNames: []string{"max.message.bytes"}})
	if err != nil {
		return 0
	}
	for _, e := range entries {
		if e.Name == "max.message.bytes" {
			n, _ := strconv.Atoi(e.Value)
			return n
		}
	}
	return 0
}

// kafkaSubscriber refuses topics that cannot exist before subscribing, and
// makes sure the DLQ topic it will need (or, for a DLQ topic, the topic
// itself) exists with room for the envelope before anyone creates it with
// the broker's defaults by consuming it (the hospital) or by publishing.
type kafkaSubscriber struct {
	*kafka.Subscriber
	pub *kafkaPublisher
	// ordered, when set (kafka.concurrency above 1), consumes instead of
	// Subscriber.
	ordered *orderedKafkaSubscriber
}

func init() { antidote.RegisterPositionReader(kafkaPosition) }

// kafkaPosition reads the partition and offset watermill-kafka puts in
// every message's context (any watermill-kafka subscriber: Open's or one
// built by hand).
func kafkaPosition(ctx context.Context) (int32, int64, bool) {
	partition, okP := kafka.MessagePartitionFromCtx(ctx)
	offset, okO := kafka.MessagePartitionOffsetFromCtx(ctx)
	return partition, offset, okP && okO
}

func (s kafkaSubscriber) CheckName(name string) error { return checkKafkaName(name) }

func (s kafkaSubscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	if err := checkTopic(checkKafkaName, topic); err != nil {
		return nil, err
	}
	if !isKafkaRetryTopic(topic) {
		dlq := topic
		if !strings.HasSuffix(topic, antidote.DeadLetterSuffix) {
			dlq += antidote.DeadLetterSuffix
		}
		s.pub.ensureLetterTopic(dlq)
	}
	if !strings.HasSuffix(topic, antidote.DeadLetterSuffix) {
		s.pub.ensureTopic(topic) // a DLQ topic was made just above
	}
	if s.ordered != nil {
		return s.ordered.Subscribe(ctx, topic)
	}
	return s.Subscriber.Subscribe(ctx, topic)
}

// Close closes the key-ordered subscriber too, when there is one.
func (s kafkaSubscriber) Close() error {
	if s.ordered != nil {
		_ = s.ordered.Close()
	}
	return s.Subscriber.Close()
}

// CheckStages checks the retry topics "<topic>.retry.<delay>" and their DLQ
// topics (the relays dead-letter what they cannot forward). A retry topic
// has no stages of its own: its relay only forwards.
func (s kafkaScheduler) CheckStages(topic string, stages []time.Duration) error {
	if isKafkaRetryTopic(topic) {
		return nil
	}
	for _, d := range stages {
		if err := checkTopic(checkKafkaName, KafkaRetryTopic(topic, d)); err != nil {
			var te *antidote.TopicError
			if errors.As(err, &te) {
				te.Topic = topic
			}
			return err
		}
	}
	return nil
}

// isKafkaRetryTopic reports whether topic is named like KafkaRetryTopic's.
func isKafkaRetryTopic(topic string) bool {
	i := strings.LastIndex(topic, ".retry.")
	if i < 0 {
		return false
	}
	_, err := time.ParseDuration(topic[i+len(".retry."):])
	return err == nil
}
