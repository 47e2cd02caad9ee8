package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/antidote-mq/antidote/idempotency"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/poison"
)

// Idempotency below Retry on a router: the payment whose first attempt
// fails is retried and charged once; the producer's re-send of it (a new
// message with the same Idempotency-Key) is acked without charging again.
func ExampleNewIdempotency() {
	logger := watermill.NopLogger{}
	pubSub := gochannel.NewGoChannel(gochannel.Config{}, logger)
	defer pubSub.Close()

	// Production: pgstore.NewIdempotencyStore or
	// redisstore.NewIdempotencyStore, shared by every consumer of the queue.
	store := idempotency.MustNewMemoryStore(idempotency.MemoryStoreConfig{})
	defer store.Close()
	var duplicates atomic.Int64
	idem, err := middleware.NewIdempotency(middleware.IdempotencyConfig{
		Store:       store,
		OnDuplicate: func(*message.Message, string) { duplicates.Add(1) },
	})
	if err != nil {
		panic(err)
	}
	retry, err := middleware.NewRetry(middleware.RetryConfig{InitialInterval: time.Millisecond})
	if err != nil {
		panic(err)
	}

	router, err := message.NewRouter(message.RouterConfig{}, logger)
	if err != nil {
		panic(err)
	}
	var attempts, charged atomic.Int64
	done := make(chan struct{}, 2)
	router.AddConsumerHandler("charge", "payments", pubSub, func(msg *message.Message) error {
		if attempts.Add(1) == 1 {
			return poison.Transient(errors.New("card processor timeout"))
		}
		charged.Add(1)
		return nil
	}).AddMiddleware(
		func(h message.HandlerFunc) message.HandlerFunc { // counts settled messages
			return func(msg *message.Message) ([]*message.Message, error) {
				out, err := h(msg)
				done <- struct{}{}
				return out, err
			}
		},
		retry.Middleware, idem.Middleware, middleware.Recover,
	)
	go func() { _ = router.Run(context.Background()) }()
	defer router.Close()
	<-router.Running()

	for i := 0; i < 2; i++ { // the payment, then the producer's re-send
		msg := message.NewMessage(watermill.NewUUID(), []byte(`{"payment_id":42}`))
		msg.Metadata.Set(idempotency.MetadataKey, "payment-42")
		if err := pubSub.Publish("payments", msg); err != nil {
			panic(err)
		}
		<-done
	}
	fmt.Println("attempts:", attempts.Load())
	fmt.Println("charged:", charged.Load())
	fmt.Println("duplicates skipped:", duplicates.Load())
	// Output:
	// attempts: 2
	// charged: 1
	// duplicates skipped: 1
}

// The flood guard in front of the stack: a relay re-sending the same row
// is reported naming it, and its repeats past the threshold never reach the
// handler.
func ExampleNewFloodGuard() {
	detector, err := poison.NewFloodDetector(poison.FloodDetectorConfig{Threshold: 3, Window: time.Second})
	if err != nil {
		panic(err)
	}
	guard, err := middleware.NewFloodGuard(middleware.FloodGuardConfig{
		Detector: detector,
		Drop:     true, // set DeadLetter too, to keep the repeats in the DLQ
		OnFlood: func(v poison.FloodVerdict, action middleware.FloodAction) {
			if v.Report { // once per producer per report interval
				fmt.Printf("flood from %s: %d arrivals in %s, %s\n", v.Producer, v.Arrivals, v.Window, action)
			}
		},
	})
	if err != nil {
		panic(err)
	}
	runs := 0
	h := guard.Middleware(func(*message.Message) ([]*message.Message, error) { runs++; return nil, nil })
	for i := 0; i < 10; i++ {
		msg := message.NewMessage(watermill.NewUUID(), []byte(`{"row_id":"outbox-7"}`))
		msg.Metadata.Set(idempotency.MetadataKey, "outbox-7")
		msg.Metadata.Set(poison.KeyProducer, "sweeper/host-1")
		if _, err := h(msg); err != nil {
			panic(err)
		}
	}
	fmt.Println("handler runs:", runs)
	// Output:
	// flood from sweeper/host-1: 4 arrivals in 1s, dropped
	// handler runs: 3
}
