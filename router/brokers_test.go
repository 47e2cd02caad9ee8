package router_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/internal/testenv/brokers"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/poison"
	"github.com/antidote-mq/antidote/router"
)

// flakyPublisher fails every Publish while down is set.
type flakyPublisher struct {
	message.Publisher
	down     atomic.Bool
	failures atomic.Int64
}

func (p *flakyPublisher) Publish(topic string, msgs ...*message.Message) error {
	if p.down.Load() {
		p.failures.Add(1)
		return errors.New("DLQ broker unavailable (simulated)")
	}
	return p.Publisher.Publish(topic, msgs...)
}

func brokerConfig(t *testing.T, kind adapters.Kind) adapters.Config {
	return brokers.Config(t, kind, brokers.FastRedelivery())
}

// While the DLQ cannot be written, poison is nacked (redelivered), never
// acked; once it is back, each poison message is dead-lettered exactly once
// and every healthy one processed. Counted in and out, on each real broker.
func TestDLQOutageLosesNothing(t *testing.T) {
	testenv.Integration(t)
	for _, kind := range brokers.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			b := brokers.Open(t, brokerConfig(t, kind))
			dlqPub := &flakyPublisher{Publisher: b.Publisher}
			dlqPub.down.Store(true)
			var mu sync.Mutex
			processed := map[string]int{}
			topic := brokers.Topic("dlq_outage_")
			r, err := router.New(router.Config{CrashLoopGuard: memGuard(), CloseTimeout: 5 * time.Second, DeadLetter: middleware.DeadLetterConfig{Publisher: dlqPub, FailedPublishPause: 100 * time.Millisecond}})
			if err != nil {
				t.Fatal(err)
			}
			r.AddConsumerHandler("h", topic, b.Subscriber, func(m *message.Message) error {
				if string(m.Payload) == "poison" {
					return poison.Permanent(errors.New("cannot parse"))
				}
				mu.Lock()
				processed[m.UUID]++
				mu.Unlock()
				return nil
			})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			runDone := make(chan error, 1)
			go func() { runDone <- r.Run(ctx) }()
			<-r.Running()

			const total, poisonCount = 40, 4
			var msgs []*message.Message
			for i := 0; i < total; i++ {
				payload := "ok"
				if i%(total/poisonCount) == 0 {
					payload = "poison"
				}
				msgs = append(msgs, message.NewMessage(fmt.Sprintf("m%02d", i), []byte(payload)))
			}
			if err := b.Publisher.Publish(topic, msgs...); err != nil {
				t.Fatal(err)
			}
			// The outage: each poison message fails to reach the DLQ again
			// and again, which only happens if it was nacked, not acked.
			waitFor(t, 30*time.Second, func() bool { return dlqPub.failures.Load() >= 3*poisonCount })
			dlqPub.down.Store(false)

			dlq := dlqSubscriber(t, ctx, b, topic)
			letters := map[string]int{}
			deadline := time.After(60 * time.Second)
			for len(letters) < poisonCount {
				select {
				case l := <-dlq:
					l.Ack()
					letters[l.UUID]++
					if got := l.Metadata.Get(poison.KeyReason); got != string(poison.ReasonPermanent) {
						t.Errorf("%s: reason %q", l.UUID, got)
					}
				case <-deadline:
					t.Fatalf("after the outage only %d of %d poison messages reached the DLQ", len(letters), poisonCount)
				}
			}
			waitFor(t, 60*time.Second, func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(processed) == total-poisonCount
			})
			// Anything still to come would be a duplicate.
			select {
			case l := <-dlq:
				t.Errorf("%s dead-lettered twice", l.UUID)
			case <-time.After(500 * time.Millisecond):
			}
			for id, n := range letters {
				if n != 1 {
					t.Errorf("%s dead-lettered %d times", id, n)
				}
			}
			t.Logf("%s: %d failed DLQ publishes during the outage; %d letters, %d processed", kind, dlqPub.failures.Load(), len(letters), len(processed))
			cancel()
			<-runDone
		})
	}
}

// dlqSubscriber reads topic's DLQ as an operator would: on Kafka in a
// consumer group of its own, since joining the service's group would
// rebalance it, and its asynchronously committed offsets would then hand
// already settled messages over again (at-least-once, but not what these
// tests count).
func dlqSubscriber(t *testing.T, ctx context.Context, b *adapters.Broker, topic string) <-chan *message.Message {
	t.Helper()
	sub := b.LetterSubscriber()
	if b.Kind == adapters.KindKafka {
		cfg := b.Config
		cfg.Kafka.ConsumerGroup = "dlq-reader"
		reader, err := adapters.Open(ctx, cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = reader.Close() })
		sub = reader.LetterSubscriber()
	}
	ch, err := sub.Subscribe(ctx, antidote.DLQTopic(topic))
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

func waitFor(t *testing.T, limit time.Duration, cond func() bool) {
	t.Helper()
	testenv.Eventually(t, limit, "the condition", cond)
}

// The sink fails for a while during a run: with the DLQ-storm breaker nothing
// is dead-lettered for that outage, and after recovery every message is
// processed exactly as published. On each real broker.
func TestSinkOutageDeadLettersNothing(t *testing.T) {
	testenv.Integration(t)
	for _, kind := range brokers.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			b := brokers.Open(t, brokerConfig(t, kind))
			var states []string
			var mu sync.Mutex
			r, err := router.New(router.Config{CrashLoopGuard: memGuard(),
				CloseTimeout: 5 * time.Second,
				DeadLetter:   middleware.DeadLetterConfig{Publisher: b.Publisher},
				Retry:        middleware.RetryConfig{InitialInterval: 5 * time.Millisecond},
				Breaker: middleware.BreakerConfig{MinRequests: 3, OpenTimeout: 200 * time.Millisecond, Backoff: 50 * time.Millisecond,
					OnStateChange: func(_, to string) { mu.Lock(); states = append(states, to); mu.Unlock() }},
			})
			if err != nil {
				t.Fatal(err)
			}
			var down atomic.Bool
			down.Store(true)
			var failures atomic.Int64
			processed := map[string]int{}
			topic := brokers.Topic("sink_outage_")
			r.AddConsumerHandler("h", topic, b.Subscriber, func(m *message.Message) error {
				if down.Load() {
					failures.Add(1)
					return poison.Transient(errors.New("sink: connection refused"))
				}
				mu.Lock()
				processed[m.UUID]++
				mu.Unlock()
				return nil
			})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			runDone := make(chan error, 1)
			go func() { runDone <- r.Run(ctx) }()
			<-r.Running()
			const total = 100
			var msgs []*message.Message
			for i := 0; i < total; i++ {
				m := message.NewMessage(fmt.Sprintf("m%03d", i), []byte("ok"))
				m.Metadata.Set("partition_key", fmt.Sprint(i))
				msgs = append(msgs, m)
			}
			if err := b.Publisher.Publish(topic, msgs...); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 60*time.Second, func() bool { return failures.Load() >= 30 })
			time.Sleep(500 * time.Millisecond) // the outage goes on a while
			down.Store(false)
			waitFor(t, 90*time.Second, func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(processed) == total
			})
			dlq := dlqSubscriber(t, ctx, b, topic)
			select {
			case l := <-dlq:
				t.Fatalf("dead-lettered during the outage: %s (%s)", l.UUID, l.Metadata.Get(poison.KeyReason))
			case <-time.After(2 * time.Second):
			}
			mu.Lock()
			t.Logf("%s: %d failed runs during the outage, breaker states %v, %d processed", kind, failures.Load(), states, len(processed))
			mu.Unlock()
			cancel()
			<-runDone
		})
	}
}

// Non-blocking retries: a failing message moves to delayed stages while the
// messages behind it (same partition key) flow; it is processed once at the
// stage where it heals; one that never heals reaches the DLQ after the last
// stage. On each real broker, by its own delay mechanism.
func TestDelayedRetriesDoNotBlock(t *testing.T) {
	testenv.Integration(t)
	stages := []time.Duration{300 * time.Millisecond, 600 * time.Millisecond}
	for _, kind := range brokers.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			b := brokers.Open(t, brokerConfig(t, kind))
			var scheduled atomic.Int64
			cfg := router.Config{CrashLoopGuard: memGuard(),
				CloseTimeout: 5 * time.Second,
				DeadLetter:   middleware.DeadLetterConfig{Publisher: b.Publisher},
				Retry:        middleware.RetryConfig{MaxAttempts: 1},
				DelayedRetry: &middleware.DelayedRetryConfig{Stages: stages, Scheduler: b.Scheduler(),
					OnScheduled: func(int, time.Duration) { scheduled.Add(1) }},
			}
			r, err := router.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			topic := brokers.Topic("delayed_")
			var mu sync.Mutex
			var order []string
			var flakyDoneAt time.Time
			processed := map[string]int{}
			r.AddConsumerHandler("h", topic, b.Subscriber, func(m *message.Message) error {
				switch string(m.Payload) {
				case "flaky":
					if middleware.Stage(m) < 2 {
						return poison.Transient(errors.New("inventory service timeout"))
					}
				case "doomed":
					return poison.Transient(errors.New("inventory service timeout"))
				}
				mu.Lock()
				processed[m.UUID]++
				order = append(order, m.UUID)
				if m.UUID == "flaky" {
					flakyDoneAt = time.Now()
				}
				mu.Unlock()
				return nil
			})
			router.AddRetryRelays(r, cfg, topic)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			runDone := make(chan error, 1)
			go func() { runDone <- r.Run(ctx) }()
			<-r.Running()

			msgs := []*message.Message{message.NewMessage("flaky", []byte("flaky")), message.NewMessage("doomed", []byte("doomed"))}
			for i := 0; i < 20; i++ {
				msgs = append(msgs, message.NewMessage(fmt.Sprintf("ok%02d", i), []byte("ok")))
			}
			for _, m := range msgs {
				m.Metadata.Set("partition_key", "same-key") // one partition: blocking would show
			}
			start := time.Now()
			if err := b.Publisher.Publish(topic, msgs...); err != nil {
				t.Fatal(err)
			}
			dlq := dlqSubscriber(t, ctx, b, topic)
			var letter *message.Message
			select {
			case letter = <-dlq:
				letter.Ack()
			case <-time.After(60 * time.Second):
				t.Fatal("the never-healing message did not reach the DLQ")
			}
			if letter.UUID != "doomed" || letter.Metadata.Get(poison.KeyReason) != string(poison.ReasonRetriesExhausted) ||
				letter.Metadata.Get(antidote.MetadataRetryStage) != "2" {
				t.Fatalf("letter %s %v", letter.UUID, letter.Metadata)
			}
			waitFor(t, 30*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(processed) == 21 })
			mu.Lock()
			defer mu.Unlock()
			// The stages' delays were honoured (a lower bound, not a speed).
			if waited := flakyDoneAt.Sub(start); waited < stages[0]+stages[1] {
				t.Errorf("flaky processed %s after publishing, before its stages' %s", waited, stages[0]+stages[1])
			}
			if order[len(order)-1] != "flaky" {
				t.Errorf("flaky was not processed last (after the healthy messages): %v", order)
			}
			for id, n := range processed {
				if n != 1 {
					t.Errorf("%s processed %d times", id, n)
				}
			}
			if got := scheduled.Load(); got != 4 { // flaky: 2 stages, doomed: 2 stages
				t.Errorf("scheduled %d times, want 4", got)
			}
			select {
			case l := <-dlq:
				t.Errorf("unexpected letter %s", l.UUID)
			case <-time.After(300 * time.Millisecond):
			}
			t.Logf("%s: processing order %v", kind, order)
		})
	}
}

// memGuard opts the tests in to the in-memory crash-loop tracker.
func memGuard() middleware.CrashLoopGuardConfig {
	return middleware.CrashLoopGuardConfig{Tracker: poison.MustNewMemoryDeliveryTracker(poison.MemoryDeliveryTrackerConfig{})}
}
