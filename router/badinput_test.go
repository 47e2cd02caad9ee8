package router_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/poison"
	"github.com/antidote-mq/antidote/router"
)

// Messages without a UUID (a foreign producer that sets none) go through the
// whole stack like any other: the valid ones are processed, each poison one
// is dead-lettered once with its reason, nothing is lost. Here they arrive
// one at a time.
func TestMissingUUIDIsSettled(t *testing.T) { testMissingUUID(t, true, 0) }

// The same with the messages in flight together, as on the memory broker
// (or several consumers sharing a durable tracker). UUID-less messages once
// shared one crash-loop count and healthy ones were quarantined; the guard
// now runs a message with neither offset nor UUID unguarded.
func TestMissingUUIDConcurrentIsSettled(t *testing.T) {
	testMissingUUID(t, false, 50*time.Millisecond)
}

func testMissingUUID(t *testing.T, oneAtATime bool, work time.Duration) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b, err := adapters.Open(ctx, adapters.Config{Broker: adapters.KindMemory}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	r, err := router.New(router.Config{CrashLoopGuard: memGuard(),
		DeadLetter: middleware.DeadLetterConfig{Publisher: b.Publisher},
		Retry:      middleware.RetryConfig{InitialInterval: time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	processed := map[string]int{}
	r.AddConsumerHandler("h", "nouuid", b.Subscriber, func(m *message.Message) error {
		if string(m.Payload[:1]) == "{" {
			return poison.Invalid(errors.New("malformed"))
		}
		time.Sleep(work) // keeps the messages in flight together
		mu.Lock()
		processed[string(m.Payload)]++
		mu.Unlock()
		return nil
	})
	letters, err := b.LetterSubscriber().Subscribe(ctx, "nouuid.dlq")
	if err != nil {
		t.Fatal(err)
	}
	lettered := map[string]poison.Reason{}
	go func() {
		for m := range letters {
			l, err := poison.ReadEnvelope(m)
			mu.Lock()
			if err != nil {
				t.Errorf("letter %q: %v", m.Payload, err)
			} else if _, dup := lettered[string(m.Payload)]; dup {
				t.Errorf("%q dead-lettered twice", m.Payload)
			} else {
				lettered[string(m.Payload)] = l.Reason
			}
			mu.Unlock()
			m.Ack()
		}
	}()
	settled := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(processed) + len(lettered)
	}
	waitSettled := func(want int) {
		deadline := time.Now().Add(10 * time.Second)
		for settled() < want && time.Now().Before(deadline) {
			time.Sleep(2 * time.Millisecond)
		}
	}
	go func() { _ = r.Run(ctx) }()
	<-r.Running()
	defer r.Close()

	const n = 10 // 5 valid, 5 poison, alternating
	for i := range n {
		payload := []byte{'a' + byte(i)}
		if i%2 == 1 {
			payload = []byte{'{', 'a' + byte(i)}
		}
		if err := b.Publisher.Publish("nouuid", message.NewMessage("", payload)); err != nil {
			t.Fatal(err)
		}
		if oneAtATime {
			waitSettled(i + 1)
		}
	}
	waitSettled(n)
	mu.Lock()
	defer mu.Unlock()
	if len(lettered) != n/2 || len(processed) != n/2 {
		t.Errorf("processed %v, dead-lettered %v; want the %d valid processed and the %d poison dead-lettered", processed, lettered, n/2, n/2)
	}
	for p, reason := range lettered {
		if p[0] != '{' || reason != poison.ReasonPermanent {
			t.Errorf("letter %q with reason %s", p, reason)
		}
	}
	for p, c := range processed {
		if c != 1 {
			t.Errorf("%q processed %d times", p, c)
		}
	}
}
