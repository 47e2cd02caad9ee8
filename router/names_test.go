package router_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/internal/testenv/brokers"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/router"
	"github.com/antidote-mq/antidote/telemetry"
)

// A name that cannot exist on the broker is refused when the router starts,
// naming it and the rule: the topic, its DLQ topic (also a custom one, also
// through a telemetry decorator), its retry stages, and a DLQ topic that is
// the topic itself. At run time each would have turned every failure into
// a loop.
func TestRouterRefusesNamesThatCannotExistAtStart(t *testing.T) {
	b := brokers.Open(t, brokerConfig(t, adapters.KindKafka))
	traced, err := telemetry.NewPublisher(b.Publisher, telemetry.PublisherConfig{})
	if err != nil {
		t.Fatal(err)
	}
	long := "n" + watermill.NewShortUUID()
	long += strings.Repeat("x", 245-len(long)) // the longest topic whose DLQ topic fits
	cases := []struct {
		name  string
		topic string
		cfg   router.Config
		want  error
		says  string
	}{
		{"topic over 249", strings.Repeat("y", 250), router.Config{CrashLoopGuard: memGuard(), DeadLetter: middleware.DeadLetterConfig{Publisher: b.Publisher}}, antidote.ErrInvalidTopic, "249"},
		{"its DLQ topic over 249", long + "z", router.Config{CrashLoopGuard: memGuard(), DeadLetter: middleware.DeadLetterConfig{Publisher: b.Publisher}}, antidote.ErrInvalidTopic, "249"},
		{"custom DLQ topic", brokers.Topic("orders_"), router.Config{CrashLoopGuard: memGuard(), DeadLetter: middleware.DeadLetterConfig{Publisher: traced,
			Topic: func(string) string { return "dead letters" }}}, antidote.ErrInvalidTopic, "dead letters"},
		{"retry stage", long, router.Config{CrashLoopGuard: memGuard(), DeadLetter: middleware.DeadLetterConfig{Publisher: b.Publisher},
			DelayedRetry: &middleware.DelayedRetryConfig{Stages: []time.Duration{10 * time.Second}, Scheduler: b.Scheduler()}}, antidote.ErrInvalidTopic, ".retry.10s"},
		{"DLQ is the topic", brokers.Topic("loop_"), router.Config{CrashLoopGuard: memGuard(), DeadLetter: middleware.DeadLetterConfig{Publisher: b.Publisher,
			Topic: func(s string) string { return s }}}, middleware.ErrDeadLetterLoop, "loop_"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.CloseTimeout = time.Second
			r, err := router.New(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			r.AddConsumerHandler("h", tc.topic, b.Subscriber, func(*message.Message) error { return nil })
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err = r.Run(ctx)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("Run = %v, want %v naming %q", err, tc.want, tc.says)
			}
		})
	}
	// The longest topic whose names all fit runs.
	r, err := router.New(router.Config{CrashLoopGuard: memGuard(), CloseTimeout: time.Second, DeadLetter: middleware.DeadLetterConfig{Publisher: b.Publisher}})
	if err != nil {
		t.Fatal(err)
	}
	r.AddConsumerHandler("h", long, b.Subscriber, func(*message.Message) error { return nil })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	select {
	case <-r.Running():
	case err := <-done:
		t.Fatalf("a topic of %d characters: %v", len(long), err)
	}
	cancel()
	<-done
}
