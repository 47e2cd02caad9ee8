package adapters_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/poison"
	"github.com/antidote-mq/antidote/router"
)

// A queue deleted while the service runs (an operator, a policy, a vhost
// reset) must not turn the publisher's confirms into lies: every message
// published after the deletion either arrives (in the queue declared again)
// or its Publish fails. Never a nil error for a message that is nowhere.
func TestAMQPPublishAfterQueueDeletedIsNotLost(t *testing.T) {
	r := newRabbit(t)
	b := openAMQP(t, nil)
	topic := "antidote_test_deleted_" + watermill.NewShortUUID()
	r.cleanup(topic)

	// The first publish declares the queue; the adapter remembers that.
	if err := b.Publisher.Publish(topic, message.NewMessage("before", []byte("x"))); err != nil {
		t.Fatal(err)
	}
	r.deleteQueue(topic)

	const n = 5
	failed := map[string]error{}
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("after-%d", i)
		if err := b.Publisher.Publish(topic, message.NewMessage(id, []byte("x"))); err != nil {
			failed[id] = err
		}
	}
	arrived := map[string]bool{}
	for _, d := range r.collect(topic, n-len(failed), 10*time.Second) {
		arrived[uuidHeader(d)] = true
	}
	lost := 0
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("after-%d", i)
		if !arrived[id] && failed[id] == nil {
			lost++
		}
	}
	if lost > 0 {
		t.Fatalf("%d of %d messages published after the queue was deleted were confirmed (nil error) and are nowhere", lost, n)
	}
	t.Logf("%d arrived in the queue declared again, %d refused with an error", len(arrived), len(failed))
}

// The same for a batch: a queue deleted between batches, then one Publish
// of many messages.
func TestAMQPBatchAfterQueueDeletedIsNotLost(t *testing.T) {
	r := newRabbit(t)
	b := openAMQP(t, nil)
	topic := "antidote_test_deleted_batch_" + watermill.NewShortUUID()
	r.cleanup(topic)
	if err := b.Publisher.Publish(topic, message.NewMessage("before", []byte("x"))); err != nil {
		t.Fatal(err)
	}
	r.deleteQueue(topic)
	const n = 300
	var msgs []*message.Message
	for i := 0; i < n; i++ {
		msgs = append(msgs, message.NewMessage(fmt.Sprintf("m%03d", i), []byte("x")))
	}
	if err := b.Publisher.Publish(topic, msgs...); err != nil {
		t.Logf("batch refused: %v", err)
		return
	}
	got := map[string]bool{}
	for _, d := range r.collect(topic, n, 10*time.Second) {
		got[uuidHeader(d)] = true
	}
	if len(got) != n {
		t.Fatalf("Publish returned nil but only %d of %d messages are in the queue", len(got), n)
	}
}

// The delay queue of a Schedule deleted mid-run: a later Schedule must not
// be confirmed into nowhere.
func TestAMQPScheduleAfterDelayQueueDeletedIsNotLost(t *testing.T) {
	r := newRabbit(t)
	b := openAMQP(t, nil)
	topic := "antidote_test_delay_deleted_" + watermill.NewShortUUID()
	const after = 200 * time.Millisecond
	delayQueue := adapters.AMQPDelayQueue(topic, after)
	r.cleanup(topic, delayQueue)
	s := b.Scheduler()
	ctx := context.Background()
	if err := s.Schedule(ctx, topic, message.NewMessage("before", []byte("x")), after); err != nil {
		t.Fatal(err)
	}
	// The first one comes back through the delay queue.
	if got := r.collect(topic, 1, 10*time.Second); len(got) != 1 {
		t.Fatalf("first scheduled message: %d arrived", len(got))
	}
	r.deleteQueue(delayQueue)

	const n = 5
	failed := map[string]error{}
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("after-%d", i)
		if err := s.Schedule(ctx, topic, message.NewMessage(id, []byte("x")), after); err != nil {
			failed[id] = err
		}
	}
	arrived := map[string]bool{}
	for _, d := range r.collect(topic, n-len(failed), 10*time.Second) {
		arrived[uuidHeader(d)] = true
	}
	lost := 0
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("after-%d", i)
		if !arrived[id] && failed[id] == nil {
			lost++
		}
	}
	if lost > 0 {
		t.Fatalf("%d of %d messages scheduled after the delay queue was deleted were confirmed (nil error) and are nowhere", lost, n)
	}
	t.Logf("%d arrived through the delay queue declared again, %d refused with an error", len(arrived), len(failed))
}

// End to end: the DLQ queue is deleted while the consumer runs, then poison
// arrives. Every letter must end up in the DLQ: DeadLetter acks the original
// only once the letter's publish returned nil, so a confirm into nowhere
// loses the message for good.
func TestAMQPDeadLettersSurviveDeletedDLQ(t *testing.T) {
	r := newRabbit(t)
	b := openAMQP(t, nil)
	topic := "antidote_test_dlq_deleted_" + watermill.NewShortUUID()
	dlq := antidote.DLQTopic(topic)
	r.cleanup(topic, dlq)

	rt, err := router.New(router.Config{
		CrashLoopGuard: middleware.CrashLoopGuardConfig{Tracker: poison.MustNewMemoryDeliveryTracker(poison.MemoryDeliveryTrackerConfig{})},
		CloseTimeout:   5 * time.Second,
		DisableTracing: true, DisableMetrics: true,
		DeadLetter: middleware.DeadLetterConfig{Publisher: b.Publisher, FailedPublishPause: 50 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	rt.AddConsumerHandler("h", topic, b.Subscriber, func(m *message.Message) error {
		return poison.Permanent(errors.New("cannot parse"))
	})
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- rt.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-runDone })
	<-rt.Running()

	// One letter first, so the adapter has declared the DLQ and remembers it.
	if err := b.Publisher.Publish(topic, message.NewMessage("first", []byte("poison"))); err != nil {
		t.Fatal(err)
	}
	if got := r.collect(dlq, 1, 20*time.Second); len(got) != 1 {
		t.Fatalf("first letter: %d in the DLQ", len(got))
	}
	r.deleteQueue(dlq)

	const n = 5
	var msgs []*message.Message
	for i := 0; i < n; i++ {
		msgs = append(msgs, message.NewMessage(fmt.Sprintf("poison-%d", i), []byte("poison")))
	}
	if err := b.Publisher.Publish(topic, msgs...); err != nil {
		t.Fatal(err)
	}
	letters := map[string]bool{}
	deadline := time.Now().Add(30 * time.Second)
	for len(letters) < n && time.Now().Before(deadline) {
		for _, d := range r.drain(dlq) {
			letters[uuidHeader(d)] = true
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(letters) != n {
		t.Fatalf("%d of %d letters reached the DLQ after it was deleted; the rest were acked and lost", len(letters), n)
	}
}
