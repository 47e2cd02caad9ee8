package dlq_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/dlq"
	"github.com/antidote-mq/antidote/hospital"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/internal/testenv/brokers"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/poison"
	"github.com/antidote-mq/antidote/router"
)

func brokerConfig(t *testing.T, kind adapters.Kind) adapters.Config {
	return brokers.Config(t, kind, brokers.KafkaCluster(2))
}

// service is a consumer with the standard stack whose handler can be broken.
type service struct {
	broken    atomic.Bool
	mu        sync.Mutex
	processed map[string]int
}

func (s *service) handle(m *message.Message) error {
	if s.broken.Load() {
		if strings.HasPrefix(string(m.Payload), "panic") {
			panic("nil map")
		}
		return poison.Permanent(fmt.Errorf("user %s not found", m.Payload))
	}
	s.mu.Lock()
	s.processed[m.UUID]++
	s.mu.Unlock()
	return nil
}

func (s *service) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.processed)
}

func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	testenv.EventuallyNil(t, 60*time.Second, func() error {
		if ok, state := cond(); !ok {
			return fmt.Errorf("%s: never happened; last: %s", what, state)
		}
		return nil
	})
}

// Dead-letter a set, list and group it, replay it through the still-broken
// handler (all back in the DLQ with replay_count 1) and through the fixed one
// (all processed), purge; counts match at each step. On each broker.
func TestHospital(t *testing.T) {
	testenv.Integration(t)
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
			topic := brokers.Topic("hospital_")
			r.AddConsumerHandler("orders", topic, b.Subscriber, svc.handle)
			go func() { _ = r.Run(ctx) }()
			<-r.Running()

			h, err := dlq.Open(ctx, dlq.Config{Adapters: cfg, ReplayRate: 1000})
			if err != nil {
				t.Fatal(err)
			}
			defer h.Close()

			var msgs []*message.Message
			for i := 1; i <= 10; i++ {
				payload := strconv.Itoa(i)
				if i > 6 {
					payload = "panic" + payload
				}
				msgs = append(msgs, message.NewMessage(fmt.Sprintf("letter-%02d", i), []byte(payload)))
			}
			if err := b.Publisher.Publish(topic, msgs...); err != nil {
				t.Fatal(err)
			}
			list := func(f hospital.LetterQuery) []hospital.Letter {
				l, err := h.List(ctx, topic, f)
				if err != nil {
					t.Fatal(err)
				}
				return l
			}
			eventually(t, "10 letters in the DLQ", func() (bool, string) { n := len(list(hospital.LetterQuery{})); return n == 10, fmt.Sprint(n) })

			// Listing is read-only: twice gives the same.
			if n := len(list(hospital.LetterQuery{})); n != 10 {
				t.Fatalf("second list: %d", n)
			}
			groups, err := h.Groups(ctx, topic, hospital.LetterQuery{})
			if err != nil || len(groups) != 2 || groups[0].Count != 6 || groups[0].Fingerprint.Reason != string(poison.ReasonPermanent) ||
				groups[0].Fingerprint.Message != "user <n> not found" || groups[1].Count != 4 || groups[1].Fingerprint.Reason != string(poison.ReasonPanic) {
				t.Fatalf("groups: %+v %v", groups, err)
			}
			if n := len(list(hospital.LetterQuery{Reasons: []string{string(poison.ReasonPanic)}})); n != 4 {
				t.Fatalf("filter by reason: %d", n)
			}
			if l, err := h.Show(ctx, topic, "letter-03"); err != nil || string(l.Payload) != "3" || l.Handler != "orders" {
				t.Fatalf("show: %+v %v", l, err)
			}

			// Dry run changes nothing.
			res, err := h.Replay(ctx, topic, hospital.LetterQuery{}, dlq.ReplayOptions{DryRun: true})
			if err != nil || res.Matched != 10 || res.Replayed != 0 {
				t.Fatalf("dry run: %+v %v", res, err)
			}
			if _, err := h.Replay(ctx, topic, hospital.LetterQuery{}, dlq.ReplayOptions{To: "elsewhere"}); err == nil {
				t.Fatal("replay to a topic not allowed was accepted")
			}

			// Replay the permanent group through the still-broken handler.
			res, err = h.Replay(ctx, topic, hospital.LetterQuery{Reasons: []string{string(poison.ReasonPermanent)}}, dlq.ReplayOptions{})
			if err != nil || res.Replayed != 6 {
				t.Fatalf("replay: %+v %v", res, err)
			}
			eventually(t, "the 6 replays back in the DLQ with replay_count 1", func() (bool, string) {
				again := 0
				all := list(hospital.LetterQuery{})
				for _, l := range all {
					if l.Metadata[poison.KeyReplayCount] == "1" && l.Reason == string(poison.ReasonPermanent) && l.Metadata[poison.KeyReplayedAt] != "" {
						again++
					}
				}
				return again == 6 && len(all) == 10, fmt.Sprintf("%d of %d", again, len(all))
			})

			// Fix the handler, replay everything: all processed, DLQ empty.
			svc.broken.Store(false)
			res, err = h.Replay(ctx, topic, hospital.LetterQuery{}, dlq.ReplayOptions{})
			if err != nil || res.Replayed != 10 {
				t.Fatalf("replay all: %+v %v", res, err)
			}
			eventually(t, "all 10 processed", func() (bool, string) { return svc.count() == 10, fmt.Sprint(svc.count()) })
			if n := len(list(hospital.LetterQuery{})); n != 0 {
				t.Fatalf("%d letters left after replaying all", n)
			}

			// Purge: three new letters, dry run, then for real.
			svc.broken.Store(true)
			if err := b.Publisher.Publish(topic, message.NewMessage("p1", []byte("x")), message.NewMessage("p2", []byte("y")), message.NewMessage("p3", []byte("z"))); err != nil {
				t.Fatal(err)
			}
			eventually(t, "3 letters", func() (bool, string) { n := len(list(hospital.LetterQuery{})); return n == 3, fmt.Sprint(n) })
			if res, err := h.Purge(ctx, topic, hospital.LetterQuery{}, true); err != nil || res.Matched != 3 || len(list(hospital.LetterQuery{})) != 3 {
				t.Fatalf("purge dry run: %+v %v", res, err)
			}
			if res, err := h.Purge(ctx, topic, hospital.LetterQuery{UUIDs: []string{"p2"}}, false); err != nil || res.Purged != 1 {
				t.Fatalf("purge one: %+v %v", res, err)
			}
			if l := list(hospital.LetterQuery{}); len(l) != 2 || l[0].UUID == "p2" || l[1].UUID == "p2" {
				t.Fatalf("after purging p2: %+v", l)
			}
			if res, err := h.Purge(ctx, topic, hospital.LetterQuery{}, false); err != nil || res.Purged != 2 {
				t.Fatalf("purge: %+v %v", res, err)
			}
			if n := len(list(hospital.LetterQuery{})); n != 0 {
				t.Fatalf("%d letters after purge", n)
			}
		})
	}
}
