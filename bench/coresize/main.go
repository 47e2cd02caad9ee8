// Command coresize is the smallest real service on Antidote's core: the
// standard stack (router.New) over Watermill's gochannel, no broker client.
// docs/benchmarks.md reports its binary size; it runs one good and one bad
// message through the stack and exits.
//
//	go build -o /tmp/coresize ./bench/coresize && ls -l /tmp/coresize
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/poison"
	"github.com/antidote-mq/antidote/router"
)

func main() {
	pubSub := gochannel.NewGoChannel(gochannel.Config{}, watermill.NopLogger{})
	defer pubSub.Close()
	letters, err := pubSub.Subscribe(context.Background(), "orders.dlq")
	if err != nil {
		fail(err)
	}
	tracker := poison.MustNewMemoryDeliveryTracker(poison.MemoryDeliveryTrackerConfig{})
	defer tracker.Close()
	r, err := router.New(router.Config{
		DeadLetter:     middleware.DeadLetterConfig{Publisher: pubSub},
		CrashLoopGuard: middleware.CrashLoopGuardConfig{Tracker: tracker},
	})
	if err != nil {
		fail(err)
	}
	done := make(chan struct{})
	r.AddConsumerHandler("orders", "orders", pubSub, func(msg *message.Message) error {
		var v struct{ ID int }
		if err := json.Unmarshal(msg.Payload, &v); err != nil {
			return err
		}
		close(done)
		return nil
	})
	go func() { _ = r.Run(context.Background()) }()
	<-r.Running()
	_ = pubSub.Publish("orders", message.NewMessage("bad", []byte("{")), message.NewMessage("good", []byte(`{"ID":1}`)))
	<-done
	letter := <-letters
	letter.Ack()
	fmt.Println("dead-lettered", letter.UUID, letter.Metadata.Get(poison.KeyReason))
	_ = r.Close()
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}
