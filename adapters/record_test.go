package adapters_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/internal/testenv/brokers"
)

// A PostgreSQL queue message names its row (offset and created_at) in its
// context, also when it is resent after a nack, and the handler's metadata
// shows nothing of how it got there, even when a producer wrote a key of
// the same name into the row.
func TestPostgresMessageNamesItsRow(t *testing.T) {
	b := pgOpen(t, nil)
	topic := "record_" + watermill.NewShortUUID()
	conn := pgConn(t, b, topic)
	if err := b.Subscriber.(message.SubscribeInitializer).SubscribeInitialize(topic); err != nil {
		t.Fatal(err)
	}
	table := adapters.PostgresTable(b.Config.Postgres, topic)
	var offset int64
	var created time.Time
	if err := conn.QueryRow(context.Background(), `INSERT INTO `+table+` (uuid, payload, metadata) VALUES ('row-1', 'x', $1) RETURNING "offset", created_at`,
		`{"\u0000antidote.postgres_record": "1 2000-01-01T00:00:00Z", "k": "v"}`).Scan(&offset, &created); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ch, err := b.Subscriber.Subscribe(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	for delivery := range 2 {
		var m *message.Message
		select {
		case m = <-ch:
		case <-ctx.Done():
			t.Fatalf("delivery %d did not come", delivery+1)
		}
		rec, ok := antidote.RecordFromCtx(m.Context())
		if !ok || rec.Place != strconv.FormatInt(offset, 10) || !rec.Time.Equal(created) {
			t.Errorf("delivery %d: record %+v (%v), want offset %d at %s", delivery+1, rec, ok, offset, created)
		}
		if len(m.Metadata) != 1 || m.Metadata.Get("k") != "v" {
			t.Errorf("delivery %d: metadata %q, want only the producer's k", delivery+1, m.Metadata)
		}
		if delivery == 0 {
			m.Nack()
		} else {
			m.Ack()
		}
	}
}

// A Kafka message names its record: partition, offset and the record's
// timestamp.
func TestKafkaMessageNamesItsRecord(t *testing.T) {
	cfg := brokers.Config(t, adapters.KindKafka, brokers.KafkaCluster(1))
	b := brokers.Open(t, cfg)
	topic := brokers.Topic("record_")
	before := time.Now().Add(-time.Second)
	if err := b.Publisher.Publish(topic, message.NewMessage(watermill.NewUUID(), []byte("x"))); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ch, err := b.Subscriber.Subscribe(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-ch:
		m.Ack()
		rec, ok := antidote.RecordFromCtx(m.Context())
		if !ok || rec.Place != "0/0" || rec.Time.Before(before) || rec.Time.After(time.Now()) {
			t.Errorf("record %+v (%v), want 0/0 with the record's time", rec, ok)
		}
	case <-ctx.Done():
		t.Fatal("no message")
	}
}
