package throttle

import (
	"context"
	"errors"
	"fmt"

	"golang.org/x/time/rate"

	"github.com/antidote-mq/antidote/internal/clock"
)

// RateConfig configures a token bucket.
type RateConfig struct {
	// Rate is the sustained rate, in events per second. Required (> 0): if
	// 0, NewRateLimiter fails.
	Rate float64

	// Burst is how many events may pass at once after a quiet period (the
	// bucket's size). Default 1: events are spaced exactly 1/Rate apart.
	// A larger burst absorbs spikes without waiting, at the cost of a
	// downstream seeing Burst events at once.
	Burst int
}

// DefaultBurst is the burst used when RateConfig.Burst is 0.
const DefaultBurst = 1

func (c *RateConfig) setDefaults() {
	if c.Burst == 0 {
		c.Burst = DefaultBurst
	}
}

// Validate reports every invalid field of c, after defaults are applied
// (NewRateLimiter applies them first), in field order, joined with
// errors.Join. Rate is required; a zero Burst is valid: it stands for the
// default.
func (c RateConfig) Validate() error {
	var errs []error
	if !(c.Rate > 0) {
		errs = append(errs, fmt.Errorf("throttle: RateConfig.Rate is %v: set the events per second, greater than 0", c.Rate))
	}
	if c.Burst < 0 {
		errs = append(errs, fmt.Errorf("throttle: RateConfig.Burst is %d: set 1 or more (0 picks the default %d)", c.Burst, DefaultBurst))
	}
	return errors.Join(errs...)
}

// RateLimiter is a token bucket shared by every caller of Wait.
type RateLimiter struct {
	lim *rate.Limiter
}

// NewRateLimiter fills cfg's defaults, validates it (see
// RateConfig.Validate) and returns a full bucket.
func NewRateLimiter(cfg RateConfig) (*RateLimiter, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &RateLimiter{lim: rate.NewLimiter(rate.Limit(cfg.Rate), cfg.Burst)}, nil
}

// Wait blocks until a token is available or ctx ends. It returns an error
// wrapping ctx.Err() when ctx ends first; the token it had reserved goes back
// to the bucket, so callers that give up do not slow down the others.
func (l *RateLimiter) Wait(ctx context.Context) error {
	return waitReservation(ctx, func() *rate.Reservation { return l.lim.Reserve() })
}

// waitReservation waits for a reservation made by reserve.
//
// Unlike rate.Limiter.Wait, it does not fail early when ctx has a deadline
// the wait would pass: it waits until ctx actually ends, so the error always
// wraps ctx.Err() while ctx.Err() != nil. Retry and DeadLetter rely on that
// to tell a shutdown (nack, redeliver) from a handler failure.
func waitReservation(ctx context.Context, reserve func() *rate.Reservation) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("throttle: rate wait: %w", err)
	}
	r := reserve()
	if !r.OK() {
		// Only possible with a burst < 1, which Validate refuses.
		return errors.New("throttle: rate wait: the bucket can never hold a token (burst < 1)")
	}
	d := r.Delay()
	if d <= 0 {
		return nil
	}
	if !clock.Sleep(ctx, d) {
		r.Cancel()
		return fmt.Errorf("throttle: rate wait: %w", ctx.Err())
	}
	return nil
}
