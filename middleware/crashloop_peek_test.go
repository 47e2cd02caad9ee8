package middleware

import (
	"context"
	"sync"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/poison"
)

// hookTracker is a durable-looking tracker (not the memory one) whose
// counts a test can read at any moment, and which signals when a key is
// read or taken back.
type hookTracker struct {
	mu      sync.Mutex
	n       map[string]int
	reached chan string   // a key's Count or Decr was called: it waits now
	decrs   chan struct{} // a Decr lands when this is closed (a round trip)
}

func (t *hookTracker) Incr(_ context.Context, key string) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.n[key]++
	return t.n[key], nil
}

func (t *hookTracker) Forget(_ context.Context, key string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.n, key)
	return nil
}

func (t *hookTracker) Decr(_ context.Context, key string) (int, error) {
	t.reached <- key
	<-t.decrs
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.n[key] > 0 {
		t.n[key]--
	}
	return t.n[key], nil
}

func (t *hookTracker) Count(_ context.Context, key string) (int, error) {
	t.mu.Lock()
	n := t.n[key]
	t.mu.Unlock()
	t.reached <- key
	return n, nil
}

func (t *hookTracker) Close() error { return nil }

func (t *hookTracker) count(key string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.n[key]
}

// A suspect (counted before: in flight when a process died) arrives while
// another message runs, the one that will kill the process. It must not
// be counted while it waits to run alone: were it counted first and taken
// back after, the process dying in between (a round trip) would count
// against it. The chaos test with kafka.concurrency 16 found healthy
// messages quarantined as crash loops that way.
func TestCrashLoopGuardCountsASuspectOnlyWhenItRuns(t *testing.T) {
	tracker := &hookTracker{n: map[string]int{}, reached: make(chan string, 8), decrs: make(chan struct{})}
	dl, err := NewDeadLetter(DeadLetterConfig{Publisher: gochannel.NewGoChannel(gochannel.Config{}, nil)})
	require.NoError(t, err)
	d, err := NewCrashLoopGuard(CrashLoopGuardConfig{Tracker: tracker, DeadLetter: dl})
	require.NoError(t, err)
	origin := poison.Origin{Topic: guardTopic, Handler: guardHandler, Partition: 0, HasOffset: true}
	d.originOf = func(m *message.Message) poison.Origin {
		o := origin
		if m.UUID == "suspect" {
			o.Offset = 7
		}
		return o
	}
	suspectKey := poison.DeliveryKeyOf(poison.Origin{Topic: guardTopic, Handler: guardHandler, Partition: 0, Offset: 7, HasOffset: true}, "suspect")
	tracker.n[suspectKey] = 1 // in flight when the last process died

	release := make(chan struct{})
	started := make(chan string, 2)
	handler := d.Middleware(func(m *message.Message) ([]*message.Message, error) {
		started <- m.UUID
		if m.UUID == "killer" {
			<-release // it runs until it kills the process
		}
		return nil, nil
	})
	var wg sync.WaitGroup
	// Deliveries of a claim (kafka.concurrency), sent again: counted.
	deliver := func(id string) {
		m := message.NewMessage(id, nil)
		m.SetContext(antidote.WithClaimPosition(context.Background(), 0, 7, 1, true))
		_, _ = handler(m)
	}
	wg.Go(func() { deliver("killer") })
	require.Equal(t, "killer", <-started)
	for len(tracker.reached) > 0 {
		<-tracker.reached
	}
	wg.Go(func() { deliver("suspect") })
	require.Equal(t, suspectKey, <-tracker.reached)
	// The suspect waits for the killer; the process would die now.
	assert.Equal(t, 1, tracker.count(suspectKey), "the suspect was counted while it waited for the message that kills the process")
	close(tracker.decrs)
	close(release)
	wg.Wait()
	require.Equal(t, "suspect", <-started)
}
