package redisstore_test

import (
	"context"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/poison"
	"github.com/antidote-mq/antidote/redisstore"
)

// exampleAddr is the server the examples use (CI runs one there).
const exampleAddr = "127.0.0.1:6379"

// A durable delivery count for the crash-loop guard
// (router.Config.CrashLoopGuard.Tracker): it outlives the consumer process,
// which is what tells that the same message took it down before.
func ExampleNewDeliveryTracker() {
	ctx := context.Background()
	tracker, err := redisstore.NewDeliveryTracker(redisstore.DeliveryTrackerConfig{
		Addr: exampleAddr,
		TTL:  time.Hour,
	})
	if err != nil {
		panic(err)
	}
	defer tracker.Close()

	key := poison.DeliveryKeyOf(poison.Origin{Topic: "orders", Handler: "billing"}, watermill.NewUUID())
	for i := 0; i < 2; i++ {
		n, err := tracker.Incr(ctx, key) // one delivery that killed the consumer
		if err != nil {
			panic(err)
		}
		fmt.Println("deliveries:", n)
	}
	_ = tracker.Forget(ctx, key) // settled: acked or dead-lettered
	// Output:
	// deliveries: 1
	// deliveries: 2
}

// Idempotency keys shared by every consumer of a queue
// (middleware.IdempotencyConfig.Store).
func ExampleNewIdempotencyStore() {
	ctx := context.Background()
	store, err := redisstore.NewIdempotencyStore(redisstore.IdempotencyStoreConfig{
		Addr:      exampleAddr,
		Retention: time.Hour,
	})
	if err != nil {
		panic(err)
	}
	defer store.Close()

	key := "invoice/" + watermill.NewUUID()
	c, _ := store.Claim(ctx, key, 30*time.Second)
	fmt.Println("first copy:", c.Status)
	busy, _ := store.Claim(ctx, key, 30*time.Second)
	fmt.Println("a copy meanwhile:", busy.Status)
	_ = store.Complete(ctx, c, []byte("receipt-7")) // the handler succeeded
	dup, _ := store.Claim(ctx, key, 30*time.Second)
	fmt.Printf("a later copy: %s (%s)\n", dup.Status, dup.Result)
	// Output:
	// first copy: claimed
	// a copy meanwhile: in_progress
	// a later copy: completed (receipt-7)
}

// Where a dead letter too large for its DLQ keeps its payload
// (middleware.DeadLetterConfig.ClaimCheck, dlq.Config.ClaimCheck).
func ExampleNewClaimCheckStore() {
	ctx := context.Background()
	store, err := redisstore.NewClaimCheckStore(redisstore.ClaimCheckStoreConfig{Addr: exampleAddr})
	if err != nil {
		panic(err)
	}
	defer store.Close()

	letter := message.NewMessage(watermill.NewUUID(), []byte("a payload too large for the DLQ"))
	key, data, claimed, _ := poison.ClaimLetter(letter)
	if err := store.Put(ctx, key, data); err != nil {
		panic(err)
	}
	fmt.Printf("published: %d bytes\n", len(claimed.Payload))
	whole, err := poison.ResolveClaim(ctx, store, claimed)
	if err != nil {
		panic(err)
	}
	fmt.Printf("read back: %s\n", whole.Payload)
	_ = store.Delete(ctx, key)
	// Output:
	// published: 0 bytes
	// read back: a payload too large for the DLQ
}
