package adapters

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/poison"
)

func parseKafkaVersion(v string) (sarama.KafkaVersion, error) {
	return sarama.ParseKafkaVersion(v)
}

// KafkaMarshaler is the marshaler Open uses: Watermill's default, with the
// record key taken from the metadata key KafkaConfig.PartitionKey. A message
// without it gets no key, so Sarama spreads such messages over partitions
// (Watermill's partitioning marshaler would send them all, with the empty
// key, to one partition).
func KafkaMarshaler(partitionKey string) kafka.MarshalerUnmarshaler {
	return keyMarshaler{partitionKey: partitionKey}
}

type keyMarshaler struct {
	kafka.DefaultMarshaler
	partitionKey string
}

func (m keyMarshaler) Marshal(topic string, msg *message.Message) (*sarama.ProducerMessage, error) {
	rec, err := m.DefaultMarshaler.Marshal(topic, msg)
	if err != nil {
		return nil, err
	}
	if key := msg.Metadata.Get(m.partitionKey); key != "" {
		rec.Key = sarama.StringEncoder(key)
	}
	return rec, nil
}

// SaramaConfig returns the Sarama settings Open uses for cfg, for users who
// build watermill-kafka publishers or subscribers themselves. Every Kafka
// client Antidote builds starts from it, so kafka.tls, kafka.sasl and
// KafkaConfig.ConfigureSarama (called last) reach all of them.
//
// Offsets: the subscriber marks an offset only after its message is acked and
// Sarama commits marked offsets every second (or, with SyncCommit, right
// after each ack), so an unacked message is consumed again after a restart or
// rebalance (at-least-once).
func SaramaConfig(cfg Config) (*sarama.Config, error) {
	k := cfg.Kafka
	version, err := parseKafkaVersion(k.Version)
	if err != nil {
		return nil, err
	}
	sc := kafka.DefaultSaramaSubscriberConfig()
	sc.Version = version
	sc.ClientID = k.ClientID
	sc.Net.DialTimeout = cfg.ConnectTimeout
	sc.Metadata.Retry.Max = 3
	sc.Metadata.Timeout = cfg.ConnectTimeout
	sc.Admin.Timeout = 2 * cfg.ConnectTimeout
	sc.Consumer.Offsets.Initial = sarama.OffsetOldest
	// The hospital replays a Kafka DLQ's letters in transactions (each
	// replay and the DLQ offset that resolves it commit together): a
	// replay whose transaction was aborted (its treatment was taken over or
	// crashed) must not be consumed.
	if version.IsAtLeast(sarama.V0_11_0_0) {
		sc.Consumer.IsolationLevel = sarama.ReadCommitted
	}
	if k.InitialOffset == "newest" {
		sc.Consumer.Offsets.Initial = sarama.OffsetNewest
	}
	// Without auto-commit, watermill-kafka commits synchronously after each ack.
	sc.Consumer.Offsets.AutoCommit.Enable = !k.SyncCommit
	sc.Consumer.Offsets.AutoCommit.Interval = k.CommitInterval
	sc.Consumer.Group.Session.Timeout = k.SessionTimeout
	sc.Consumer.Group.Heartbeat.Interval = k.SessionTimeout / 3
	sc.Consumer.Group.Rebalance.Timeout = k.RebalanceTimeout
	// The coordinator answers a JoinGroup only when the rebalance ends,
	// up to the rebalance timeout later. With Sarama's 30s read timeout
	// under the 60s rebalance timeout a client gave up on its JoinGroup,
	// closed the connection and joined again as a new member, which
	// restarted the rebalance while the group waited for the old one
	// (issue 24: a group stuck in PreparingRebalance).
	sc.Net.ReadTimeout = max(k.RebalanceTimeout+kafkaReadSlack, minKafkaReadTimeout)
	sc.Producer.Return.Successes = true
	sc.Producer.Return.Errors = true
	// A publish is done only when every in-sync replica has it.
	sc.Producer.RequiredAcks = sarama.WaitForAll
	sc.Producer.Retry.Max = 10
	// Also the most Sarama packs into one batch: a batch over the topic's
	// max.message.bytes would be refused whole.
	sc.Producer.MaxMessageBytes = k.MaxMessageBytes
	if err := applyKafkaSecurity(sc, k); err != nil {
		return nil, err
	}
	if k.ConfigureSarama != nil {
		k.ConfigureSarama(sc)
	}
	if err := checkGroupTimeouts(sc); err != nil {
		return nil, err
	}
	return sc, nil
}

// kafkaReadSlack is what the read timeout leaves the coordinator beyond the
// rebalance timeout to answer a JoinGroup, and minKafkaReadTimeout keeps
// Sarama's default for every other request.
const (
	kafkaReadSlack      = 5 * time.Second
	minKafkaReadTimeout = 30 * time.Second
)

// checkGroupTimeouts refuses group timeouts (as ConfigureSarama may have
// left them) under which a consumer group does not settle: a heartbeat
// interval that lets the session expire between two heartbeats lost or
// late, or a read timeout that gives up on a JoinGroup before the
// rebalance ends.
func checkGroupTimeouts(sc *sarama.Config) error {
	g := sc.Consumer.Group
	if hb, st := g.Heartbeat.Interval, g.Session.Timeout; hb <= 0 || hb > st/3 {
		return fmt.Errorf("%w: Sarama Consumer.Group.Heartbeat.Interval %s is not within a third of Consumer.Group.Session.Timeout %s (kafka.session_timeout sets both): a member would be dropped after one late heartbeat", ErrInvalidConfig, hb, st)
	}
	if rt, rb := sc.Net.ReadTimeout, g.Rebalance.Timeout; rt <= rb {
		return fmt.Errorf("%w: Sarama Net.ReadTimeout %s is not above Consumer.Group.Rebalance.Timeout %s (kafka.rebalance_timeout sets both): a consumer would give up its JoinGroup before the rebalance ends and join again as a new member", ErrInvalidConfig, rt, rb)
	}
	return nil
}

// orderedFetchWait is the key-ordered subscriber's fetch long-poll
// (Sarama's Consumer.MaxWaitTime, 500ms by default): an idle consumer asks
// each broker about ten times a second instead of twice.
const orderedFetchWait = 100 * time.Millisecond

// orderedChannelBuffer is the key-ordered subscriber's Sarama
// ChannelBufferSize (256 by default): records waiting between a fetch
// and the claim, which reads them as fast as its read-ahead allows.
const orderedChannelBuffer = 16

// EmbeddedKafkaStarter starts an in-process Kafka broker listening on addr
// ("" for a free loopback port) whose auto-created topics have partitions
// partitions (0: its default), returning its bootstrap addresses and a
// function that stops it.
type EmbeddedKafkaStarter func(addr string, partitions int) (addrs []string, stop func(), err error)

var embeddedKafka atomic.Pointer[EmbeddedKafkaStarter]

// RegisterEmbeddedKafka makes Open honour kafka.embedded with start.
// Package devkafka calls it when imported; a program that does not import
// it cannot start a broker by configuration, and does not compile one in.
func RegisterEmbeddedKafka(start EmbeddedKafkaStarter) { embeddedKafka.Store(&start) }

func openKafka(ctx context.Context, b *Broker, cfg Config, logger watermill.LoggerAdapter) error {
	k := &cfg.Kafka
	if k.Embedded {
		start := embeddedKafka.Load()
		if start == nil {
			return fmt.Errorf("%w: kafka.embedded is set, but no embedded broker is linked into this program: import _ \"github.com/antidote-mq/antidote/devkafka\" (development and tests), or set kafka.brokers to a real Kafka", ErrInvalidConfig)
		}
		addrs, stop, err := (*start)(k.EmbeddedAddr, k.Partitions)
		if err != nil {
			return err
		}
		b.onClose(func() error { stop(); return nil })
		// From here on the config says how to reach it: another Open of
		// b.Config connects to this broker instead of starting one.
		k.Brokers, k.Embedded = addrs, false
		b.Embedded = true
		logger.Error("Embedded Kafka broker (kafka.embedded): an in-process Kafka-protocol broker (kfake) that stops, its data gone, on Close", antidote.ErrNotDurable, watermill.LogFields{"addr": strings.Join(k.Brokers, ",")})
	}
	b.Config = cfg
	b.Addr = strings.Join(k.Brokers, ",")
	if k.TLS.Enabled && k.TLS.InsecureSkipVerify {
		logger.Error("kafka.tls.insecure_skip_verify is true: the brokers' certificates are not checked; never use this in production", ErrInsecureTLS, watermill.LogFields{"addr": b.Addr})
	}
	if err := anyAnswers(ctx, KindKafka, k.Brokers, cfg.ConnectTimeout, logger); err != nil {
		return err
	}
	sc, err := SaramaConfig(cfg)
	if err != nil {
		return err
	}
	base := KafkaMarshaler(k.PartitionKey)
	var inner kafka.Unmarshaler = base
	if k.Unmarshaler != nil {
		inner = k.Unmarshaler
	}
	marshaler := tolerantKafkaMarshaler{Marshaler: base, TolerantKafkaUnmarshaler: TolerantKafkaUnmarshaler{Inner: inner}}

	pc := kafka.DefaultSaramaSyncPublisherConfig()
	*pc = *sc
	pub, err := kafka.NewPublisher(kafka.PublisherConfig{
		Brokers:               k.Brokers,
		Marshaler:             marshaler,
		OverwriteSaramaConfig: pc,
	}, logger)
	if err != nil {
		if aerr := kafkaAuthError(err, *k, sc); aerr != nil {
			return aerr
		}
		return fmt.Errorf("%w: kafka at %s: %v%s", ErrUnreachable, b.Addr, redactSecret(err.Error(), k.SASL.Password), kafkaTLSHint(err))
	}
	kpub := &kafkaPublisher{Publisher: pub, cfg: cfg, marshaler: marshaler, logger: logger}
	b.Publisher = kpub
	b.onClose(kpub.Close)

	newSubscriber := func(m kafka.Unmarshaler) (*kafka.Subscriber, error) {
		sub, err := kafka.NewSubscriber(kafka.SubscriberConfig{
			Brokers:               k.Brokers,
			Unmarshaler:           m,
			OverwriteSaramaConfig: sc,
			ConsumerGroup:         k.ConsumerGroup,
			NackResendSleep:       k.NackResendSleep,
			InitializeTopicDetails: &sarama.TopicDetail{
				NumPartitions:     int32(k.Partitions),
				ReplicationFactor: int16(k.ReplicationFactor),
			},
		}, logger)
		if err != nil {
			if aerr := kafkaAuthError(err, *k, sc); aerr != nil {
				return nil, aerr
			}
			return nil, fmt.Errorf("kafka subscriber: %s%s", redactSecret(err.Error(), k.SASL.Password), kafkaTLSHint(err))
		}
		return sub, nil
	}
	sub, err := newSubscriber(marshaler)
	if err != nil {
		return err
	}
	// The hospital's: believes letter keys. It connects only when it
	// subscribes, like the other.
	letterMarshaler := marshaler
	letterMarshaler.Reader = poison.LetterReader
	lsub, err := newSubscriber(letterMarshaler)
	if err != nil {
		_ = sub.Close()
		return err
	}
	b.letters = kafkaSubscriber{Subscriber: lsub, pub: kpub}
	b.onClose(lsub.Close)
	ks := kafkaSubscriber{Subscriber: sub, pub: kpub}
	if k.Concurrency > 1 {
		// The key-ordered subscriber; watermill-kafka's stays for
		// SubscribeInitialize (it opens no connection until Subscribe).
		// It reads ahead of the handlers, so its fetches often wait idle
		// on the broker when a consumer closes or a rebalance starts, and
		// both wait for them: a shorter long-poll than Sarama's 500ms.
		// It holds its own bounded read-ahead (kafka.read_ahead_bytes), so
		// Sarama's per-partition buffer in front of it is kept small: at
		// 256 records of 1 MiB it alone would hold 256 MiB a partition.
		osc := *sc
		osc.Consumer.MaxWaitTime = orderedFetchWait
		osc.ChannelBufferSize = orderedChannelBuffer
		ks.ordered = newOrderedKafkaSubscriber(*k, &osc, marshaler, logger)
		b.onClose(ks.ordered.Close)
	}
	b.Subscriber = ks
	b.onClose(sub.Close)
	return nil
}
