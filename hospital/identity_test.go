package hospital_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/cenkalti/backoff/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/hospital"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/internal/testenv/brokers"
)

// Letter identity, tried from outside: raw clients write the DLQs the way
// foreign producers and operators do, and every distinct letter is stored
// exactly once.

// drain ingests dlq of cfg's broker into store until want letters were
// put (stored or found stored), and returns the stats.
func drain(t *testing.T, cfg adapters.Config, store hospital.Store, dlq string, want int64) hospital.IngestStats {
	t.Helper()
	hcfg := cfg
	hcfg.Kafka.ConsumerGroup = "antidote-hospital"
	hb := brokers.Open(t, hcfg)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var put atomic.Int64
	var stats hospital.IngestStats
	var err error
	done := make(chan struct{})
	go func() {
		defer close(done)
		stats, err = hospital.Ingest(ctx, hospital.IngestConfig{Subscriber: hb.LetterSubscriber(), Store: countingStore{Store: store, n: &put},
			Topics: []string{dlq}, Broker: string(cfg.Broker)})
	}()
	testenv.Eventually(t, 60*time.Second, fmt.Sprintf("%d letters put", want), func() bool { return put.Load() >= want })
	cancel()
	<-done
	if err != nil {
		t.Fatal(err)
	}
	_ = hb.Close() // commits the hospital group's offsets on Kafka
	return stats
}

func storedCount(t *testing.T, store hospital.Store, dlq string) int {
	t.Helper()
	ids, err := hospital.Select(context.Background(), store, hospital.LetterQuery{DLQTopic: dlq})
	if err != nil {
		t.Fatal(err)
	}
	return len(ids)
}

// A Kafka DLQ topic deleted and created again (the usual way to empty a
// topic) restarts its offsets: the new letters at the old letters' offsets
// are new letters, each stored.
func TestIngestKafkaTopicMadeAgain(t *testing.T) {
	cfg := brokers.Config(t, adapters.KindKafka, brokers.KafkaCluster(1))
	dlq := brokers.Topic("again_") + ".dlq"
	sc := sarama.NewConfig()
	sc.Version = sarama.V2_1_0_0
	sc.Producer.Return.Successes = true
	client, err := sarama.NewClient(cfg.Kafka.Brokers, sc)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	admin, err := sarama.NewClusterAdminFromClient(client)
	if err != nil {
		t.Fatal(err)
	}
	producer, err := sarama.NewSyncProducerFromClient(client)
	if err != nil {
		t.Fatal(err)
	}
	produce := func(batch string) {
		t.Helper()
		for i := range 4 {
			// A foreign letter: no Watermill UUID, only a body (its UUID
			// is then made of its position, the same in both lives).
			if _, _, err := producer.SendMessage(&sarama.ProducerMessage{Topic: dlq, Value: sarama.StringEncoder(fmt.Sprintf("%s-%d", batch, i))}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := admin.CreateTopic(dlq, &sarama.TopicDetail{NumPartitions: 1, ReplicationFactor: 1}, false); err != nil {
		t.Fatal(err)
	}
	produce("first")
	store := newStore(t)
	if st := drain(t, cfg, store, dlq, 4); st.Stored != 4 {
		t.Fatalf("first life: %+v, want 4 stored", st)
	}
	if err := admin.DeleteTopic(dlq); err != nil {
		t.Fatal(err)
	}
	testenv.EventuallyNil(t, 30*time.Second, func() error {
		return admin.CreateTopic(dlq, &sarama.TopicDetail{NumPartitions: 1, ReplicationFactor: 1}, false)
	})
	produce("second")
	st := drain(t, cfg, store, dlq, 4)
	if st.Stored != 4 || st.Duplicates != 0 {
		t.Errorf("second life: %+v, want its 4 letters stored, none taken for the first life's", st)
	}
	if n := storedCount(t, store, dlq); n != 8 {
		t.Errorf("%d letters stored, want 8 (4 per life of the topic)", n)
	}
}

// RabbitMQ requires no message-id: foreign letters without one are each a
// letter, even two with the same bytes; a letter redelivered after its
// ingester stored it but died before the ack is the letter stored before.
func TestIngestAMQPLettersWithoutMessageID(t *testing.T) {
	cfg := brokers.Config(t, adapters.KindAMQP)
	dlq := brokers.Topic("noid_") + ".dlq"
	conn, err := amqp.Dial(cfg.AMQP.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(dlq, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = ch.QueueDelete(dlq, false, false, false) })
	bodies := []string{"a", "b", "c", "d", "e", "same", "same"}
	for _, b := range bodies {
		if err := ch.PublishWithContext(context.Background(), "", dlq, false, false, amqp.Publishing{Body: []byte(b)}); err != nil {
			t.Fatal(err)
		}
	}
	store := newStore(t)
	st := drain(t, cfg, store, dlq, int64(len(bodies)))
	if st.Stored != int64(len(bodies)) || st.Duplicates != 0 {
		t.Errorf("%+v, want %d stored, 0 duplicates", st, len(bodies))
	}
	if n := storedCount(t, store, dlq); n != len(bodies) {
		t.Errorf("%d letters stored, want %d", n, len(bodies))
	}

	// The ingester stores a letter and dies before its ack: RabbitMQ
	// delivers it again, redelivered; it is found, not stored twice.
	if err := ch.PublishWithContext(context.Background(), "", dlq, false, false, amqp.Publishing{Body: []byte("f")}); err != nil {
		t.Fatal(err)
	}
	hb := brokers.Open(t, cfg)
	_, err = hospital.Ingest(context.Background(), hospital.IngestConfig{Subscriber: hb.LetterSubscriber(), Store: storeThenFail{store},
		Topics: []string{dlq}, Broker: string(cfg.Broker)})
	if err == nil {
		t.Fatal("the ingest whose store failed after storing returned no error")
	}
	_ = hb.Close()
	st = drain(t, cfg, store, dlq, 1)
	if st.Stored != 0 || st.Duplicates != 1 {
		t.Errorf("redelivery: %+v, want it found stored (1 duplicate)", st)
	}
	if n := storedCount(t, store, dlq); n != len(bodies)+1 {
		t.Errorf("%d letters stored, want %d", n, len(bodies)+1)
	}
}

// storeThenFail stores a letter, then fails as if the ingester died before
// its ack.
type storeThenFail struct{ hospital.Store }

func (s storeThenFail) Put(ctx context.Context, l hospital.Letter) (bool, error) {
	if _, err := s.Store.Put(ctx, l); err != nil {
		return false, err
	}
	return false, backoff.Permanent(errors.New("the ingester died before the ack"))
}

// On PostgreSQL a message can die more than once: the same UUID written to
// the DLQ twice with different errors (Watermill's PoisonQueue writes no
// failure time), and two rows with the same bytes, are four letters.
func TestIngestPostgresSecondDeath(t *testing.T) {
	cfg := brokers.Config(t, adapters.KindPostgres)
	cfg.SetDefaults()
	dlq := brokers.Topic("twice_") + ".dlq"
	pool, err := pgxpool.New(context.Background(), cfg.Postgres.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	ctx := context.Background()
	if err := adapters.EnsurePostgresTable(ctx, cfg, pool, dlq); err != nil {
		t.Fatal(err)
	}
	table := adapters.PostgresTable(cfg.Postgres, dlq)
	t.Cleanup(func() { _, _ = pool.Exec(context.Background(), `DROP TABLE IF EXISTS `+table) })
	for _, md := range []string{
		`{"reason_poisoned": "stock negative", "topic_poisoned": "orders"}`,
		`{"reason_poisoned": "price missing", "topic_poisoned": "orders"}`,
		`{"reason_poisoned": "price missing", "topic_poisoned": "orders"}`,
		`{"reason_poisoned": "price missing", "topic_poisoned": "orders"}`,
	} {
		if _, err := pool.Exec(ctx, `INSERT INTO `+table+` (uuid, payload, metadata) VALUES ($1, $2, $3)`, "order-7", []byte(`{"order":7}`), md); err != nil {
			t.Fatal(err)
		}
	}
	store := newStore(t)
	st := drain(t, cfg, store, dlq, 4)
	if st.Stored != 4 || st.Duplicates != 0 {
		t.Errorf("%+v, want 4 stored, 0 duplicates", st)
	}
	if n := storedCount(t, store, dlq); n != 4 {
		t.Errorf("%d letters stored, want 4", n)
	}
}
