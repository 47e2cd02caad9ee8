// Command consumer is the README's consumer: a plain Watermill handler under
// Antidote's whole stack, on the broker ANTIDOTE_* env picks, with the
// crash-loop guard's counts in PostgreSQL. It sends itself one good and one
// poison order, so a first run shows both outcomes.
//
//	ANTIDOTE_BROKER=postgres go run ./examples/consumer
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"os"
	"os/signal"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/pgstore"
	"github.com/antidote-mq/antidote/router"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	logger := watermill.NewSlogLogger(nil)
	cfg, err := adapters.ConfigFromEnv("") // ANTIDOTE_BROKER, ANTIDOTE_POSTGRES_URL, ...
	check(err)
	b, err := adapters.Open(ctx, cfg, logger)
	check(err)
	defer b.Close()
	tracker, err := pgstore.NewDeliveryTracker(ctx, pgstore.DeliveryTrackerConfig{URL: cfg.Postgres.URL})
	check(err)
	defer tracker.Close()
	r, err := router.New(router.Config{
		Logger:         logger,
		Consumer:       b.ConsumerIdentity(), // broker, group, address: for spans, metrics, letters
		DeadLetter:     middleware.DeadLetterConfig{Publisher: b.Publisher},
		CrashLoopGuard: middleware.CrashLoopGuardConfig{Tracker: tracker},
	})
	check(err)
	r.AddConsumerHandler("store-orders", "orders", b.Subscriber, func(msg *message.Message) error {
		var order struct {
			UserID int    `json:"user_id"`
			Msg    string `json:"msg"`
		}
		if err := json.Unmarshal(msg.Payload, &order); err != nil {
			return fmt.Errorf("decode order: %w", err) // permanent: straight to orders.dlq
		}
		log.Printf("order from user %d: %s", order.UserID, order.Msg)
		return nil
	})
	for _, p := range []string{`{"user_id":10023, "msg":"Hello World"}`, `{"user_id":10024, "msg":"Hello World"`} {
		check(b.Publisher.Publish("orders", message.NewMessage(watermill.NewUUID(), []byte(p))))
	}
	check(r.Run(ctx)) // until Ctrl-C
}

func check(err error) {
	if err != nil {
		log.Fatal(err)
	}
}
