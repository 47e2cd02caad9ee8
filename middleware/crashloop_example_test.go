package middleware_test

import (
	"context"
	"fmt"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/poison"
)

// A message that killed the consumer three times is quarantined on its
// fourth delivery, without running the handler again.
func ExampleNewCrashLoopGuard() {
	ctx := context.Background()
	logger := watermill.NopLogger{}
	pubSub := gochannel.NewGoChannel(gochannel.Config{}, logger)
	defer pubSub.Close()

	// Production: pgstore.NewDeliveryTracker or
	// redisstore.NewDeliveryTracker, so counts survive the crashes they
	// count. The memory tracker forgets them with the process.
	tracker := poison.MustNewMemoryDeliveryTracker(poison.MemoryDeliveryTrackerConfig{})
	defer tracker.Close()

	deadLetter, err := middleware.NewDeadLetter(middleware.DeadLetterConfig{Publisher: pubSub})
	if err != nil {
		panic(err)
	}
	guard, err := middleware.NewCrashLoopGuard(middleware.CrashLoopGuardConfig{
		Tracker:       tracker,
		DeadLetter:    deadLetter,
		MaxDeliveries: 3,
	})
	if err != nil {
		panic(err)
	}

	// Three earlier lives of this consumer died handling the pill: their
	// counts are in the (durable) tracker.
	pill := message.NewMessage("pill-1", []byte(`{"user_id":1,"msg":"boom"}`))
	key := poison.DeliveryKeyOf(poison.Origin{Topic: "orders", Handler: "orders"}, pill.UUID)
	for i := 0; i < 3; i++ {
		if _, err := tracker.Incr(ctx, key); err != nil {
			panic(err)
		}
	}

	dlq, err := pubSub.Subscribe(ctx, antidote.DLQTopic("orders"))
	if err != nil {
		panic(err)
	}
	router, err := message.NewRouter(message.RouterConfig{}, logger)
	if err != nil {
		panic(err)
	}
	// Outermost first: the guard, then DeadLetter, then Recover.
	router.AddMiddleware(guard.Middleware, deadLetter.Middleware, middleware.Recover)
	router.AddConsumerHandler("orders", "orders", pubSub, func(msg *message.Message) error {
		fmt.Println("handler ran") // not for the pill
		return nil
	})
	go func() { _ = router.Run(ctx) }()
	<-router.Running()
	defer router.Close()

	if err := pubSub.Publish("orders", pill); err != nil {
		panic(err)
	}
	letter := <-dlq
	letter.Ack()
	fmt.Println("reason:", letter.Metadata.Get(poison.KeyReason))
	fmt.Println("deliveries:", letter.Metadata.Get(poison.KeyAttempts))
	// Output:
	// reason: crash_loop
	// deliveries: 4
}
