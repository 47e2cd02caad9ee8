package router_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/idempotency"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/poison"
	"github.com/antidote-mq/antidote/router"
)

func TestNewValidates(t *testing.T) {
	ps := gochannel.NewGoChannel(gochannel.Config{}, watermill.NopLogger{})
	for _, tc := range []struct {
		cfg  router.Config
		want string
	}{
		{router.Config{CrashLoopGuard: memGuard()}, "DeadLetter.Publisher"},
		{router.Config{DeadLetter: middleware.DeadLetterConfig{Publisher: ps}}, "CrashLoopGuard.Tracker is nil; pass a durable tracker"},
		{router.Config{CrashLoopGuard: memGuard(), CloseTimeout: -time.Second, DeadLetter: middleware.DeadLetterConfig{Publisher: ps}}, "CloseTimeout"},
		{router.Config{CrashLoopGuard: memGuard(), DeadLetter: middleware.DeadLetterConfig{Publisher: ps}, Retry: middleware.RetryConfig{MaxAttempts: -1}}, "MaxAttempts"},
		// An optional piece that is set is on, and must be usable.
		{router.Config{CrashLoopGuard: memGuard(), DeadLetter: middleware.DeadLetterConfig{Publisher: ps}, Throttle: &middleware.ThrottleConfig{}}, "Throttle is set but limits nothing"},
		{router.Config{CrashLoopGuard: memGuard(), DeadLetter: middleware.DeadLetterConfig{Publisher: ps}, Idempotency: &middleware.IdempotencyConfig{}}, "IdempotencyConfig.Store is nil"},
		{router.Config{CrashLoopGuard: memGuard(), DeadLetter: middleware.DeadLetterConfig{Publisher: ps}, DelayedRetry: &middleware.DelayedRetryConfig{}}, "DelayedRetryConfig.Stages is empty"},
	} {
		if _, err := router.New(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("err = %v, want mention of %s", err, tc.want)
		}
	}
}

// New fills defaults and wires its hooks into copies: the optional
// pieces' configs the caller passed are not modified, so one config can
// build several routers.
func TestNewLeavesCallersConfigsAlone(t *testing.T) {
	ps := gochannel.NewGoChannel(gochannel.Config{}, watermill.NopLogger{})
	idem := &middleware.IdempotencyConfig{Store: idempotency.MustNewMemoryStore(idempotency.MemoryStoreConfig{})}
	throttle := &middleware.ThrottleConfig{Rate: 1000}
	flood := &middleware.FloodGuardConfig{}
	cfg := router.Config{CrashLoopGuard: memGuard(), DeadLetter: middleware.DeadLetterConfig{Publisher: ps},
		Idempotency: idem, Throttle: throttle, FloodGuard: flood}
	for range 2 {
		if _, err := router.New(cfg); err != nil {
			t.Fatal(err)
		}
	}
	if idem.OnDuplicate != nil || idem.Logger != nil || throttle.OnWait != nil || throttle.Burst != 0 || flood.Logger != nil {
		t.Fatalf("New modified the caller's configs: %+v %+v %+v", *idem, *throttle, *flood)
	}
}

// The whole stack on a plain handler: every kind of poison ends in the DLQ
// once with its reason, the transient failure is retried and processed, the
// healthy messages are processed, nothing is lost.
func TestStackSettlesEveryKindOfPoison(t *testing.T) {
	ps := gochannel.NewGoChannel(gochannel.Config{Persistent: true}, watermill.NopLogger{})
	var retries int
	var mu sync.Mutex
	r, err := router.New(router.Config{CrashLoopGuard: memGuard(),
		DeadLetter: middleware.DeadLetterConfig{Publisher: ps, ConsumerGroup: "g"},
		Breaker:    middleware.BreakerConfig{Backoff: time.Millisecond, MaxHoldTime: time.Nanosecond},
		Retry: middleware.RetryConfig{InitialInterval: time.Millisecond, OnRetry: func(int, error, time.Duration) {
			mu.Lock()
			retries++
			mu.Unlock()
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	processed := make(chan string, 100)
	failures := map[string]int{}
	r.AddConsumerHandler("hello", "in", ps, func(m *message.Message) error {
		switch string(m.Payload) {
		case "malformed":
			return poison.Permanent(errors.New("bad json"))
		case "panic":
			panic("handler bug")
		case "flaky":
			failures[m.UUID]++
			if failures[m.UUID] <= 2 {
				return errors.New("database timeout")
			}
		case "always-transient":
			return poison.Transient(errors.New("still down"))
		}
		processed <- m.UUID
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = r.Run(ctx) }()
	<-r.Running()
	dlq, err := ps.Subscribe(ctx, "in.dlq")
	if err != nil {
		t.Fatal(err)
	}
	undecodable := message.NewMessage("undecodable", []byte("raw"))
	undecodable.Metadata.Set(antidote.MetadataUndecodable, "bad header")
	msgs := []*message.Message{
		message.NewMessage("ok1", []byte("fine")),
		message.NewMessage("malformed", []byte("malformed")),
		message.NewMessage("panic", []byte("panic")),
		message.NewMessage("flaky", []byte("flaky")),
		message.NewMessage("exhausted", []byte("always-transient")),
		undecodable,
		message.NewMessage("ok2", []byte("fine")),
	}
	if err := ps.Publish("in", msgs...); err != nil {
		t.Fatal(err)
	}
	wantDLQ := map[string]poison.Reason{
		"malformed": poison.ReasonPermanent, "panic": poison.ReasonPanic,
		"exhausted": poison.ReasonRetriesExhausted, "undecodable": poison.ReasonUndecodable,
	}
	gotDLQ := map[string]poison.Letter{}
	gotOK := map[string]bool{}
	deadline := time.After(20 * time.Second)
	for len(gotDLQ) < len(wantDLQ) || len(gotOK) < 3 {
		select {
		case l := <-dlq:
			l.Ack()
			letter, err := poison.ReadEnvelope(l)
			if err != nil {
				t.Fatal(err)
			}
			if _, dup := gotDLQ[l.UUID]; dup {
				t.Fatalf("%s dead-lettered twice", l.UUID)
			}
			gotDLQ[l.UUID] = letter
		case id := <-processed:
			gotOK[id] = true
		case <-deadline:
			t.Fatalf("not settled: dlq %v processed %v", gotDLQ, gotOK)
		}
	}
	for id, reason := range wantDLQ {
		if gotDLQ[id].Reason != reason {
			t.Errorf("%s: reason %q, want %q", id, gotDLQ[id].Reason, reason)
		}
		if gotDLQ[id].Handler != "hello" || gotDLQ[id].OriginalTopic != "in" || gotDLQ[id].ConsumerGroup != "g" {
			t.Errorf("%s: origin %+v", id, gotDLQ[id])
		}
	}
	if gotDLQ["panic"].Stack == "" {
		t.Error("panic letter has no stack")
	}
	if gotDLQ["exhausted"].Attempts != 3 || gotDLQ["malformed"].Attempts != 1 {
		t.Errorf("attempts: exhausted %d malformed %d", gotDLQ["exhausted"].Attempts, gotDLQ["malformed"].Attempts)
	}
	for _, id := range []string{"ok1", "ok2", "flaky"} {
		if !gotOK[id] {
			t.Errorf("%s not processed", id)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	// flaky: 2 retries. exhausted fails transiently in a quiet stream, so
	// the breaker cannot tell it from an outage: it is held (nacked) once,
	// and the next delivery is past MaxHoldTime: 2 deliveries, 2 retries
	// each. Permanent and panic: none.
	if want := 2 + 2*2; retries != want {
		t.Errorf("retries = %d, want %d", retries, want)
	}
}
