package middleware_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/internal/testenv/brokers"
	"github.com/antidote-mq/antidote/middleware"
)

func throttleBrokerConfig(t *testing.T, kind adapters.Kind) adapters.Config {
	return brokers.Config(t, kind)
}

// 600 messages at 200/s with a burst of 1 take no less than 3s (599
// intervals of 5ms: 2.995s, 5% allowed for clock reads) and not grossly
// more, through a Watermill router with middleware.Throttle on each real
// broker, measured from the first handled message to the last, and every
// message is handled. The messages are published before the router starts,
// so the broker is never what limits the rate. (Kafka runs its 4 partitions
// concurrently: the limit holds across them.)
func TestThrottleRateOnBrokers(t *testing.T) {
	if testing.Short() {
		t.Skip("about 5s per broker")
	}
	const total, rate = 600, 200.0
	want := time.Duration(float64(total-1) / rate * float64(time.Second))
	for _, kind := range brokers.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			ctx := context.Background()
			b := brokers.Open(t, throttleBrokerConfig(t, kind))
			topic := brokers.Topic("throttle_rate_")
			msgs := make([]*message.Message, total)
			for i := range msgs {
				msgs[i] = message.NewMessage(watermill.NewUUID(), []byte(`{"user_id":1,"msg":"Hello World"}`))
			}
			for i := 0; i < total; i += 100 {
				if err := b.Publisher.Publish(topic, msgs[i:i+100]...); err != nil {
					t.Fatal(err)
				}
			}

			var mu sync.Mutex
			handled := map[string]int{}
			var first, last time.Time
			var waited time.Duration
			th, err := middleware.NewThrottle(middleware.ThrottleConfig{
				Rate: rate, Burst: 1,
				OnWait: func(_ *message.Message, d time.Duration) {
					mu.Lock()
					waited += d
					mu.Unlock()
				},
			})
			if err != nil {
				t.Fatal(err)
			}
			r, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, watermill.NopLogger{})
			if err != nil {
				t.Fatal(err)
			}
			r.AddConsumerHandler("rate", topic, b.Subscriber, func(m *message.Message) error {
				now := time.Now()
				mu.Lock()
				defer mu.Unlock()
				if first.IsZero() {
					first = now
				}
				last = now
				handled[m.UUID]++
				return nil
			}).AddMiddleware(th.Middleware)
			done := make(chan struct{})
			go func() { defer close(done); _ = r.Run(ctx) }()
			defer func() { _ = r.Close(); <-done }()
			<-r.Running()

			testenv.EventuallyNil(t, 60*time.Second, func() error {
				mu.Lock()
				n := len(handled)
				mu.Unlock()
				if n != total {
					return fmt.Errorf("%d of %d messages handled", n, total)
				}
				return nil
			})
			mu.Lock()
			defer mu.Unlock()
			calls := 0
			for _, c := range handled {
				calls += c
			}
			took := last.Sub(first)
			t.Logf("%s: %d messages (%d handler calls) in %s = %.1f/s (limit %.0f/s, burst 1; expected %s); %s waited in the throttle in all",
				kind, len(handled), calls, took.Round(time.Millisecond), float64(calls-1)/took.Seconds(), rate, want, waited.Round(time.Millisecond))
			// A rate limit promises a floor on the time: a loaded machine
			// can only make the run slower, so the floor is tight and the
			// ceiling loose (it catches a limiter at a fraction of its
			// rate, not a busy CI machine).
			if took < want*95/100 || took > want*18/10 {
				t.Errorf("%d messages at %.0f/s took %s; want at least %s and at most 1.8 times that", total, rate, took, want*95/100)
			}
		})
	}
}
