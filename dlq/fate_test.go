package dlq_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/dlq"
	"github.com/antidote-mq/antidote/fingerprint"
	"github.com/antidote-mq/antidote/hospital"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/internal/testenv/brokers"
	"github.com/antidote-mq/antidote/internal/testenv/hospitalstore"
	"github.com/antidote-mq/antidote/poison"
)

// fateLetters are n dead letters of topic, as DeadLetter writes them.
func fateLetters(topic string, n int) []*message.Message {
	out := make([]*message.Message, n)
	for i := range out {
		m := message.NewMessage(watermill.NewUUID(), fmt.Appendf(nil, `{"order":%d}`, i))
		m.Metadata.Set(poison.KeyOriginalTopic, topic)
		m.Metadata.Set(poison.KeyHandler, "orders")
		m.Metadata.Set(poison.KeyReason, string(poison.ReasonPermanent))
		m.Metadata.Set(poison.KeyError, fmt.Sprintf("order %d not found", i))
		m.Metadata.Set(poison.KeyLastFailedAt, time.Now().UTC().Format(time.RFC3339Nano))
		out[i] = m
	}
	return out
}

// arrivals counts the messages that reach topic, by UUID.
type arrivals struct {
	mu     sync.Mutex
	byUUID map[string]int
}

func countArrivals(t *testing.T, cfg adapters.Config, topic string) *arrivals {
	t.Helper()
	ccfg := cfg
	ccfg.Kafka.ConsumerGroup = "fate-counter"
	b := brokers.Open(t, ccfg)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ch, err := b.Subscriber.Subscribe(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	a := &arrivals{byUUID: map[string]int{}}
	go func() {
		for m := range ch {
			a.mu.Lock()
			a.byUUID[m.UUID]++
			a.mu.Unlock()
			m.Ack()
		}
	}()
	return a
}

// total is every arrival, and distinct the UUIDs that arrived.
func (a *arrivals) count() (total, distinct int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, n := range a.byUUID {
		total += n
	}
	return total, len(a.byUUID)
}

// Every letter gets exactly one fate, replayed, purged or still dead,
// whatever runs at the same time: a replay racing a purge, and the same
// replay run twice at once, by two hospitals, on each broker's DLQ read
// directly and on the hospital store. Counted three ways: what each
// treatment says it did, what reached the letters' topic, and what is left.
func TestEveryLetterHasOneFate(t *testing.T) {
	testenv.Integration(t)
	const n = 300
	for _, mode := range []string{"kafka", "amqp", "postgres", "store"} {
		for _, race := range []string{"replay+purge", "replay+replay"} {
			t.Run(mode+"/"+race, func(t *testing.T) {
				kind := adapters.Kind(mode)
				if mode == "store" {
					kind = adapters.KindPostgres
				}
				cfg := brokerConfig(t, kind)
				b := brokers.Open(t, cfg)
				topic := brokers.Topic("fate_")
				seen := countArrivals(t, b.Config, topic)
				ctx := context.Background()
				var store hospital.Store
				if mode == "store" {
					s, _, _ := hospitalstore.New(t, "hosp_")
					for _, m := range fateLetters(topic, n) {
						if _, err := s.Put(ctx, hospital.FromMessage(ctx, m, "postgres", topic+".dlq", nil, fingerprint.Options{})); err != nil {
							t.Fatal(err)
						}
					}
					store = s
				} else if err := b.Publisher.Publish(topic+".dlq", fateLetters(topic, n)...); err != nil {
					t.Fatal(err)
				}
				open := func() *dlq.Hospital {
					h, err := dlq.Open(ctx, dlq.Config{Adapters: b.Config, Store: store, ReplayRate: 400})
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { _ = h.Close() })
					return h
				}
				if mode != "store" {
					one := open()
					eventually(t, fmt.Sprintf("%d letters in the DLQ", n), func() (bool, string) {
						l, err := one.List(ctx, topic, hospital.LetterQuery{})
						return err == nil && len(l) == n, fmt.Sprint(len(l), err)
					})
				}
				a, other := open(), open()
				var wg sync.WaitGroup
				var resA, resB dlq.Result
				var errA, errB error
				wg.Go(func() { resA, errA = a.Replay(ctx, topic, hospital.LetterQuery{}, dlq.ReplayOptions{}) })
				wg.Go(func() {
					if race == "replay+purge" {
						resB, errB = other.Purge(ctx, topic, hospital.LetterQuery{}, false)
					} else {
						resB, errB = other.Replay(ctx, topic, hospital.LetterQuery{}, dlq.ReplayOptions{})
					}
				})
				wg.Wait()
				for _, err := range []error{errA, errB} {
					// Two treatments of one Kafka DLQ: the later fences the
					// earlier, which stops with what it treated committed.
					if err != nil && !errors.Is(err, hospital.ErrTakenOver) {
						t.Fatal(err)
					}
				}
				if len(resA.Failed)+len(resB.Failed) > 0 {
					t.Fatalf("letters failed: %+v %+v", resA.Failed, resB.Failed)
				}
				replayed := resA.Replayed + resB.Replayed
				treated := replayed + resA.Purged + resB.Purged
				left, err := open().List(ctx, topic, hospital.LetterQuery{})
				if err != nil {
					t.Fatal(err)
				}
				if treated+len(left) != n {
					t.Errorf("%d treated (%d replayed, %d purged) + %d still dead = %d, want %d: a letter had two fates, or none",
						treated, replayed, resA.Purged+resB.Purged, len(left), treated+len(left), n)
				}
				testenv.Eventually(t, 60*time.Second, fmt.Sprintf("%d replays arrived", replayed), func() bool {
					total, _ := seen.count()
					return total >= replayed
				})
				if total, distinct := seen.count(); total != replayed || distinct != replayed {
					t.Errorf("%d replays arrived (%d distinct letters), want the %d the treatments replayed, each once", total, distinct, replayed)
				}
				t.Logf("A %+v err %v; B %+v err %v; %d left", resA, errA, resB, errB, len(left))
			})
		}
	}
}
