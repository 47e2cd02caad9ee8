package middleware_test

import (
	"context"
	"errors"
	"math"
	"strconv"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	wmmiddleware "github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/poison"
)

var errDBDown = errors.New("db unavailable")

func newRetry(t *testing.T, cfg middleware.RetryConfig) *middleware.Retry {
	t.Helper()
	r, err := middleware.NewRetry(cfg)
	require.NoError(t, err)
	return r
}

// retryDelays records what OnRetry reports.
type retryDelays struct {
	attempts []int
	delays   []time.Duration
}

func (d *retryDelays) record(attempt int, _ error, delay time.Duration) {
	d.attempts = append(d.attempts, attempt)
	d.delays = append(d.delays, delay)
}

func TestRetryTransientRetriedUntilRetryError(t *testing.T) {
	for name, handlerErr := range map[string]error{
		"transient": poison.Transient(errDBDown),
		"unknown":   errDBDown,
	} {
		t.Run(name, func(t *testing.T) {
			var seen []string
			var d retryDelays
			r := newRetry(t, middleware.RetryConfig{MaxAttempts: 4, InitialInterval: time.Millisecond, OnRetry: d.record})
			msg := message.NewMessage("u", nil)
			produced, err := r.Middleware(func(msg *message.Message) ([]*message.Message, error) {
				seen = append(seen, msg.Metadata.Get(poison.KeyAttempts))
				return []*message.Message{message.NewMessage("out", nil)}, handlerErr
			})(msg)

			assert.Nil(t, produced, "messages of failed attempts are dropped")
			assert.Equal(t, []string{"1", "2", "3", "4"}, seen, "each attempt sees its number")
			assert.Equal(t, []int{1, 2, 3}, d.attempts, "OnRetry once per retry")
			var re *middleware.RetryError
			require.ErrorAs(t, err, &re)
			assert.Equal(t, 4, re.Attempts)
			assert.NotEqual(t, poison.ClassPermanent, re.Class)
			assert.ErrorIs(t, err, errDBDown)
			assert.False(t, re.FirstFailedAt.IsZero())
			assert.False(t, re.LastFailedAt.Before(re.FirstFailedAt))
			assert.Contains(t, err.Error(), "retries exhausted after 4 attempts")
		})
	}
}

func TestRetryPermanentNotRetried(t *testing.T) {
	calls := 0
	var d retryDelays
	r := newRetry(t, middleware.RetryConfig{MaxAttempts: 5, InitialInterval: time.Millisecond, OnRetry: d.record})
	_, err := r.Middleware(func(*message.Message) ([]*message.Message, error) {
		calls++
		return nil, poison.Invalidf("user_id missing")
	})(message.NewMessage("u", nil))

	assert.Equal(t, 1, calls)
	assert.Empty(t, d.attempts)
	var re *middleware.RetryError
	require.ErrorAs(t, err, &re)
	assert.Equal(t, 1, re.Attempts)
	assert.Equal(t, poison.ClassPermanent, re.Class)
	assert.Equal(t, re.FirstFailedAt, re.LastFailedAt)
}

func TestRetryStopsAtPermanentAfterTransient(t *testing.T) {
	calls := 0
	r := newRetry(t, middleware.RetryConfig{MaxAttempts: 5, InitialInterval: time.Millisecond})
	_, err := r.Middleware(func(*message.Message) ([]*message.Message, error) {
		calls++
		if calls == 1 {
			return nil, errDBDown
		}
		return nil, poison.Permanent(errors.New("bad row"))
	})(message.NewMessage("u", nil))

	assert.Equal(t, 2, calls)
	var re *middleware.RetryError
	require.ErrorAs(t, err, &re)
	assert.Equal(t, 2, re.Attempts)
	assert.Equal(t, poison.ClassPermanent, re.Class)
}

func TestRetryReturnsOnlySuccessfulAttemptsOutput(t *testing.T) {
	calls := 0
	r := newRetry(t, middleware.RetryConfig{InitialInterval: time.Millisecond})
	produced, err := r.Middleware(func(*message.Message) ([]*message.Message, error) {
		calls++
		out := []*message.Message{message.NewMessage("attempt-"+strconv.Itoa(calls), nil)}
		if calls < 3 {
			return out, errDBDown
		}
		return out, nil
	})(message.NewMessage("u", nil))

	require.NoError(t, err)
	require.Len(t, produced, 1)
	assert.Equal(t, "attempt-3", produced[0].UUID)
}

type ctxKey struct{}

func TestRetryResetsContextBetweenAttempts(t *testing.T) {
	msg := message.NewMessage("u", nil)
	orig := context.WithValue(context.Background(), ctxKey{}, "original")
	msg.SetContext(orig)

	var seen []any
	r := newRetry(t, middleware.RetryConfig{MaxAttempts: 2, InitialInterval: time.Millisecond})
	_, _ = r.Middleware(func(msg *message.Message) ([]*message.Message, error) {
		seen = append(seen, msg.Context().Value(ctxKey{}))
		msg.SetContext(context.WithValue(msg.Context(), ctxKey{}, "changed by attempt"))
		return nil, errDBDown
	})(msg)

	assert.Equal(t, []any{"original", "original"}, seen)
	assert.Equal(t, orig, msg.Context(), "the caller gets its context back")
}

// inJitterRange reports whether d lies in [i*(1-rf), i*(1+rf)], allowing
// the 1ns that backoff's rounding may add at the top.
func inJitterRange(d, interval time.Duration, rf float64) bool {
	lo := time.Duration(math.Floor(float64(interval) * (1 - rf)))
	hi := time.Duration(math.Ceil(float64(interval)*(1+rf))) + 1
	return d >= lo && d <= hi
}

// TestRetryDelaysGrowOncePerAttempt checks the waits Retry actually uses
// (OnRetry reports the delay right before waiting on it): the n-th wait is
// drawn from InitialInterval*Multiplier^(n-1), capped at MaxInterval, i.e.
// NextBackOff is called exactly once per retry.
func TestRetryDelaysGrowOncePerAttempt(t *testing.T) {
	const rf = 0.5
	want := []time.Duration{1, 2, 4, 8, 16, 16} // ms, capped by MaxInterval
	for run := range 3 {
		var d retryDelays
		r := newRetry(t, middleware.RetryConfig{
			MaxAttempts:         len(want) + 1,
			InitialInterval:     time.Millisecond,
			MaxInterval:         16 * time.Millisecond,
			Multiplier:          2,
			RandomizationFactor: rf,
			OnRetry:             d.record,
		})
		_, err := r.Middleware(func(*message.Message) ([]*message.Message, error) {
			return nil, errDBDown
		})(message.NewMessage("u", nil))
		require.Error(t, err)
		require.Len(t, d.delays, len(want))
		for i, interval := range want {
			interval *= time.Millisecond
			assert.True(t, inJitterRange(d.delays[i], interval, rf),
				"run %d retry %d: delay %v outside [%v, %v]", run, i+1, d.delays[i],
				time.Duration(float64(interval)*(1-rf)), time.Duration(float64(interval)*(1+rf)))
		}
	}

	var d retryDelays
	r := newRetry(t, middleware.RetryConfig{
		MaxAttempts: 5, InitialInterval: time.Millisecond, Multiplier: 3,
		RandomizationFactor: middleware.NoJitter, OnRetry: d.record,
	})
	_, _ = r.Middleware(func(*message.Message) ([]*message.Message, error) { return nil, errDBDown })(message.NewMessage("u", nil))
	assert.Equal(t, []time.Duration{1 * time.Millisecond, 3 * time.Millisecond, 9 * time.Millisecond, 27 * time.Millisecond}, d.delays)
}

// TestRetryDelaysVersusWatermill runs Watermill's middleware.Retry and ours
// with the same backoff (1ms, x2, no jitter) side by side. Watermill calls
// NextBackOff once for its OnRetryHook and again for the actual wait, so
// every retry skips a step: the delays its hook reports grow by 4x (2, 8,
// 32, 128ms) and the waits it really makes are the skipped values (1, 4,
// 16, 64ms). Ours grow by the configured 2x (1, 2, 4, 8ms), and the hook
// reports the wait that is actually made.
func TestRetryDelaysVersusWatermill(t *testing.T) {
	failing := func(*message.Message) ([]*message.Message, error) {
		return []*message.Message{message.NewMessage("from-failed-attempt", nil)}, errDBDown
	}

	var wmDelays []time.Duration
	wm := wmmiddleware.Retry{
		MaxRetries:      4,
		InitialInterval: time.Millisecond,
		MaxInterval:     time.Second,
		Multiplier:      2,
		OnRetryHook:     func(_ int, delay time.Duration) { wmDelays = append(wmDelays, delay) },
	}
	start := time.Now()
	wmProduced, wmErr := wm.Middleware(failing)(message.NewMessage("u", nil))
	wmElapsed := time.Since(start)
	require.Error(t, wmErr)

	var ours retryDelays
	r := newRetry(t, middleware.RetryConfig{
		MaxAttempts: 5, InitialInterval: time.Millisecond, MaxInterval: time.Second,
		Multiplier: 2, RandomizationFactor: middleware.NoJitter, OnRetry: ours.record,
	})
	start = time.Now()
	ourProduced, ourErr := r.Middleware(failing)(message.NewMessage("u", nil))
	ourElapsed := time.Since(start)
	require.Error(t, ourErr)

	ms := time.Millisecond
	assert.Equal(t, []time.Duration{2 * ms, 8 * ms, 32 * ms, 128 * ms}, wmDelays, "Watermill: backoff advanced twice per retry")
	assert.Equal(t, []time.Duration{1 * ms, 2 * ms, 4 * ms, 8 * ms}, ours.delays, "antidote: once per retry")
	for i := 1; i < len(wmDelays); i++ {
		assert.Equal(t, 4*wmDelays[i-1], wmDelays[i])
		assert.Equal(t, 2*ours.delays[i-1], ours.delays[i])
	}

	assert.NotEmpty(t, wmProduced, "Watermill returns the output of a failed attempt")
	assert.Empty(t, ourProduced, "antidote drops it")

	// Informational only: timings are never asserted.
	t.Logf("wall time for 4 retries: watermill %v (waits 1+4+16+64ms), antidote %v (waits 1+2+4+8ms)", wmElapsed, ourElapsed)
}

func TestRetryContextCancelInterruptsWait(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	msg := message.NewMessage("u", nil)
	msg.SetContext(ctx)

	calls := 0
	r := newRetry(t, middleware.RetryConfig{
		MaxAttempts: 5, InitialInterval: time.Hour, MaxInterval: time.Hour,
		OnRetry: func(int, error, time.Duration) { cancel() }, // shutdown begins while we would wait an hour
	})
	done := make(chan error, 1)
	go func() {
		_, err := r.Middleware(func(*message.Message) ([]*message.Message, error) {
			calls++
			return nil, errDBDown
		})(msg)
		done <- err
	}()

	select {
	case err := <-done:
		require.Error(t, err, "the message must be nacked")
		assert.ErrorIs(t, err, context.Canceled)
		assert.ErrorIs(t, err, errDBDown)
		var re *middleware.RetryError
		assert.False(t, errors.As(err, &re), "an interrupted retry is not exhausted; it must not be dead-lettered")
		assert.Equal(t, 1, calls)
	case <-time.After(10 * time.Second):
		t.Fatal("Retry kept waiting after the message context was cancelled")
	}
}

func TestRetryCancelledContextDoesNotRetry(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	msg := message.NewMessage("u", nil)
	msg.SetContext(ctx)
	calls := 0
	r := newRetry(t, middleware.RetryConfig{MaxAttempts: 5, InitialInterval: time.Millisecond})
	_, err := r.Middleware(func(msg *message.Message) ([]*message.Message, error) {
		calls++
		cancel()
		return nil, msg.Context().Err()
	})(msg)
	assert.Equal(t, 1, calls)
	assert.ErrorIs(t, err, context.Canceled)
}

func TestRetryMaxElapsedTime(t *testing.T) {
	calls := 0
	r := newRetry(t, middleware.RetryConfig{
		MaxAttempts: 10, InitialInterval: time.Second, MaxElapsedTime: 100 * time.Millisecond,
	})
	_, err := r.Middleware(func(*message.Message) ([]*message.Message, error) {
		calls++
		return nil, errDBDown
	})(message.NewMessage("u", nil))
	assert.Equal(t, 1, calls, "the first wait alone would exceed MaxElapsedTime")
	var re *middleware.RetryError
	require.ErrorAs(t, err, &re)
	assert.Equal(t, 1, re.Attempts)
	assert.NotEqual(t, poison.ClassPermanent, re.Class)
}

func TestRetryCustomClassifier(t *testing.T) {
	errQuota := errors.New("quota exceeded")
	calls := 0
	r := newRetry(t, middleware.RetryConfig{
		MaxAttempts: 5, InitialInterval: time.Millisecond,
		Classifier: poison.Chain(poison.ClassifierFunc(func(err error) poison.Class {
			if errors.Is(err, errQuota) {
				return poison.ClassPermanent
			}
			return poison.ClassUnknown
		}), poison.DefaultClassifier()),
	})
	_, err := r.Middleware(func(*message.Message) ([]*message.Message, error) {
		calls++
		return nil, errQuota
	})(message.NewMessage("u", nil))
	assert.Equal(t, 1, calls)
	assert.ErrorIs(t, err, errQuota)
}

func TestRetryConfigValidate(t *testing.T) {
	require.NoError(t, middleware.RetryConfig{}.Validate(), "the zero value takes defaults")
	require.NoError(t, middleware.RetryConfig{MaxAttempts: 1, RandomizationFactor: middleware.NoJitter, Multiplier: 1}.Validate())

	tests := []struct {
		cfg   middleware.RetryConfig
		field string
	}{
		{middleware.RetryConfig{MaxAttempts: -1}, "MaxAttempts"},
		{middleware.RetryConfig{InitialInterval: -time.Second}, "InitialInterval"},
		{middleware.RetryConfig{InitialInterval: time.Minute}, "MaxInterval"}, // above the 10s default cap
		{middleware.RetryConfig{Multiplier: 0.5}, "Multiplier"},
		{middleware.RetryConfig{RandomizationFactor: 1.5}, "RandomizationFactor"},
		{middleware.RetryConfig{MaxElapsedTime: -time.Second}, "MaxElapsedTime"},
	}
	for _, tt := range tests {
		t.Run(tt.field, func(t *testing.T) {
			err := tt.cfg.Validate()
			require.Error(t, err)
			assert.Contains(t, err.Error(), "RetryConfig."+tt.field)
			_, err = middleware.NewRetry(tt.cfg)
			assert.Error(t, err)
		})
	}
}
