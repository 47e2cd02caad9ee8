package adapters_test

import (
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/adapters"
)

// A publish abandoned after its timeout (DeadLetter, the retry relays) can
// still run when the service shuts down: Close must wait for it, not race
// with it (go test -race), and a publish after Close must fail with
// ErrPublisherClosed, never succeed or hang.
func TestCloseDuringPublish(t *testing.T) {
	brokers := map[string]func(t *testing.T) *adapters.Broker{
		"kafka": func(t *testing.T) *adapters.Broker {
			b, err := adapters.Open(t.Context(), kafkaConfig(t, "close-race"), watermill.NopLogger{})
			if err != nil {
				t.Fatal(err)
			}
			return b
		},
		"amqp":     func(t *testing.T) *adapters.Broker { return openAMQP(t, nil) },
		"postgres": func(t *testing.T) *adapters.Broker { return pgOpen(t, nil) },
	}
	for name, open := range brokers {
		t.Run(name, func(t *testing.T) {
			b := open(t)
			topic := "close_race_" + name
			if name == "postgres" {
				_ = pgConn(t, b, topic)
			}
			const publishers = 8
			var wg sync.WaitGroup
			started := make(chan struct{}, publishers)
			errs := make(chan error, publishers*50)
			for i := range publishers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for j := range 50 {
						err := b.Publisher.Publish(topic, message.NewMessage(fmt.Sprintf("%d-%d", i, j), []byte("x")))
						if j == 0 {
							started <- struct{}{}
						}
						if err != nil {
							errs <- err
							return
						}
					}
				}()
			}
			<-started // at least one publish went through before Close
			if err := b.Close(); err != nil {
				t.Fatalf("close: %v", err)
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if !errors.Is(err, adapters.ErrPublisherClosed) {
					t.Errorf("publish during close: %v (want ErrPublisherClosed)", err)
				}
			}
			if err := b.Publisher.Publish(topic, message.NewMessage("after", []byte("x"))); !errors.Is(err, adapters.ErrPublisherClosed) {
				t.Fatalf("publish after Close: %v, want ErrPublisherClosed", err)
			}
		})
	}
}
