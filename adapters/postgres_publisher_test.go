package adapters_test

import (
	"context"
	"sync"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/internal/testenv"
)

// Concurrent first publishes to a new topic race on CREATE TABLE; none may fail.
func TestPostgresConcurrentFirstPublish(t *testing.T) {
	url := testenv.PostgresURL(t)
	for round := 0; round < 5; round++ {
		b, err := adapters.Open(context.Background(), adapters.Config{Broker: adapters.KindPostgres, Postgres: adapters.PostgresConfig{URL: url}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		topic := "race_" + watermill.NewShortUUID()
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for i := 0; i < 8; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs <- b.Publisher.Publish(topic, message.NewMessage(watermill.NewUUID(), []byte("x")))
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
		}
		_ = b.Close()
	}
}

// A table dropped while the service runs (an operator "emptying" a DLQ with
// DROP TABLE) is created again by the next publish, which goes through: a
// publisher that remembered the table would fail every publish after it,
// and each dead letter would be nacked forever.
func TestPostgresTableDroppedWhileRunningIsCreatedAgain(t *testing.T) {
	url := testenv.PostgresURL(t)
	b, err := adapters.Open(context.Background(), adapters.Config{Broker: adapters.KindPostgres, Postgres: adapters.PostgresConfig{URL: url}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	topic := "dropped_" + watermill.NewShortUUID()
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	table := adapters.PostgresTable(b.Config.Postgres, topic)
	defer conn.Exec(context.Background(), "DROP TABLE IF EXISTS "+table)
	for i := 0; i < 3; i++ {
		if err := b.Publisher.Publish(topic, message.NewMessage(watermill.NewUUID(), []byte("x"))); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
		if _, err := conn.Exec(context.Background(), "DROP TABLE "+table); err != nil {
			t.Fatal(err)
		}
	}
	want := message.NewMessage("after-drop", []byte("x"))
	if err := b.Publisher.Publish(topic, want); err != nil {
		t.Fatalf("publish after the table was dropped: %v", err)
	}
	if got := receive(t, b, topic, 1); got[0].UUID != "after-drop" {
		t.Fatalf("got %s", got[0].UUID)
	}
}
