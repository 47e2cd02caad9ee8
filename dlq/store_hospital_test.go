package dlq_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/dlq"
	"github.com/antidote-mq/antidote/hospital"
	"github.com/antidote-mq/antidote/internal/testenv/brokers"
	"github.com/antidote-mq/antidote/internal/testenv/hospitalstore"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/poison"
	"github.com/antidote-mq/antidote/router"
)

// With a hospital store configured, the dlq commands read and treat the
// letters an ingester stored, on each broker: list, group, show, replay
// (through the still-broken handler: back in the DLQ, ingested again) and
// purge, counts matching at each step; the broker's DLQ is left to the
// ingester.
func TestHospitalOnStore(t *testing.T) {
	for _, kind := range brokers.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			cfg := brokerConfig(t, kind)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			b := brokers.Open(t, cfg)
			svc := &service{processed: map[string]int{}}
			svc.broken.Store(true)
			r, err := router.New(router.Config{CrashLoopGuard: middleware.CrashLoopGuardConfig{Tracker: poison.MustNewMemoryDeliveryTracker(poison.MemoryDeliveryTrackerConfig{})}, DeadLetter: middleware.DeadLetterConfig{Publisher: b.Publisher}})
			if err != nil {
				t.Fatal(err)
			}
			topic := brokers.Topic("onstore_")
			r.AddConsumerHandler("orders", topic, b.Subscriber, svc.handle)
			go func() { _ = r.Run(ctx) }()
			<-r.Running()

			store, _, _ := hospitalstore.New(t, "hosp_")
			icfg := cfg
			icfg.Kafka.ConsumerGroup = "antidote-hospital"
			ib := brokers.Open(t, icfg)
			go func() {
				_, _ = hospital.Ingest(ctx, hospital.IngestConfig{Subscriber: ib.LetterSubscriber(), Store: store, Topics: []string{topic + ".dlq"}, Broker: string(kind)})
			}()

			var msgs []*message.Message
			for i := 1; i <= 10; i++ {
				payload := fmt.Sprint(i)
				if i > 6 {
					payload = "panic" + payload
				}
				msgs = append(msgs, message.NewMessage(fmt.Sprintf("letter-%02d", i), []byte(payload)))
			}
			if err := b.Publisher.Publish(topic, msgs...); err != nil {
				t.Fatal(err)
			}
			h, err := dlq.Open(ctx, dlq.Config{Adapters: b.Config, Store: store, ReplayRate: 1000, Actor: "cli-test"})
			if err != nil {
				t.Fatal(err)
			}
			defer h.Close()
			list := func(f hospital.LetterQuery) []hospital.Letter {
				l, err := h.List(ctx, topic, f)
				if err != nil {
					t.Fatal(err)
				}
				return l
			}
			eventually(t, "10 letters in the store", func() (bool, string) { n := len(list(hospital.LetterQuery{})); return n == 10, fmt.Sprint(n) })
			groups, err := h.Groups(ctx, topic, hospital.LetterQuery{})
			if err != nil {
				t.Fatal(err)
			}
			if len(groups) != 2 || groups[0].Count != 6 || groups[1].Count != 4 {
				t.Fatalf("groups: %+v", groups)
			}
			if l, err := h.Show(ctx, topic, "letter-03"); err != nil || string(l.Payload) != "3" || l.Handler != "orders" {
				t.Fatalf("show: %+v %v", l, err)
			}
			if res, err := h.Replay(ctx, topic, hospital.LetterQuery{}, dlq.ReplayOptions{DryRun: true}); err != nil || res.Matched != 10 || res.Replayed != 0 {
				t.Fatalf("dry run: %+v %v", res, err)
			}
			res, err := h.Replay(ctx, topic, hospital.LetterQuery{Reasons: []string{string(poison.ReasonPermanent)}}, dlq.ReplayOptions{})
			if err != nil || res.Replayed != 6 {
				t.Fatalf("replay: %+v %v", res, err)
			}
			// Through the still-broken handler the six come back: ingested
			// again, with replay_count 1.
			eventually(t, "the six back, ingested again", func() (bool, string) {
				back := 0
				for _, l := range list(hospital.LetterQuery{}) {
					if l.Metadata[poison.KeyReplayCount] == "1" {
						back++
					}
				}
				return back == 6, fmt.Sprint(back)
			})
			res, err = h.Purge(ctx, topic, hospital.LetterQuery{Reasons: []string{string(poison.ReasonPanic)}}, false)
			if err != nil || res.Purged != 4 {
				t.Fatalf("purge: %+v %v", res, err)
			}
			if n := len(list(hospital.LetterQuery{})); n != 6 {
				t.Errorf("%d letters left, want the 6 replayed ones", n)
			}
			audit, err := store.Audit(ctx, 0, 100)
			if err != nil || len(audit) != 10 || audit[0].Actor != "cli-test" {
				t.Errorf("audit: %d entries (%v), want 10 by cli-test", len(audit), err)
			}
		})
	}
}
