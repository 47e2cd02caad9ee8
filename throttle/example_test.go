package throttle_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/throttle"
)

// A producer guarded by the consumer's backlog. The backlog here is a
// number the example sets; in production it comes from the broker
// (adapters.OpenLagSource).
func ExampleNewBackpressurePublisher() {
	pubSub := gochannel.NewGoChannel(gochannel.Config{Persistent: true}, watermill.NopLogger{})
	var backlog atomic.Int64
	backlog.Store(1500) // the consumer has stalled

	pub, err := throttle.NewBackpressurePublisher(throttle.BackpressureConfig{
		Publisher:     pubSub,
		Source:        throttle.LagSourceFunc(func(context.Context, string) (int64, error) { return backlog.Load(), nil }),
		HighWatermark: 1000,
		LowWatermark:  500,
		Mode:          throttle.Reject,
		PollInterval:  10 * time.Millisecond,
	})
	if err != nil {
		panic(err)
	}
	defer pub.Close() // closes pubSub too

	err = pub.Publish("orders", message.NewMessage("1", []byte(`{"user_id":1}`)))
	var bp *throttle.BackpressureError
	if errors.Is(err, throttle.ErrBackpressure) && errors.As(err, &bp) {
		fmt.Printf("refused: backlog %d, resumes at or below %d\n", bp.Backlog, bp.LowWatermark)
	}

	backlog.Store(400) // the consumer caught up
	for {
		if n, _ := pub.Backlog("orders"); n == 400 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	fmt.Println("published:", pub.Publish("orders", message.NewMessage("2", []byte(`{"user_id":2}`))) == nil)
	// Output:
	// refused: backlog 1500, resumes at or below 500
	// published: true
}

// Wiring for a real broker: the lag source reads the backlog the way the
// adapter's subscriber leaves it (Kafka consumer-group lag, RabbitMQ queue
// depth, PostgreSQL queue rows). Blocked producers wait for the consumer.
func ExampleNewBackpressurePublisher_broker() {
	ctx := context.Background()
	b, err := adapters.Open(ctx, adapters.Config{Broker: adapters.KindKafka, Kafka: adapters.KafkaConfig{Embedded: true}}, nil)
	if err != nil {
		panic(err)
	}
	defer b.Close()
	// b.Config, not the config passed to Open: it holds the embedded
	// broker's address.
	lag, err := adapters.OpenLagSource(ctx, b.Config)
	if err != nil {
		panic(err)
	}
	defer lag.Close()
	pub, err := throttle.NewBackpressurePublisher(throttle.BackpressureConfig{
		Publisher:     b.Publisher,
		Source:        lag,
		HighWatermark: 50_000,
		BlockTimeout:  30 * time.Second,
	})
	if err != nil {
		panic(err)
	}
	defer pub.Close()

	msg := message.NewMessage(watermill.NewUUID(), []byte(`{"user_id":1,"msg":"Hello World"}`))
	msg.SetContext(ctx) // a blocked Publish ends with this context
	if err := pub.Publish("hello", msg); err != nil {
		panic(err)
	}
}

// One flooding key waits; the others do not.
func ExampleNewKeyedLimiter() {
	lim, err := throttle.NewKeyedLimiter(throttle.KeyedConfig{Rate: 1}) // 1/s per key, burst 1
	if err != nil {
		panic(err)
	}
	try := func(key string) {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		fmt.Printf("%s: %v\n", key, lim.Wait(ctx, key) == nil)
	}
	try("producer-a")
	try("producer-a") // its next token is a second away
	try("producer-b")
	// Output:
	// producer-a: true
	// producer-a: false
	// producer-b: true
}

// The adaptive limiter around calls to a downstream: report whether each
// call failed from overload (a timeout, a 429), not from bad input.
func ExampleNewAdaptiveLimiter() {
	lim, err := throttle.NewAdaptiveLimiter(throttle.AdaptiveConfig{InitialLimit: 8, MaxLimit: 64})
	if err != nil {
		panic(err)
	}
	callDownstream := func(context.Context) error { return nil }

	ctx := context.Background()
	done, err := lim.Acquire(ctx) // waits while Limit calls are in flight
	if err != nil {
		panic(err) // only when ctx ends
	}
	err = callDownstream(ctx)
	done(errors.Is(err, context.DeadlineExceeded))

	fmt.Println("limit:", lim.Limit())
	// Output:
	// limit: 8
}
