package router_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/antidote-mq/antidote/router"
)

func TestNewRejectsNegativeCloseTimeout(t *testing.T) {
	_, err := router.New(router.Config{CloseTimeout: -time.Second})
	if err == nil || !strings.Contains(err.Error(), "CloseTimeout") {
		t.Fatalf("err = %v", err)
	}
}

// A panicking handler must not kill the router: the panic becomes an error,
// the message is nacked and delivered again.
func TestRouterRecoversPanics(t *testing.T) {
	ps := gochannel.NewGoChannel(gochannel.Config{Persistent: true}, watermill.NopLogger{})
	r, err := router.New(router.Config{})
	if err != nil {
		t.Fatal(err)
	}
	calls := make(chan int, 10)
	n := 0
	r.AddConsumerHandler("h", "in", ps, func(msg *message.Message) error {
		n++
		calls <- n
		if n == 1 {
			panic("boom")
		}
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = r.Run(ctx) }()
	<-r.Running()
	if err := ps.Publish("in", message.NewMessage("1", []byte("x"))); err != nil {
		t.Fatal(err)
	}
	for want := 1; want <= 2; want++ {
		select {
		case got := <-calls:
			if got != want {
				t.Fatalf("call %d, want %d", got, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("handler call %d never came: the panic was not turned into a redelivery", want)
		}
	}
	cancel()
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
}
