package adapters_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/poison"
	"github.com/antidote-mq/antidote/router"
)

// watermill-sql locks a batch of rows and hands them out one at a time; when
// one is not acked within the ack deadline it stops there, and then deleted
// the whole batch, rows never delivered included. Here one message early in
// the batch is nacked until well past the deadline: every message must still
// arrive and be acked, and the table must end empty.
func TestPostgresAckDeadlineLosesNothing(t *testing.T) {
	testenv.Integration(t)
	const ackDeadline = time.Second
	b := pgOpen(t, func(p *adapters.PostgresConfig) { p.AckDeadline = ackDeadline })
	topic := "ackdeadline_" + watermill.NewShortUUID()
	conn := pgConn(t, b, topic)

	const total = 20
	var msgs []*message.Message
	for i := range total {
		msgs = append(msgs, message.NewMessage(fmt.Sprintf("m%02d", i), []byte("x")))
	}
	held := msgs[1].UUID
	// One Publish: every row is in the table before the first query, so
	// they are all in its batch.
	if err := b.Publisher.Publish(topic, msgs...); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, err := b.Subscriber.Subscribe(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	acked := map[string]int{}
	var heldSince time.Time
	nacks := 0
	deadline := time.After(20 * time.Second)
	for len(acked) < total {
		select {
		case m := <-ch:
			if m.UUID == held {
				if heldSince.IsZero() {
					heldSince = time.Now()
				}
				if time.Since(heldSince) < 3*ackDeadline {
					nacks++
					m.Nack()
					continue
				}
			}
			m.Ack()
			acked[m.UUID]++
		case <-deadline:
			var missing []string
			for _, m := range msgs {
				if acked[m.UUID] == 0 {
					missing = append(missing, m.UUID)
				}
			}
			t.Fatalf("%d of %d messages acked; never delivered: %v", len(acked), total, missing)
		}
	}
	for id, n := range acked {
		if n != 1 && id != held {
			t.Errorf("%s acked %d times", id, n)
		}
	}
	if nacks < 5 {
		t.Fatalf("the held message was nacked only %d times; the test did not hold it", nacks)
	}
	pgWait(t, 10*time.Second, "the queue table is not empty after every message was acked", func() bool {
		return pgRows(t, conn, b, topic) == 0
	})
}

// The same in-batch loss on shutdown: a subscriber closed while a message of
// its batch is in flight must leave every undelivered row in the table.
func TestPostgresCloseMidBatchLosesNothing(t *testing.T) {
	b := pgOpen(t, nil)
	topic := "closebatch_" + watermill.NewShortUUID()
	conn := pgConn(t, b, topic)
	const total = 10
	var msgs []*message.Message
	for i := range total {
		msgs = append(msgs, message.NewMessage(fmt.Sprintf("m%02d", i), []byte("x")))
	}
	if err := b.Publisher.Publish(topic, msgs...); err != nil {
		t.Fatal(err)
	}
	ch, err := b.Subscriber.Subscribe(context.Background(), topic)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for range 3 {
		select {
		case m := <-ch:
			m.Ack()
			got[m.UUID] = true
		case <-time.After(30 * time.Second):
			t.Fatal("no message")
		}
	}
	select {
	case <-ch: // in flight, neither acked nor nacked
	case <-time.After(30 * time.Second):
		t.Fatal("no fourth message")
	}
	if err := b.Subscriber.Close(); err != nil {
		t.Fatal(err)
	}
	if n := pgRows(t, conn, b, topic); n != total-3 {
		t.Fatalf("after 3 acks and a close, %d rows remain; want %d", n, total-3)
	}
	b2 := pgOpen(t, nil)
	for _, m := range receive(t, b2, topic, total-3) {
		got[m.UUID] = true
	}
	if len(got) != total {
		t.Fatalf("%d distinct messages delivered; want %d", len(got), total)
	}
}

// A graceful shutdown cancels the subscription (the router does so on
// Close, as on SIGTERM): the messages of the batch that were acked stay
// acked. watermill-sql ran the batch's ack and commit under that context,
// so they rolled back and every handled message was delivered again.
func TestPostgresCancelMidBatchKeepsAcks(t *testing.T) {
	b := pgOpen(t, nil)
	topic := "cancelbatch_" + watermill.NewShortUUID()
	conn := pgConn(t, b, topic)
	const total = 10
	var msgs []*message.Message
	for i := range total {
		msgs = append(msgs, message.NewMessage(fmt.Sprintf("m%02d", i), []byte("x")))
	}
	if err := b.Publisher.Publish(topic, msgs...); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, err := b.Subscriber.Subscribe(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		select {
		case m := <-ch:
			m.Ack()
		case <-time.After(30 * time.Second):
			t.Fatal("no message")
		}
	}
	select {
	case <-ch: // in flight, neither acked nor nacked
	case <-time.After(30 * time.Second):
		t.Fatal("no fourth message")
	}
	cancel()
	deadline := time.Now().Add(30 * time.Second)
	for pgRows(t, conn, b, topic) != total-3 {
		if time.Now().After(deadline) {
			t.Fatalf("after 3 acks and a cancelled subscription, %d rows remain; want %d (the acks were rolled back)", pgRows(t, conn, b, topic), total-3)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Through the router, as reported: one message fails transiently forever and
// the breaker holds it (nacked with a pause) for longer than the ack
// deadline before dead-lettering it. Every message published is processed
// or dead-lettered, none is lost, and the queue table ends empty.
func TestPostgresAckDeadlineRouterBreakerLosesNothing(t *testing.T) {
	testenv.Integration(t)
	const ackDeadline = 2 * time.Second
	b := pgOpen(t, func(p *adapters.PostgresConfig) { p.AckDeadline = ackDeadline })
	topic := "ackrouter_" + watermill.NewShortUUID()
	dlqTopic := antidote.DLQTopic(topic)
	conn := pgConn(t, b, topic, dlqTopic)

	r, err := router.New(router.Config{CrashLoopGuard: middleware.CrashLoopGuardConfig{Tracker: poison.MustNewMemoryDeliveryTracker(poison.MemoryDeliveryTrackerConfig{})},
		CloseTimeout: 5 * time.Second,
		DeadLetter:   middleware.DeadLetterConfig{Publisher: b.Publisher},
		Retry:        middleware.RetryConfig{InitialInterval: 5 * time.Millisecond},
		Breaker:      middleware.BreakerConfig{Backoff: 200 * time.Millisecond, MaxHoldTime: 3 * ackDeadline},
	})
	if err != nil {
		t.Fatal(err)
	}
	const total = 27
	var msgs []*message.Message
	for i := range total {
		msgs = append(msgs, message.NewMessage(fmt.Sprintf("m%02d", i), []byte("ok")))
	}
	bad := msgs[2].UUID
	var mu sync.Mutex
	processed := map[string]int{}
	failures := 0
	r.AddConsumerHandler("h", topic, b.Subscriber, func(m *message.Message) error {
		mu.Lock()
		defer mu.Unlock()
		if m.UUID == bad {
			failures++
			return poison.Transient(errors.New("downstream timeout"))
		}
		processed[m.UUID]++
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runDone := make(chan error, 1)
	go func() { runDone <- r.Run(ctx) }()
	<-r.Running()
	if err := b.Publisher.Publish(topic, msgs...); err != nil {
		t.Fatal(err)
	}

	dlq, err := b.LetterSubscriber().Subscribe(ctx, dlqTopic)
	if err != nil {
		t.Fatal(err)
	}
	letters := map[string]int{}
	deadline := time.After(40 * time.Second)
	for done := false; !done; {
		select {
		case l := <-dlq:
			l.Ack()
			letters[l.UUID]++
			t.Logf("dead-lettered %s: %s", l.UUID, l.Metadata.Get(poison.KeyReason))
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			mu.Lock()
			n := len(processed)
			mu.Unlock()
			t.Fatalf("processed %d, dead-lettered %d of %d", n, len(letters), total)
		}
		mu.Lock()
		done = len(processed)+len(letters) >= total
		mu.Unlock()
	}
	cancel()
	if err := <-runDone; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, m := range msgs {
		if processed[m.UUID]+letters[m.UUID] == 0 {
			t.Errorf("%s was neither processed nor dead-lettered", m.UUID)
		}
	}
	if letters[bad] != 1 || len(letters) != 1 {
		t.Errorf("letters %v; want only %s, once", letters, bad)
	}
	if failures < 2 {
		t.Errorf("the bad message failed %d times; the breaker did not hold it", failures)
	}
	if n := pgRows(t, conn, b, topic); n != 0 {
		t.Errorf("%d rows left in the queue table", n)
	}
	t.Logf("published %d: processed %d, dead-lettered %d, %d failed runs of %s", total, len(processed), len(letters), failures, bad)
}

// slowFirstLetter delays the first letter past the message's ack deadline,
// as a DLQ publish that meets a slow database does; it gives up when the
// letter's context ends.
type slowFirstLetter struct {
	message.Publisher
	delay    time.Duration
	mu       sync.Mutex
	attempts int
	onFirst  func()
}

func (p *slowFirstLetter) Publish(topic string, msgs ...*message.Message) error {
	p.mu.Lock()
	p.attempts++
	first := p.attempts == 1
	p.mu.Unlock()
	if first {
		p.onFirst()
		ctx := msgs[0].Context()
		select {
		case <-time.After(p.delay):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return p.Publisher.Publish(topic, msgs...)
}

// The breaker's verdict on a held message comes late in a delivery whose
// ack deadline is shorter than the hold, and the letter's publish outlasts
// the deadline: the ack cannot reach the queue, which delivers the message
// again. It must end with one letter, and its redelivery must not be held
// for another MaxHoldTime (before: a second letter after another full hold,
// and so on while publishes straddled deadlines).
func TestPostgresAckDeadlineLetterOutlastingTheDeadline(t *testing.T) {
	testenv.Integration(t)
	const ackDeadline = time.Second
	b := pgOpen(t, func(p *adapters.PostgresConfig) {
		p.AckDeadline = ackDeadline
		p.ResendInterval = 50 * time.Millisecond
	})
	topic := "ackletter_" + watermill.NewShortUUID()
	dlqTopic := antidote.DLQTopic(topic)
	conn := pgConn(t, b, topic, dlqTopic)

	var mu sync.Mutex
	failures, failuresAtFirstLetter := 0, -1
	dlqPub := &slowFirstLetter{Publisher: b.Publisher, delay: ackDeadline + ackDeadline/2, onFirst: func() {
		mu.Lock()
		failuresAtFirstLetter = failures
		mu.Unlock()
	}}
	const attempts = 2
	r, err := router.New(router.Config{CrashLoopGuard: middleware.CrashLoopGuardConfig{Tracker: poison.MustNewMemoryDeliveryTracker(poison.MemoryDeliveryTrackerConfig{})},
		CloseTimeout: 5 * time.Second,
		DeadLetter:   middleware.DeadLetterConfig{Publisher: dlqPub, PublishTimeout: 10 * time.Second},
		Retry:        middleware.RetryConfig{MaxAttempts: attempts, InitialInterval: 5 * time.Millisecond},
		Breaker:      middleware.BreakerConfig{Backoff: 100 * time.Millisecond, MaxHoldTime: 2 * ackDeadline},
	})
	if err != nil {
		t.Fatal(err)
	}
	r.AddConsumerHandler("h", topic, b.Subscriber, func(*message.Message) error {
		mu.Lock()
		failures++
		mu.Unlock()
		return poison.Transient(errors.New("downstream timeout"))
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runDone := make(chan error, 1)
	go func() { runDone <- r.Run(ctx) }()
	<-r.Running()
	bad := message.NewMessage("held-"+watermill.NewShortUUID(), []byte("x"))
	if err := b.Publisher.Publish(topic, bad); err != nil {
		t.Fatal(err)
	}
	dlq, err := b.LetterSubscriber().Subscribe(ctx, dlqTopic)
	if err != nil {
		t.Fatal(err)
	}
	letters := 0
	select {
	case l := <-dlq:
		l.Ack()
		letters++
	case <-time.After(30 * time.Second):
		t.Fatal("no letter in 30s")
	}
	// The queue row is gone once the original is acked: then no further
	// letter can come.
	pgWait(t, 20*time.Second, "the held message is still in the queue table", func() bool {
		return pgRows(t, conn, b, topic) == 0
	})
	for quiet := time.After(2 * ackDeadline); quiet != nil; {
		select {
		case l := <-dlq:
			l.Ack()
			letters++
		case <-quiet:
			quiet = nil
		}
	}
	cancel()
	if err := <-runDone; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if letters != 1 {
		t.Errorf("%d letters for one message; want 1", letters)
	}
	if failuresAtFirstLetter < 0 {
		t.Fatal("no letter was attempted")
	}
	// After the verdict: the delivery it came in (at most one more run),
	// then one redelivery sent to the DLQ at once.
	if extra := failures - failuresAtFirstLetter; extra > 3*attempts {
		t.Errorf("the handler ran %d more times after the first letter was attempted; want at most %d (held again?)", extra, 3*attempts)
	}
	t.Logf("%d failed runs, %d before the first letter attempt; %d publish attempts", failures, failuresAtFirstLetter, dlqPub.attempts)
}
