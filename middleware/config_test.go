package middleware_test

import (
	"context"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/antidote-mq/antidote/idempotency"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/poison"
	"github.com/antidote-mq/antidote/throttle"
)

func TestConfigValidateReportsEveryFieldInOrder(t *testing.T) {
	for name, tc := range map[string]struct {
		err    error
		fields []string
	}{
		"Retry": {middleware.RetryConfig{MaxAttempts: -1, Multiplier: 0.5, MaxElapsedTime: -time.Second}.Validate(),
			[]string{"RetryConfig.MaxAttempts", "RetryConfig.Multiplier", "RetryConfig.MaxElapsedTime"}},
		"Breaker": {middleware.BreakerConfig{Window: -time.Second, FailureRatio: 2, MaxHoldTime: -time.Second}.Validate(),
			[]string{"BreakerConfig.Window", "BreakerConfig.FailureRatio", "BreakerConfig.MaxHoldTime"}},
		"DeadLetter": {middleware.DeadLetterConfig{PublishTimeout: -time.Second}.Validate(),
			[]string{"DeadLetterConfig.Publisher", "DeadLetterConfig.PublishTimeout"}},
		"DelayedRetry": {middleware.DelayedRetryConfig{Stages: []time.Duration{time.Second, -time.Second}, ScheduleTimeout: -time.Second}.Validate(),
			[]string{"DelayedRetryConfig.Stages[1]", "DelayedRetryConfig.Scheduler", "DelayedRetryConfig.ScheduleTimeout"}},
		"CrashLoopGuard": {middleware.CrashLoopGuardConfig{MaxDeliveries: -1, OffsetBlock: -1}.Validate(),
			[]string{"CrashLoopGuardConfig.Tracker", "CrashLoopGuardConfig.DeadLetter", "CrashLoopGuardConfig.MaxDeliveries", "CrashLoopGuardConfig.OffsetBlock"}},
		"Idempotency": {middleware.IdempotencyConfig{Lease: -time.Second, StoreTimeout: -time.Second}.Validate(),
			[]string{"IdempotencyConfig.Store", "IdempotencyConfig.Lease", "IdempotencyConfig.StoreTimeout"}},
		"Throttle": {middleware.ThrottleConfig{Burst: -1, MaxKeys: -1, Adaptive: &throttle.AdaptiveConfig{Backoff: 2}}.Validate(),
			[]string{"ThrottleConfig.Burst", "ThrottleConfig.MaxKeys", "ThrottleConfig.Adaptive: throttle: AdaptiveConfig.Backoff"}},
	} {
		t.Run(name, func(t *testing.T) { testenv.RequireFieldsInOrder(t, tc.err, tc.fields...) })
	}
}

// Zero values stand for defaults, so Validate accepts them as they are,
// before any defaults are applied; and a wrong value is never masked by
// the defaults: the constructor refuses it.
func TestConfigValidateZeroValuesAndConstructors(t *testing.T) {
	pub := gochannel.NewGoChannel(gochannel.Config{}, nil)
	defer pub.Close()
	for name, err := range map[string]error{
		"Retry":        middleware.RetryConfig{}.Validate(),
		"Breaker":      middleware.BreakerConfig{}.Validate(),
		"DeadLetter":   middleware.DeadLetterConfig{Publisher: pub}.Validate(),
		"DelayedRetry": middleware.DelayedRetryConfig{Stages: []time.Duration{time.Second}, Scheduler: nopScheduler{}}.Validate(),
		"Idempotency":  middleware.IdempotencyConfig{Store: idempotency.MustNewMemoryStore(idempotency.MemoryStoreConfig{})}.Validate(),
		"Metrics":      middleware.MetricsConfig{}.Validate(),
		"Throttle":     middleware.ThrottleConfig{Adaptive: &throttle.AdaptiveConfig{}}.Validate(),
		"FloodGuard":   middleware.FloodGuardConfig{}.Validate(),
		"Tracing":      middleware.TracingConfig{}.Validate(),
	} {
		if err != nil {
			t.Errorf("%s: the zero value (required fields set) is refused: %v", name, err)
		}
	}

	dl, err := middleware.NewDeadLetter(middleware.DeadLetterConfig{Publisher: pub})
	if err != nil {
		t.Fatal(err)
	}
	for name, build := range map[string]func() error{
		"Retry": func() error {
			_, err := middleware.NewRetry(middleware.RetryConfig{InitialInterval: -time.Second})
			return err
		},
		"Breaker": func() error {
			_, err := middleware.NewBreaker(middleware.BreakerConfig{Backoff: -time.Second})
			return err
		},
		"DeadLetter": func() error {
			_, err := middleware.NewDeadLetter(middleware.DeadLetterConfig{Publisher: pub, PublishTimeout: -time.Second})
			return err
		},
		"DelayedRetry": func() error {
			_, err := middleware.NewDelayedRetry(middleware.DelayedRetryConfig{Stages: []time.Duration{time.Second}, Scheduler: nopScheduler{}, ScheduleTimeout: -time.Second})
			return err
		},
		"CrashLoopGuard": func() error {
			_, err := middleware.NewCrashLoopGuard(middleware.CrashLoopGuardConfig{Tracker: poison.MustNewMemoryDeliveryTracker(poison.MemoryDeliveryTrackerConfig{}), DeadLetter: dl, OffsetBlock: -1})
			return err
		},
		"Idempotency": func() error {
			_, err := middleware.NewIdempotency(middleware.IdempotencyConfig{Store: idempotency.MustNewMemoryStore(idempotency.MemoryStoreConfig{}), BusyWait: -time.Second})
			return err
		},
		"Metrics": func() error {
			_, err := middleware.NewMetrics(middleware.MetricsConfig{DurationBuckets: []float64{2, 1}})
			return err
		},
		"Throttle": func() error { _, err := middleware.NewThrottle(middleware.ThrottleConfig{KeyBurst: -1}); return err },
		"FloodGuard": func() error {
			_, err := middleware.NewFloodGuard(middleware.FloodGuardConfig{DeadLetter: dl})
			return err
		},
	} {
		if build() == nil {
			t.Errorf("New%s accepted an invalid config", name)
		}
	}
}

type nopScheduler struct{}

func (nopScheduler) Schedule(context.Context, string, *message.Message, time.Duration) error {
	return nil
}
