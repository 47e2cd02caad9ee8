package middleware

import (
	"context"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/antidote-mq/antidote/idempotency"
	"github.com/antidote-mq/antidote/poison"
)

type nopScheduler struct{}

func (nopScheduler) Schedule(context.Context, string, *message.Message, time.Duration) error {
	return nil
}

// Validate accepts everything setDefaults produces.
func TestValidateAcceptsDefaults(t *testing.T) {
	pub := gochannel.NewGoChannel(gochannel.Config{}, nil)
	defer pub.Close()
	dl, err := NewDeadLetter(DeadLetterConfig{Publisher: pub})
	if err != nil {
		t.Fatal(err)
	}
	retry := RetryConfig{}
	retry.setDefaults()
	breaker := BreakerConfig{}
	breaker.setDefaults()
	deadLetter := DeadLetterConfig{Publisher: pub}
	deadLetter.setDefaults()
	delayed := DelayedRetryConfig{Stages: []time.Duration{time.Second}, Scheduler: nopScheduler{}}
	delayed.setDefaults()
	deliveries := CrashLoopGuardConfig{Tracker: poison.MustNewMemoryDeliveryTracker(poison.MemoryDeliveryTrackerConfig{}), DeadLetter: dl}
	deliveries.setDefaults()
	idem := IdempotencyConfig{Store: idempotency.MustNewMemoryStore(idempotency.MemoryStoreConfig{})}
	idem.setDefaults()
	metrics := MetricsConfig{}
	metrics.setDefaults()
	thr := ThrottleConfig{}
	thr.setDefaults()
	flood := FloodGuardConfig{}
	flood.setDefaults()
	tracing := TracingConfig{}
	tracing.setDefaults()
	for name, err := range map[string]error{
		"Retry": retry.Validate(), "Breaker": breaker.Validate(), "DeadLetter": deadLetter.Validate(),
		"DelayedRetry": delayed.Validate(), "CrashLoopGuard": deliveries.Validate(), "Idempotency": idem.Validate(),
		"Metrics": metrics.Validate(), "Throttle": thr.Validate(), "FloodGuard": flood.Validate(), "Tracing": tracing.Validate(),
	} {
		if err != nil {
			t.Errorf("%sConfig: the defaults are refused: %v", name, err)
		}
	}
}
