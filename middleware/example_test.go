package middleware_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/poison"
)

// A handler that fails twice because its database is down, then succeeds.
func ExampleNewRetry() {
	retry, err := middleware.NewRetry(middleware.RetryConfig{
		MaxAttempts:     3,
		InitialInterval: time.Millisecond,
		OnRetry: func(attempt int, err error, _ time.Duration) {
			fmt.Printf("attempt %d failed: %v\n", attempt, err)
		},
	})
	if err != nil {
		panic(err)
	}

	calls := 0
	handler := retry.Middleware(func(msg *message.Message) ([]*message.Message, error) {
		calls++
		if calls < 3 {
			return nil, poison.Transient(errors.New("db unavailable"))
		}
		return nil, nil
	})
	msg := message.NewMessage("1", []byte(`{"user_id":1}`))
	_, err = handler(msg)
	fmt.Println("result:", err, "after", msg.Metadata.Get(poison.KeyAttempts), "attempts")

	// A permanent error is not retried.
	handler = retry.Middleware(func(*message.Message) ([]*message.Message, error) {
		return nil, poison.Invalidf("user_id missing")
	})
	_, err = handler(message.NewMessage("2", []byte(`{}`)))
	fmt.Println("result:", err)

	// Output:
	// attempt 1 failed: db unavailable
	// attempt 2 failed: db unavailable
	// result: <nil> after 3 attempts
	// result: permanent error on attempt 1: invalid message: user_id missing
}

// The standard stack on a router: DeadLetter outside Retry outside Recover.
// A record with a missing closing brace lands in "orders.dlq" with an
// envelope saying why, and the original is acked so the topic moves on.
func ExampleNewDeadLetter() {
	logger := watermill.NopLogger{}
	pubSub := gochannel.NewGoChannel(gochannel.Config{}, logger)
	defer pubSub.Close()

	dlq, err := pubSub.Subscribe(context.Background(), antidote.DLQTopic("orders"))
	if err != nil {
		panic(err)
	}

	deadLetter, err := middleware.NewDeadLetter(middleware.DeadLetterConfig{
		Publisher:     pubSub,
		ConsumerGroup: "order-sink",
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
	router.AddConsumerHandler("store-orders", "orders", pubSub, func(msg *message.Message) error {
		var order struct {
			UserID int `json:"user_id"`
		}
		if err := json.Unmarshal(msg.Payload, &order); err != nil {
			return fmt.Errorf("decode order: %w", err) // *json.SyntaxError: permanent
		}
		return nil
	}).AddMiddleware(deadLetter.Middleware, retry.Middleware, middleware.Recover)

	go func() { _ = router.Run(context.Background()) }()
	defer router.Close()
	<-router.Running()

	if err := pubSub.Publish("orders", message.NewMessage("msg-1", []byte(`{"user_id":1`))); err != nil {
		panic(err)
	}

	letter := <-dlq
	letter.Ack()
	l, err := poison.ReadEnvelope(letter)
	if err != nil {
		panic(err)
	}
	fmt.Println("uuid:", l.UUID)
	fmt.Println("payload:", string(l.Payload))
	fmt.Println("from:", l.OriginalTopic, "/", l.Handler, "/", l.ConsumerGroup)
	fmt.Println("reason:", l.Reason, "after", l.Attempts, "attempt(s)")
	fmt.Println("error:", l.Error)
	fmt.Println("error type:", l.ErrorType)

	// Output:
	// uuid: msg-1
	// payload: {"user_id":1
	// from: orders / store-orders / order-sink
	// reason: permanent after 1 attempt(s)
	// error: decode order: unexpected end of JSON input
	// error type: *json.SyntaxError
}
