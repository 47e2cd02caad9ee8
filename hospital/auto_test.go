package hospital_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/hospital"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/internal/testenv/brokers"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/poison"
	"github.com/antidote-mq/antidote/router"
)

// The automatic mode on PostgreSQL: nothing is replayed while the consumer
// runs the version that dead-lettered the group; once a new version runs
// (fixed), the group's canaries go, then the rest, all processed; a second
// pass at that version replays nothing, even though a letter of the group
// is dead again.
func TestAutoCanary(t *testing.T) {
	cfg := brokers.Config(t, adapters.KindPostgres, brokers.FastRedelivery())
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
	topic := brokers.Topic("auto_")
	r.AddConsumerHandler("orders", topic, b.Subscriber, svc.handle)
	go func() { _ = r.Run(ctx) }()
	<-r.Running()
	store := newStore(t)
	go func() {
		_, _ = hospital.Ingest(ctx, hospital.IngestConfig{Subscriber: b.LetterSubscriber(), Store: store, Topics: []string{topic + ".dlq"}, Broker: "postgres"})
	}()
	const n = 6
	for i := 0; i < n; i++ {
		if err := b.Publisher.Publish(topic, message.NewMessage(fmt.Sprintf("auto-%d", i), []byte(fmt.Sprint(i)))); err != nil {
			t.Fatal(err)
		}
	}
	dead := func() int {
		ids, err := hospital.Select(ctx, store, hospital.LetterQuery{})
		if err != nil {
			t.Fatal(err)
		}
		return len(ids)
	}
	testenv.Eventually(t, 60*time.Second, "the group ingested", func() bool { return dead() == n })

	running := "v1"
	acfg := hospital.AutoCanaryConfig{
		CanaryConfig: hospital.CanaryConfig{
			TreatConfig: hospital.TreatConfig{Store: store, Publisher: b.Publisher, Actor: "auto", Rate: 1000},
			Canaries:    1, PollInterval: 20 * time.Millisecond, Timeout: 60 * time.Second,
			Settled: func(context.Context) (bool, error) { return svc.count() >= 1, nil },
		},
		Version: func(context.Context, string) (string, error) { return running, nil },
	}
	out, err := hospital.AutoCanaryOnce(ctx, acfg)
	if err != nil || len(out) != 0 || dead() != n {
		t.Fatalf("at the version that failed: %+v %v, %d dead; want nothing done", out, err, dead())
	}

	svc.fixed.Store(true)
	running = "v2"
	out, err = hospital.AutoCanaryOnce(ctx, acfg)
	if err != nil || len(out) != 1 || out[0].Version != "v2" || out[0].Result.Stopped != "" || out[0].Outcome() != fmt.Sprintf("replayed %d", n) {
		t.Fatalf("at the new version: %+v %v", out, err)
	}
	testenv.Eventually(t, 60*time.Second, "every order processed", func() bool { return svc.count() == n })

	// A letter of the same group dead again (the fix is partial): the
	// group was canaried at v2 already, so it waits for v3.
	svc.fixed.Store(false)
	if err := b.Publisher.Publish(topic, message.NewMessage("auto-late", []byte("7"))); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 60*time.Second, "the late letter ingested", func() bool { return dead() == 1 })
	if out, err := hospital.AutoCanaryOnce(ctx, acfg); err != nil || len(out) != 0 {
		t.Errorf("second pass at v2: %+v %v, want nothing", out, err)
	}
	if dead() != 1 {
		t.Errorf("%d dead, want the late letter left", dead())
	}
}
