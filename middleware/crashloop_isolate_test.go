package middleware

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/stretchr/testify/require"

	"github.com/antidote-mq/antidote/poison"
)

// A suspect (a delivery counted before: it was in flight when a process
// died) runs with nothing else in flight: it waits for the handlers
// running, and the others wait for it. So a process-killing message dies
// alone, and the innocents that were in flight with it once (several
// partitions, kafka.concurrency) never reach MaxDeliveries with it. Found
// by the chaos test with kafka.concurrency 16: without it, 7 healthy
// messages were quarantined as a crash loop.
func TestCrashLoopGuardRunsSuspectsAlone(t *testing.T) {
	tracker := poison.MustNewMemoryDeliveryTracker(poison.MemoryDeliveryTrackerConfig{})
	dl, err := NewDeadLetter(DeadLetterConfig{Publisher: gochannel.NewGoChannel(gochannel.Config{}, nil)})
	require.NoError(t, err)
	d, err := NewCrashLoopGuard(CrashLoopGuardConfig{Tracker: tracker, DeadLetter: dl, AlwaysCount: true})
	require.NoError(t, err)
	d.originOf = func(*message.Message) poison.Origin { return poison.Origin{Topic: guardTopic, Handler: guardHandler} }
	ctx := context.Background()
	// The suspect was delivered once before (a previous life crashed).
	_, err = tracker.Incr(ctx, poison.DeliveryKeyOf(poison.Origin{Topic: guardTopic, Handler: guardHandler}, "suspect"))
	require.NoError(t, err)

	var running, most atomic.Int32
	release := make(chan struct{})
	started := make(chan string, 8)
	handler := d.Middleware(func(m *message.Message) ([]*message.Message, error) {
		n := running.Add(1)
		defer running.Add(-1)
		for {
			if m := most.Load(); n <= m || most.CompareAndSwap(m, n) {
				break
			}
		}
		started <- m.UUID
		if m.UUID == "suspect" && n != 1 {
			t.Errorf("the suspect ran with %d handlers in flight", n)
		}
		<-release
		return nil, nil
	})
	var wg sync.WaitGroup
	run := func(id string) { wg.Go(func() { _, _ = handler(message.NewMessage(id, nil)) }) }

	// Two ordinary deliveries in flight; then the suspect arrives: it must
	// not start while they run.
	run("a")
	run("b")
	<-started
	<-started
	run("suspect")
	select {
	case id := <-started:
		t.Fatalf("%s started while two others were in flight", id)
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	wg.Wait()
	require.Equal(t, "suspect", <-started)
	require.EqualValues(t, 2, most.Load(), "the ordinary ones shared")

	// While a suspect runs, ordinary deliveries wait.
	_, err = tracker.Incr(ctx, poison.DeliveryKeyOf(poison.Origin{Topic: guardTopic, Handler: guardHandler}, "suspect2"))
	require.NoError(t, err)
	release = make(chan struct{})
	running.Store(0)
	most.Store(0)
	run("suspect2")
	require.Equal(t, "suspect2", <-started)
	run("c")
	select {
	case id := <-started:
		t.Fatalf("%s started while a suspect ran", id)
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	wg.Wait()
	require.Equal(t, "c", <-started)
	require.EqualValues(t, 1, most.Load())
}
