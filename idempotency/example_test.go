package idempotency_test

import (
	"context"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/antidote-mq/antidote/idempotency"
	"github.com/antidote-mq/antidote/poison"
)

// The life of a key: a failed attempt releases it, so the retry can claim
// it; only a success makes later copies duplicates.
func ExampleNewMemoryStore() {
	ctx := context.Background()
	store := idempotency.MustNewMemoryStore(idempotency.MemoryStoreConfig{})
	defer store.Close()

	c, _ := store.Claim(ctx, "invoice/42", 30*time.Second)
	fmt.Println("first attempt:", c.Status)
	busy, _ := store.Claim(ctx, "invoice/42", 30*time.Second)
	fmt.Println("a copy meanwhile:", busy.Status)
	_ = store.Release(ctx, c) // the handler failed

	retry, _ := store.Claim(ctx, "invoice/42", 30*time.Second)
	fmt.Println("the retry:", retry.Status)
	_ = store.Complete(ctx, retry, nil) // the handler succeeded

	dup, _ := store.Claim(ctx, "invoice/42", 30*time.Second)
	fmt.Println("a later copy:", dup.Status)
	// Output:
	// first attempt: claimed
	// a copy meanwhile: in_progress
	// the retry: claimed
	// a later copy: completed
}

// A relay that may re-send the same outbox row stamps the row's id as the
// idempotency key and names itself, so consumers skip the re-sends and a
// flood report says who sends them.
func ExampleNewPublisher() {
	pubSub := gochannel.NewGoChannel(gochannel.Config{Persistent: true}, watermill.NopLogger{})
	defer pubSub.Close()
	pub, err := idempotency.NewPublisher(pubSub, idempotency.ProducerConfig{
		Service:  "billing",
		Instance: "host-1234", // default: hostname-pid
		Key:      idempotency.FromJSONField("row_id"),
	})
	if err != nil {
		panic(err)
	}
	for i := 0; i < 2; i++ { // sent twice, as two messages
		if err := pub.Publish("invoices", message.NewMessage(watermill.NewUUID(), []byte(`{"row_id":"outbox-7"}`))); err != nil {
			panic(err)
		}
	}
	msgs, _ := pubSub.Subscribe(context.Background(), "invoices")
	for i := 0; i < 2; i++ {
		m := <-msgs
		m.Ack()
		fmt.Println(m.Metadata.Get(idempotency.MetadataKey), m.Metadata.Get(poison.KeyProducer))
	}
	// Output:
	// outbox-7 billing/host-1234
	// outbox-7 billing/host-1234
}
