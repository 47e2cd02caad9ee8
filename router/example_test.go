package router_test

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/poison"
	"github.com/antidote-mq/antidote/router"
)

// The whole stack over any Watermill Pub/Sub (here gochannel): a record
// the handler cannot decode lands in "orders.dlq" with an envelope saying
// why, the good one is processed, and nothing blocks the topic. A real
// service passes a durable tracker (see pgstore and redisstore) and the
// broker's publisher (adapters.Open).
func ExampleNew() {
	pubSub := gochannel.NewGoChannel(gochannel.Config{}, watermill.NopLogger{})
	defer pubSub.Close()
	letters, err := pubSub.Subscribe(context.Background(), antidote.DLQTopic("orders"))
	if err != nil {
		panic(err)
	}

	tracker := poison.MustNewMemoryDeliveryTracker(poison.MemoryDeliveryTrackerConfig{}) // tests and demos only
	defer tracker.Close()
	r, err := router.New(router.Config{
		// Who consumes, once for the whole stack (spans, metrics, letters,
		// tracker keys); with adapters.Open, b.ConsumerIdentity().
		Consumer:       antidote.ConsumerIdentity{System: "gochannel", Group: "order-sink"},
		DeadLetter:     middleware.DeadLetterConfig{Publisher: pubSub},
		Retry:          middleware.RetryConfig{InitialInterval: time.Millisecond},
		CrashLoopGuard: middleware.CrashLoopGuardConfig{Tracker: tracker},
	})
	if err != nil {
		panic(err)
	}
	processed := make(chan string, 1)
	r.AddConsumerHandler("store-orders", "orders", pubSub, func(msg *message.Message) error {
		var order struct {
			UserID int `json:"user_id"`
		}
		if err := json.Unmarshal(msg.Payload, &order); err != nil {
			return fmt.Errorf("decode order: %w", err) // *json.SyntaxError: permanent
		}
		processed <- msg.UUID
		return nil
	})
	go func() { _ = r.Run(context.Background()) }()
	defer r.Close()
	<-r.Running()

	for uuid, payload := range map[string]string{"bad": `{"user_id":1`, "good": `{"user_id":2}`} {
		if err := pubSub.Publish("orders", message.NewMessage(uuid, []byte(payload))); err != nil {
			panic(err)
		}
	}
	fmt.Println("processed:", <-processed)
	letter := <-letters
	letter.Ack()
	env, err := poison.ReadEnvelope(letter)
	if err != nil {
		panic(err)
	}
	fmt.Println("dead-lettered:", letter.UUID, env.Reason, env.Attempts, "by", env.ConsumerGroup)
	// Output:
	// processed: good
	// dead-lettered: bad permanent 1 by order-sink
}
