package hospital_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/hospital"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/internal/testenv/brokers"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/poison"
	"github.com/antidote-mq/antidote/router"
)

// orders is a consumer whose bug can be fixed while it runs.
type orders struct {
	fixed     atomic.Bool
	mu        sync.Mutex
	processed map[string]int
}

func (o *orders) handle(m *message.Message) error {
	if !o.fixed.Load() {
		return poison.Permanent(fmt.Errorf("order %s: unknown currency", m.Payload))
	}
	o.mu.Lock()
	o.processed[m.UUID]++
	o.mu.Unlock()
	return nil
}

func (o *orders) count() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.processed)
}

// The whole loop on each broker: a consumer dead-letters a group, the
// hospital ingests it, a canary replay through the unfixed consumer
// relapses and stops (the rest stays dead), the consumer is fixed, a canary
// replay succeeds and then replays the rest: every message processed once,
// nothing left dead.
func TestCanaryReplay(t *testing.T) {
	for _, kind := range brokers.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			cfg := brokers.Config(t, kind, brokers.KafkaCluster(2), brokers.FastRedelivery())
			b := brokers.Open(t, cfg)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			svc := &orders{processed: map[string]int{}}
			r, err := router.New(router.Config{
				CrashLoopGuard: middleware.CrashLoopGuardConfig{Tracker: poison.MustNewMemoryDeliveryTracker(poison.MemoryDeliveryTrackerConfig{})},
				DeadLetter:     middleware.DeadLetterConfig{Publisher: b.Publisher, ConsumerVersion: "v1"},
			})
			if err != nil {
				t.Fatal(err)
			}
			topic := brokers.Topic("canary_")
			r.AddConsumerHandler("orders", topic, b.Subscriber, svc.handle)
			go func() { _ = r.Run(ctx) }()
			<-r.Running()

			store := newStore(t)
			hcfg := cfg
			hcfg.Kafka.ConsumerGroup = "antidote-hospital"
			hb := brokers.Open(t, hcfg)
			go func() {
				_, _ = hospital.Ingest(ctx, hospital.IngestConfig{Subscriber: hb.LetterSubscriber(), Store: store, Topics: []string{topic + ".dlq"}, Broker: string(kind)})
			}()

			const n = 12
			for i := 0; i < n; i++ {
				if err := b.Publisher.Publish(topic, message.NewMessage(fmt.Sprintf("order-%02d", i), []byte(fmt.Sprint(i)))); err != nil {
					t.Fatal(err)
				}
			}
			dead := func() []int64 {
				ids, err := hospital.Select(ctx, store, hospital.LetterQuery{})
				if err != nil {
					t.Fatal(err)
				}
				return ids
			}
			testenv.Eventually(t, 60*time.Second, "the group ingested", func() bool { return len(dead()) == n })
			page, err := store.Groups(ctx, hospital.GroupQuery{})
			if err != nil || len(page.Groups) != 1 {
				t.Fatalf("groups %+v %v, want 1", page.Groups, err)
			}
			if l, err := store.Letter(ctx, page.Groups[0].Example); err != nil || l.ConsumerVersion != "v1" {
				t.Errorf("example letter's consumer version %q (%v), want v1", l.ConsumerVersion, err)
			}

			ccfg := hospital.CanaryConfig{
				TreatConfig:  hospital.TreatConfig{Store: store, Publisher: b.Publisher, Actor: "oncall", Rate: 1000},
				Canaries:     2,
				PollInterval: 20 * time.Millisecond,
				Timeout:      90 * time.Second,
				// The test's consumer says when it processed the canaries.
				Settled: func(context.Context) (bool, error) { return svc.count() >= 2, nil },
			}
			res, err := hospital.Canary(ctx, ccfg, dead())
			if err != nil {
				t.Fatal(err)
			}
			if res.Canaries.Treated != 2 || len(res.Relapsed) == 0 || res.Rest.Treated != 0 || res.Stopped == "" {
				t.Fatalf("canary through the unfixed consumer: %+v", res)
			}
			if again := res.Relapsed[0].Again; again.Error == "" || !strings.Contains(res.Relapsed[0].String(), "unknown currency") {
				t.Errorf("relapse %s", res.Relapsed[0])
			}
			t.Logf("stopped: %s; %s", res.Stopped, res.Relapsed[0])
			// The two relapses are dead letters of their own; the ten not
			// replayed are still dead.
			testenv.Eventually(t, 30*time.Second, "12 letters dead again", func() bool { return len(dead()) == n })

			svc.fixed.Store(true)
			res, err = hospital.Canary(ctx, ccfg, dead())
			if err != nil {
				t.Fatal(err)
			}
			if res.Canaries.Treated != 2 || len(res.Relapsed) != 0 || res.Rest.Treated != n-2 || res.Stopped != "" {
				t.Fatalf("canary through the fixed consumer: %+v", res)
			}
			testenv.Eventually(t, 60*time.Second, "every order processed", func() bool { return svc.count() == n })
			if left := dead(); len(left) != 0 {
				t.Errorf("%d letters still dead", len(left))
			}
			svc.mu.Lock()
			defer svc.mu.Unlock()
			for uuid, c := range svc.processed {
				if c != 1 {
					t.Errorf("%s processed %d times", uuid, c)
				}
			}
		})
	}
}
