package adapters_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
)

// The examples' pattern: batches of 100 from 4 goroutines at once, to two
// topics. Every message arrives, exactly once, in its own queue.
func TestAMQPConcurrentBatches(t *testing.T) {
	r := newRabbit(t)
	b := openAMQP(t, nil)
	topics := []string{"antidote_test_conc_a_" + watermill.NewShortUUID(), "antidote_test_conc_b_" + watermill.NewShortUUID()}
	r.cleanup(topics...)
	const goroutines, batches, per = 4, 5, 100
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < batches; i++ {
				msgs := make([]*message.Message, per)
				for j := range msgs {
					msgs[j] = message.NewMessage(fmt.Sprintf("%d-%d-%d", g, i, j), []byte("x"))
				}
				if err := b.Publisher.Publish(topics[g%2], msgs...); err != nil {
					errs <- err
					return
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for k, topic := range topics {
		want := goroutines / 2 * batches * per
		seen := map[string]int{}
		for _, d := range r.collect(topic, want, 20*time.Second) {
			seen[uuidHeader(d)]++
		}
		if len(seen) != want {
			t.Fatalf("%s: %d of %d messages", topic, len(seen), want)
		}
		for id, n := range seen {
			var g int
			if _, err := fmt.Sscanf(id, "%d-", &g); err != nil || g%2 != k || n != 1 {
				t.Fatalf("%s: %s arrived %d times", topic, id, n)
			}
		}
	}
}

// Messages sharing a UUID in one batch (a caller publishing the same
// message twice) after the queue was deleted: each copy is returned and
// published again; none is lost.
func TestAMQPDuplicateUUIDsAfterQueueDeleted(t *testing.T) {
	r := newRabbit(t)
	b := openAMQP(t, nil)
	topic := "antidote_test_dup_" + watermill.NewShortUUID()
	r.cleanup(topic)
	if err := b.Publisher.Publish(topic, message.NewMessage("first", []byte("x"))); err != nil {
		t.Fatal(err)
	}
	r.deleteQueue(topic)
	var msgs []*message.Message
	for i := 0; i < 6; i++ {
		msgs = append(msgs, message.NewMessage(fmt.Sprintf("dup-%d", i%2), []byte(fmt.Sprint(i))))
	}
	if err := b.Publisher.Publish(topic, msgs...); err != nil {
		t.Fatalf("refused (allowed, but not expected here): %v", err)
	}
	bodies := map[string]bool{}
	for _, d := range r.collect(topic, len(msgs), 10*time.Second) {
		bodies[string(d.Body)] = true
	}
	if len(bodies) != len(msgs) {
		t.Fatalf("%d of %d messages arrived", len(bodies), len(msgs))
	}
}
