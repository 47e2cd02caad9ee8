package adapters_test

import (
	"context"
	"sync"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

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
