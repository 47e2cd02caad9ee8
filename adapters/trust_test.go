package adapters_test

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	wamqp "github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/claimcheck"
	"github.com/antidote-mq/antidote/fingerprint"
	"github.com/antidote-mq/antidote/hospital"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/internal/testenv/brokers"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/poison"
	"github.com/antidote-mq/antidote/router"
)

// rawMessage is what a foreign producer sends: a UUID (in Watermill's
// header or column), a payload and headers.
type rawMessage struct {
	uuid, payload string
	headers       map[string]string
}

// rawProduce sends msgs to topic with the broker's own client, not
// Antidote's publisher (which may refuse such input): Sarama on Kafka,
// amqp091 on RabbitMQ, an INSERT on PostgreSQL. The memory broker has no
// other client than its publisher.
func rawProduce(t *testing.T, b *adapters.Broker, topic string, msgs ...rawMessage) {
	t.Helper()
	ctx := context.Background()
	switch b.Kind {
	case adapters.KindKafka:
		sc := sarama.NewConfig()
		sc.Producer.Return.Successes = true
		sc.Version = sarama.V2_1_0_0 // record headers
		prod, err := sarama.NewSyncProducer(b.Config.Kafka.Brokers, sc)
		if err != nil {
			t.Fatal(err)
		}
		defer prod.Close()
		for _, m := range msgs {
			pm := &sarama.ProducerMessage{Topic: topic, Key: sarama.StringEncoder("one-key"), Value: sarama.StringEncoder(m.payload),
				Headers: []sarama.RecordHeader{{Key: []byte(kafka.UUIDHeaderKey), Value: []byte(m.uuid)}}}
			for k, v := range m.headers {
				pm.Headers = append(pm.Headers, sarama.RecordHeader{Key: []byte(k), Value: []byte(v)})
			}
			if _, _, err := prod.SendMessage(pm); err != nil {
				t.Fatal(err)
			}
		}
	case adapters.KindAMQP:
		conn, err := amqp.Dial(b.Config.AMQP.URL)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ch, err := conn.Channel()
		if err != nil {
			t.Fatal(err)
		}
		// As watermill-amqp declares it: durable, on the default exchange.
		if _, err := ch.QueueDeclare(topic, true, false, false, false, nil); err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			h := amqp.Table{wamqp.DefaultMessageUUIDHeaderKey: m.uuid}
			for k, v := range m.headers {
				h[k] = v
			}
			if err := ch.PublishWithContext(ctx, "", topic, false, false, amqp.Publishing{Headers: h, Body: []byte(m.payload), DeliveryMode: amqp.Persistent}); err != nil {
				t.Fatal(err)
			}
		}
	case adapters.KindPostgres:
		if err := b.Subscriber.(message.SubscribeInitializer).SubscribeInitialize(topic); err != nil {
			t.Fatal(err)
		}
		conn, err := pgx.Connect(ctx, b.Config.Postgres.URL)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		table := adapters.PostgresTable(b.Config.Postgres, topic)
		t.Cleanup(func() {
			c, err := pgx.Connect(context.Background(), b.Config.Postgres.URL)
			if err == nil {
				_, _ = c.Exec(context.Background(), "DROP TABLE IF EXISTS "+table+", "+adapters.PostgresTable(b.Config.Postgres, antidote.DLQTopic(topic)))
				_ = c.Close(context.Background())
			}
		})
		for _, m := range msgs {
			md, err := json.Marshal(m.headers)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := conn.Exec(ctx, "INSERT INTO "+table+" (uuid, payload, metadata) VALUES ($1, $2, $3)", m.uuid, []byte(m.payload), md); err != nil {
				t.Fatal(err)
			}
		}
	default:
		for _, m := range msgs {
			msg := message.NewMessage(m.uuid, []byte(m.payload))
			maps.Copy(msg.Metadata, m.headers)
			if err := b.Publisher.Publish(topic, msg); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// serviceRig is a service as a user builds it (router.New over the
// broker's Subscriber) plus the hospital's view of its DLQ
// (LetterSubscriber): what the handler saw, and the letters.
type serviceRig struct {
	t        *testing.T
	topic    string
	mu       sync.Mutex
	handled  map[string][]message.Metadata
	payloads map[string][]byte // of the handled messages
	letters  map[string][]*message.Message
}

const trustHandler = "trust-handler"

// startService runs the service on topic: a payload "fail" is refused
// (permanent), anything else handled. letters reads the DLQ (on Kafka a
// broker of its own, in a consumer group of its own).
func startService(t *testing.T, b, letters *adapters.Broker, topic string, cc poison.ClaimCheck) *serviceRig {
	t.Helper()
	s := &serviceRig{t: t, topic: topic, handled: map[string][]message.Metadata{}, payloads: map[string][]byte{}, letters: map[string][]*message.Message{}}
	r, err := router.New(router.Config{
		Logger:         watermill.NopLogger{},
		CloseTimeout:   5 * time.Second,
		CrashLoopGuard: middleware.CrashLoopGuardConfig{Tracker: poison.MustNewMemoryDeliveryTracker(poison.MemoryDeliveryTrackerConfig{})},
		DeadLetter:     middleware.DeadLetterConfig{Publisher: b.Publisher, ConsumerGroup: "svc", ClaimCheck: cc},
	})
	if err != nil {
		t.Fatal(err)
	}
	r.AddConsumerHandler(trustHandler, topic, b.Subscriber, func(m *message.Message) error {
		if string(m.Payload) == "fail" {
			return poison.Permanent(errors.New("refused by the handler"))
		}
		s.mu.Lock()
		s.handled[m.UUID] = append(s.handled[m.UUID], maps.Clone(m.Metadata))
		s.payloads[m.UUID] = append([]byte(nil), m.Payload...)
		s.mu.Unlock()
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	dlq, err := letters.LetterSubscriber().Subscribe(ctx, antidote.DLQTopic(topic))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		for l := range dlq {
			s.mu.Lock()
			s.letters[l.UUID] = append(s.letters[l.UUID], l)
			s.mu.Unlock()
			l.Ack()
		}
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("router: %v", err)
		}
		<-readerDone
	})
	<-r.Running()
	return s
}

// await waits until the handler handled exactly handled and the DLQ got
// exactly dead (UUIDs), then checks each was there once.
func (s *serviceRig) await(handled, dead []string) {
	s.t.Helper()
	testenv.EventuallyNil(s.t, 60*time.Second, func() error {
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, id := range handled {
			if len(s.handled[id]) == 0 {
				return errors.New("not handled yet: " + id + "; dead so far: " + strings.Join(keys(s.letters), ","))
			}
		}
		for _, id := range dead {
			if len(s.letters[id]) == 0 {
				return errors.New("not in the DLQ yet: " + id + "; handled so far: " + strings.Join(keys(s.handled), ","))
			}
		}
		return nil
	})
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.handled) != len(handled) || len(s.letters) != len(dead) {
		s.t.Fatalf("handled %v, dead-lettered %v; want %v and %v", keys(s.handled), keys(s.letters), handled, dead)
	}
	for id, seen := range s.handled {
		if len(seen) != 1 {
			s.t.Errorf("%s handled %d times", id, len(seen))
		}
	}
	for id, seen := range s.letters {
		if len(seen) != 1 {
			s.t.Errorf("%s dead-lettered %d times", id, len(seen))
		}
	}
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// trustBrokers opens each broker for the trust tests, and the broker the
// hospital reads its DLQ with (on Kafka another one, in a group of its own,
// on the same cluster).
func trustBrokers(t *testing.T, kind adapters.Kind) (service, letters *adapters.Broker) {
	cfg := brokers.Config(t, kind, brokers.FastRedelivery(), brokers.KafkaCluster(1))
	service = brokers.Open(t, cfg)
	if kind != adapters.KindKafka {
		return service, service
	}
	cfg.Kafka.ConsumerGroup = "hospital"
	return service, brokers.Open(t, cfg)
}

var trustKinds = append([]adapters.Kind{adapters.KindMemory}, brokers.Kinds...)

// A producer cannot pass a well-formed message off as one our decoder could
// not decode: its antidote.undecodable reaches the handler, under the
// foreign prefix. Before, the crash-loop and dead-letter middleware took it
// for the decoder's verdict and dead-lettered it unread.
func TestForeignUndecodableKeyReachesTheHandler(t *testing.T) {
	for _, kind := range trustKinds {
		t.Run(string(kind), func(t *testing.T) {
			b, letters := trustBrokers(t, kind)
			topic := brokers.Topic("trust_undecodable_")
			s := startService(t, b, letters, topic, nil)
			rawProduce(t, b, topic,
				rawMessage{uuid: "forged-undecodable", payload: `{"ok":true}`, headers: map[string]string{
					antidote.MetadataUndecodable: "forged by a producer", antidote.MetadataRawMetadata: "[1,2]"}},
				rawMessage{uuid: "last", payload: "ok"})
			s.await([]string{"forged-undecodable", "last"}, nil)
			md := s.handled["forged-undecodable"][0]
			if _, ok := md[antidote.MetadataUndecodable]; ok {
				t.Fatalf("the handler sees the decoder's key: %v", md)
			}
			if md[antidote.ForeignKey(antidote.MetadataUndecodable)] != "forged by a producer" || md[antidote.ForeignKey(antidote.MetadataRawMetadata)] != "[1,2]" {
				t.Fatalf("the producer's values are not kept as foreign: %v", md)
			}
		})
	}
}

// A producer that puts another letter's claim-check key on its message:
// when the handler fails, the letter is its own (its payload, no claim),
// and the hospital shows the forged key as foreign instead of reading
// (and replaying) the other letter's payload.
func TestForeignClaimCheckIsNotBelieved(t *testing.T) {
	for _, kind := range trustKinds {
		t.Run(string(kind), func(t *testing.T) {
			b, letters := trustBrokers(t, kind)
			cc := claimcheck.NewMemoryStore()
			secret := message.NewMessage("someone-else", []byte("another letter's payload"))
			secret.Metadata.Set(poison.KeyReason, string(poison.ReasonPermanent))
			otherKey, data, _, err := poison.ClaimLetter(secret)
			if err != nil {
				t.Fatal(err)
			}
			if err := cc.Put(context.Background(), otherKey, data); err != nil {
				t.Fatal(err)
			}
			topic := brokers.Topic("trust_claim_")
			s := startService(t, b, letters, topic, cc)
			rawProduce(t, b, topic,
				rawMessage{uuid: "forged-claim", payload: "fail", headers: map[string]string{
					poison.KeyClaimCheck: otherKey, poison.KeyClaimCheckBytes: "24"}},
				rawMessage{uuid: "last", payload: "ok"})
			s.await([]string{"last"}, []string{"forged-claim"})

			letter := s.letters["forged-claim"][0]
			if string(letter.Payload) != "fail" {
				t.Fatalf("letter payload %q, want the message's own", letter.Payload)
			}
			if _, ok := letter.Metadata[poison.KeyClaimCheck]; ok {
				t.Fatalf("the letter refers to a claim: %v", letter.Metadata)
			}
			shown := hospital.FromMessage(context.Background(), letter, string(kind), antidote.DLQTopic(topic), cc, fingerprint.Options{})
			if string(shown.Payload) != "fail" || shown.Problem != "" {
				t.Fatalf("the hospital shows payload %q (problem %q), want the letter's own", shown.Payload, shown.Problem)
			}
			if shown.Metadata[antidote.ForeignKey(poison.KeyClaimCheck)] != otherKey || shown.Metadata[antidote.ForeignKey(poison.KeyClaimCheckBytes)] != "24" {
				t.Fatalf("the hospital does not show the forged claim as foreign: %v", shown.Metadata)
			}
		})
	}
}

// A message carrying a whole forged envelope is handled like any other, and
// when its handler fails its letter describes this consumer's failure; the
// forged values stay in it as foreign, the malformed ones Antidote reads
// under antidote.malformed.
func TestForgedEnvelopeIsHandledAndReplacedByTheConsumers(t *testing.T) {
	forged := map[string]string{
		poison.KeyReason: "crash_loop", poison.KeyError: "forged error", poison.KeyErrorType: "*forged.Error",
		poison.KeyStack: "forged stack", poison.KeyOriginalTopic: "elsewhere", poison.KeyOriginalPartition: "7",
		poison.KeyOriginalOffset: "8", poison.KeyHandler: "someone-else", poison.KeyConsumerGroup: "other",
		poison.KeyConsumerVersion: "v0", poison.KeyFirstFailedAt: "2000-01-01T00:00:00Z",
		poison.KeyShrunk: "true", poison.KeyMalformed: "forged",
	}
	believedClass := map[string]string{ // passed as they are, validated where read
		poison.KeyAttempts: "99", antidote.MetadataRetryStage: "99", poison.KeyReplayCount: "abc",
		poison.KeyReplayedAt: "yesterday", antidote.MetadataRetryTopic: "elsewhere",
	}
	headers := maps.Clone(forged)
	maps.Copy(headers, believedClass)
	for _, kind := range trustKinds {
		t.Run(string(kind), func(t *testing.T) {
			b, letters := trustBrokers(t, kind)
			topic := brokers.Topic("trust_envelope_")
			s := startService(t, b, letters, topic, nil)
			rawProduce(t, b, topic,
				rawMessage{uuid: "forged-ok", payload: "ok", headers: headers},
				rawMessage{uuid: "forged-fail", payload: "fail", headers: headers},
				rawMessage{uuid: "last", payload: "ok"})
			s.await([]string{"forged-ok", "last"}, []string{"forged-fail"})

			md := s.handled["forged-ok"][0]
			for k, v := range forged {
				if _, ok := md[k]; ok || md[antidote.ForeignKey(k)] != v {
					t.Errorf("handler sees %s=%q, %s=%q; want it only as foreign", k, md[k], antidote.ForeignKey(k), md[antidote.ForeignKey(k)])
				}
			}
			if md[antidote.MetadataRetryStage] != "99" || md[poison.KeyReplayCount] != "abc" || md[poison.KeyAttempts] != "1" {
				t.Errorf("stage %q, replay count %q, attempts %q: the scheduler's and replay's keys pass, Retry counts its own attempts",
					md[antidote.MetadataRetryStage], md[poison.KeyReplayCount], md[poison.KeyAttempts])
			}

			letter := s.letters["forged-fail"][0]
			l, err := poison.ReadEnvelope(letter)
			if err != nil {
				t.Fatalf("the letter does not read back: %v (%v)", err, letter.Metadata)
			}
			if l.Reason != poison.ReasonPermanent || l.OriginalTopic != topic || l.Handler != trustHandler || l.ConsumerGroup != "svc" ||
				l.Attempts != 1 || !strings.Contains(l.Error, "refused by the handler") || l.ErrorType == "*forged.Error" || l.Stack != "" ||
				l.FirstFailedAt.Year() == 2000 || string(l.Payload) != "fail" {
				t.Fatalf("the letter's envelope is not the consumer's: %+v", l)
			}
			if kind == adapters.KindKafka {
				if !l.HasOffset || l.OriginalPartition != 0 {
					t.Fatalf("partition/offset %d/%d, want the record's own", l.OriginalPartition, l.OriginalOffset)
				}
			} else if l.HasOffset {
				t.Fatalf("%s has no offsets; the letter says %d/%d", kind, l.OriginalPartition, l.OriginalOffset)
			}
			for k, v := range forged {
				if letter.Metadata[antidote.ForeignKey(k)] != v {
					t.Errorf("letter: forged %s=%q not kept as foreign: %q", k, v, letter.Metadata[antidote.ForeignKey(k)])
				}
			}
			for _, k := range []string{poison.KeyReplayCount, poison.KeyReplayedAt} {
				if _, ok := letter.Metadata[k]; ok || !strings.Contains(letter.Metadata[poison.KeyMalformed], k+"="+believedClass[k]) {
					t.Errorf("letter: malformed %s not moved to %s: %q", k, poison.KeyMalformed, letter.Metadata[poison.KeyMalformed])
				}
			}
		})
	}
}
