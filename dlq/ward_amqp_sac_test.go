package dlq_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/dlq"
	"github.com/antidote-mq/antidote/hospital"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/internal/testenv/brokers"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/router"
)

// With amqp.single_active_consumer (classic and quorum queues) the
// hospital works as without: the DLQ's queue has no
// x-single-active-consumer, so the ward's basic.get reads it (a quorum
// queue with it refuses basic.get), and a replay goes to the topic's queue,
// declared by the hospital's publisher with the same arguments as the
// service's, where the fixed handler takes it. Counted: 5 dead-lettered,
// listed, replayed once each, processed; the DLQ empty after.
func TestHospitalWithSingleActiveConsumer(t *testing.T) {
	for _, quorum := range []bool{false, true} {
		name := "classic"
		if quorum {
			name = "quorum"
		}
		t.Run(name, func(t *testing.T) {
			cfg := brokerConfig(t, adapters.KindAMQP)
			cfg.AMQP.SingleActiveConsumer, cfg.AMQP.Quorum = true, quorum
			topic := brokers.Topic("hospital_sac_")
			conn, err := amqp.Dial(testenv.AMQPURL(t))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if ch, err := conn.Channel(); err == nil {
					_, _ = ch.QueueDelete(topic, false, false, false)
					_, _ = ch.QueueDelete(antidote.DLQTopic(topic), false, false, false)
				}
				_ = conn.Close()
			})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			b := brokers.Open(t, cfg)
			svc := &service{processed: map[string]int{}}
			svc.broken.Store(true)
			r, err := router.New(router.Config{DisableCrashLoopGuard: true, DeadLetter: middleware.DeadLetterConfig{Publisher: b.Publisher}})
			if err != nil {
				t.Fatal(err)
			}
			r.AddConsumerHandler("orders", topic, b.Subscriber, svc.handle)
			go func() { _ = r.Run(ctx) }()
			<-r.Running()

			h, err := dlq.Open(ctx, dlq.Config{Adapters: cfg, ReplayRate: 1000})
			if err != nil {
				t.Fatal(err)
			}
			defer h.Close()
			var msgs []*message.Message
			for i := 1; i <= 5; i++ {
				msgs = append(msgs, message.NewMessage(fmt.Sprintf("sac-%d", i), []byte(fmt.Sprint(i))))
			}
			if err := b.Publisher.Publish(topic, msgs...); err != nil {
				t.Fatal(err)
			}
			list := func() []hospital.Letter {
				l, err := h.List(ctx, topic, hospital.LetterQuery{})
				if err != nil {
					t.Fatalf("list (basic.get on the DLQ): %v", err)
				}
				return l
			}
			eventually(t, "5 letters in the DLQ", func() (bool, string) { n := len(list()); return n == 5, fmt.Sprint(n) })

			svc.broken.Store(false)
			// On a quorum DLQ a replay right after a list can see fewer
			// letters than the list gave back (the ward reads the queue's
			// ready count before RabbitMQ has requeued them; the same
			// without single_active_consumer): replay until all went.
			replayed, tries := 0, 0
			eventually(t, "5 letters replayed", func() (bool, string) {
				res, err := h.Replay(ctx, topic, hospital.LetterQuery{}, dlq.ReplayOptions{})
				if err != nil || len(res.Failed) > 0 {
					t.Fatalf("replay: %+v %v", res, err)
				}
				replayed += res.Replayed
				tries++
				return replayed >= 5, fmt.Sprint(replayed)
			})
			if replayed != 5 {
				t.Fatalf("%d replays of 5 letters", replayed)
			}
			t.Logf("5 letters replayed in %d replays", tries)
			eventually(t, "the 5 replays processed", func() (bool, string) { return svc.count() == 5, fmt.Sprint(svc.count()) })
			svc.mu.Lock()
			for id, n := range svc.processed {
				if n != 1 {
					t.Errorf("%s processed %d times", id, n)
				}
			}
			svc.mu.Unlock()
			if n := len(list()); n != 0 {
				t.Fatalf("%d letters left after replaying all", n)
			}
		})
	}
}
