package pgstore_test

import (
	"context"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/idempotency"
	"github.com/antidote-mq/antidote/pgstore"
	"github.com/antidote-mq/antidote/poison"
)

// exampleURL is the database the examples use (CI runs one there).
const exampleURL = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"

// A durable delivery count for the crash-loop guard
// (router.Config.CrashLoopGuard.Tracker): it outlives the consumer process,
// which is what tells that the same message took it down before.
func ExampleNewDeliveryTracker() {
	ctx := context.Background()
	tracker, err := pgstore.NewDeliveryTracker(ctx, pgstore.DeliveryTrackerConfig{
		URL:   exampleURL,
		Table: "antidote_example_deliveries",
	})
	if err != nil {
		panic(err)
	}
	defer tracker.Close()

	key := poison.DeliveryKeyOf(poison.Origin{Topic: "orders", Handler: "billing"}, watermill.NewUUID())
	for i := 0; i < 2; i++ {
		n, _ := tracker.Incr(ctx, key) // one delivery that killed the consumer
		fmt.Println("deliveries:", n)
	}
	_ = tracker.Forget(ctx, key) // settled: acked or dead-lettered
	n, _ := tracker.Incr(ctx, key)
	fmt.Println("after Forget:", n)
	// Output:
	// deliveries: 1
	// deliveries: 2
	// after Forget: 1
}

// Idempotency keys shared by every consumer of a queue
// (middleware.IdempotencyConfig.Store).
func ExampleNewIdempotencyStore() {
	ctx := context.Background()
	store, err := pgstore.NewIdempotencyStore(ctx, pgstore.IdempotencyStoreConfig{
		URL:   exampleURL,
		Table: "antidote_example_idempotency",
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
	_ = store.Complete(ctx, c, nil) // the handler succeeded
	dup, _ := store.Claim(ctx, key, 30*time.Second)
	fmt.Println("a later copy:", dup.Status)
	// Output:
	// first copy: claimed
	// a copy meanwhile: in_progress
	// a later copy: completed
}

// The transactional mode: the handler's write and the key's completion
// commit in one transaction. (Needs an accounts table; not run as a test.)
func ExampleIdempotencyStore_RunTx() {
	ctx := context.Background()
	store, err := pgstore.NewIdempotencyStore(ctx, pgstore.IdempotencyStoreConfig{URL: exampleURL})
	if err != nil {
		panic(err)
	}
	defer store.Close()

	c, err := store.RunTx(ctx, "payment/42", func(ctx context.Context) ([]byte, error) {
		tx, _ := pgstore.TxFromContext(ctx)
		_, err := tx.Exec(ctx, `UPDATE accounts SET balance = balance - 10 WHERE id = 1`)
		return nil, err
	})
	switch {
	case err != nil:
		fmt.Println("rolled back, retry later:", err)
	case c.Status == idempotency.StatusClaimed:
		fmt.Println("charged once")
	default:
		fmt.Println("not charged again:", c.Status) // completed before, or running elsewhere
	}
}

// Where a dead letter too large for its DLQ keeps its payload
// (middleware.DeadLetterConfig.ClaimCheck, dlq.Config.ClaimCheck).
func ExampleNewClaimCheckStore() {
	ctx := context.Background()
	store, err := pgstore.NewClaimCheckStore(ctx, pgstore.ClaimCheckStoreConfig{
		URL:   exampleURL,
		Table: "antidote_example_claim_checks",
	})
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
