package middleware

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/cenkalti/backoff/v5"

	"github.com/antidote-mq/antidote/internal/clock"
	"github.com/antidote-mq/antidote/poison"
)

// Defaults of RetryConfig.
const (
	DefaultMaxAttempts         = 3
	DefaultInitialInterval     = 100 * time.Millisecond
	DefaultMaxInterval         = 10 * time.Second
	DefaultMultiplier          = 2.0
	DefaultRandomizationFactor = 0.5
)

// NoJitter, as RetryConfig.RandomizationFactor, disables jitter (0 cannot
// mean that, since the zero value picks the default).
const NoJitter = -1.0

// RetryConfig configures Retry. The zero value is usable: every zero field
// takes its default.
type RetryConfig struct {
	// MaxAttempts is the total number of handler runs per delivery,
	// including the first. Default 3. 1 disables retrying. Every attempt
	// holds the partition (head-of-line), so keep it small and let the
	// dead-letter queue take the rest.
	MaxAttempts int

	// InitialInterval is the wait before the second attempt. Default 100ms.
	InitialInterval time.Duration
	// MaxInterval caps the (un-jittered) wait. Default 10s.
	MaxInterval time.Duration
	// Multiplier grows the wait after each retry. Default 2; 1 keeps it
	// constant.
	Multiplier float64
	// RandomizationFactor spreads each wait over
	// [interval*(1-f), interval*(1+f)] so consumers that failed together
	// do not retry in lockstep against a recovering database. Default 0.5;
	// must be <= 1; NoJitter (any negative value) disables it.
	RandomizationFactor float64
	// MaxElapsedTime stops retrying once the next wait would end later
	// than this after the first attempt started. 0 means no limit (the
	// attempt count alone bounds the time).
	MaxElapsedTime time.Duration

	// Classifier decides what is worth retrying. Default
	// poison.DefaultClassifier(). Permanent errors are returned at once;
	// transient and unknown ones are retried.
	Classifier poison.Classifier

	// OnRetry, when set, is called once per retry, before the wait, with
	// the attempt that just failed (1 = the first run), its error and the
	// wait that follows. For logs and custom hooks; it must not block.
	// Metrics (above Retry) already counts retries by handler, and Tracing
	// records them as span events: do not wire OnRetry for those. If nil,
	// nothing is called.
	OnRetry func(attempt int, err error, delay time.Duration)

	// Logger receives one line per retry. Default watermill.NopLogger.
	Logger watermill.LoggerAdapter
}

func (c *RetryConfig) setDefaults() {
	if c.MaxAttempts == 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	if c.InitialInterval == 0 {
		c.InitialInterval = DefaultInitialInterval
	}
	if c.MaxInterval == 0 {
		c.MaxInterval = DefaultMaxInterval
	}
	if c.Multiplier == 0 {
		c.Multiplier = DefaultMultiplier
	}
	if c.RandomizationFactor == 0 {
		c.RandomizationFactor = DefaultRandomizationFactor
	}
	if c.Classifier == nil {
		c.Classifier = poison.DefaultClassifier()
	}
	if c.Logger == nil {
		c.Logger = watermill.NopLogger{}
	}
}

// Validate reports every invalid field of c, after defaults are applied
// (NewRetry applies them first), in field order, joined with errors.Join.
// A zero field is valid: it stands for its default, which Validate uses in
// the checks that compare fields.
func (c RetryConfig) Validate() error {
	var errs []error
	if c.MaxAttempts < 0 {
		errs = append(errs, fmt.Errorf("antidote: RetryConfig.MaxAttempts is %d: set it to 1 or more (1 disables retries, 0 picks the default %d)", c.MaxAttempts, DefaultMaxAttempts))
	}
	if c.InitialInterval < 0 {
		errs = append(errs, fmt.Errorf("antidote: RetryConfig.InitialInterval is %v: set a positive duration (0 picks the default %v)", c.InitialInterval, DefaultInitialInterval))
	}
	initial, maxInterval := orDefault(c.InitialInterval, DefaultInitialInterval), orDefault(c.MaxInterval, DefaultMaxInterval)
	if maxInterval < initial {
		errs = append(errs, fmt.Errorf("antidote: RetryConfig.MaxInterval (%v) is less than InitialInterval (%v): raise MaxInterval or lower InitialInterval", maxInterval, initial))
	}
	if c.Multiplier != 0 && c.Multiplier < 1 {
		errs = append(errs, fmt.Errorf("antidote: RetryConfig.Multiplier is %v: set it to 1 or more (1 keeps the interval constant, 0 picks the default %v)", c.Multiplier, DefaultMultiplier))
	}
	if c.RandomizationFactor > 1 {
		errs = append(errs, fmt.Errorf("antidote: RetryConfig.RandomizationFactor is %v: set it between 0 and 1 (use NoJitter to disable jitter)", c.RandomizationFactor))
	}
	if c.MaxElapsedTime < 0 {
		errs = append(errs, fmt.Errorf("antidote: RetryConfig.MaxElapsedTime is %v: set a positive duration, or 0 for no limit", c.MaxElapsedTime))
	}
	return errors.Join(errs...)
}

// Retry re-runs a failing handler for transient and unknown errors with
// exponential backoff and jitter, and gives up at once on permanent ones.
// Build it with NewRetry.
//
// Compared with Watermill's middleware.Retry: the backoff is advanced
// exactly once per retry (Watermill's advances it twice when a hook is set,
// so its waits grow by Multiplier squared), messages produced by failed
// attempts are dropped, permanent errors are not retried, and the final
// error is a *RetryError that tells DeadLetter how many attempts were made
// and when.
type Retry struct {
	cfg RetryConfig
}

// NewRetry fills cfg's defaults, validates it (see RetryConfig.Validate)
// and returns the middleware.
func NewRetry(cfg RetryConfig) (*Retry, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.RandomizationFactor < 0 {
		cfg.RandomizationFactor = 0
	}
	return &Retry{cfg: cfg}, nil
}

// RetryError is the error Retry returns when it stops retrying a message:
// because the error was permanent (Class is ClassPermanent), because
// MaxAttempts was reached, or because MaxElapsedTime would be exceeded.
// Unwrap returns Err, so errors.Is/As and classifiers see the handler's
// error.
type RetryError struct {
	// Attempts is how many times the handler ran.
	Attempts int
	// FirstFailedAt and LastFailedAt are when the first and the last
	// attempt returned their errors.
	FirstFailedAt, LastFailedAt time.Time
	// Err is the last attempt's error.
	Err error
	// Class is how Retry's classifier classified Err. DeadLetter uses it to
	// choose between reasons "permanent" and "retries_exhausted".
	Class poison.Class
}

// Error says why retrying stopped and includes Err's text.
func (e *RetryError) Error() string {
	if e.Class == poison.ClassPermanent {
		return fmt.Sprintf("permanent error on attempt %d: %v", e.Attempts, e.Err)
	}
	return fmt.Sprintf("retries exhausted after %d attempts: %v", e.Attempts, e.Err)
}

// Unwrap returns Err.
func (e *RetryError) Unwrap() error { return e.Err }

// Middleware returns the retrying handler. Each attempt runs with the
// message context as it was on entry (a failed attempt's context changes do
// not leak into the next) and with poison.KeyAttempts set to the attempt
// number. On failure it returns no messages and a *RetryError. When the
// message context is cancelled during a wait (router shutdown) it stops at
// once and returns an error wrapping both the context error and the last
// handler error: the message is nacked and redelivered, not dead-lettered.
func (r *Retry) Middleware(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		ctx := msg.Context()
		defer msg.SetContext(ctx)
		if msg.Metadata == nil {
			msg.Metadata = message.Metadata{} // a hand-built Message may have none
		}

		var start time.Time // only MaxElapsedTime needs it
		if r.cfg.MaxElapsedTime > 0 {
			start = time.Now()
		}
		// The first attempt (and the frame kept on the stack while the
		// handler runs) stays small; retrying is out of line.
		msg.Metadata.Set(poison.KeyAttempts, "1")
		produced, err := h(msg)
		if err == nil {
			return produced, nil
		}
		return r.retry(msg, h, ctx, start, err)
	}
}

// retry goes on after the first attempt failed with err: it classifies
// err, waits and runs further attempts until one succeeds or it gives up.
func (r *Retry) retry(msg *message.Message, h message.HandlerFunc, ctx context.Context, start time.Time, err error) ([]*message.Message, error) {
	// A fresh backoff per delivery: the struct is not thread-safe and its
	// interval must start over for every message.
	b := &backoff.ExponentialBackOff{
		InitialInterval:     r.cfg.InitialInterval,
		RandomizationFactor: r.cfg.RandomizationFactor,
		Multiplier:          r.cfg.Multiplier,
		MaxInterval:         r.cfg.MaxInterval,
	}
	b.Reset()

	var firstFailed time.Time
	for attempt := 1; ; attempt++ {
		if attempt > 1 {
			msg.SetContext(ctx)
			msg.Metadata.Set(poison.KeyAttempts, strconv.Itoa(attempt))
			deliveryBusy(ctx) // the crash-loop guard counts the attempt
			var produced []*message.Message
			produced, err = h(msg)
			if err == nil {
				return produced, nil
			}
		}
		// The handler returned: while the message waits, a dying process
		// is not its fault (see CrashLoopGuard.runTracked).
		deliveryIdle(ctx)
		now := time.Now()
		if firstFailed.IsZero() {
			firstFailed = now
		}
		class := r.cfg.Classifier.Classify(err)
		// ctx carries the consumer span when Tracing is above: each
		// failed attempt is an event on it, not a span of its own, so a
		// poison pill's trace stays one span deep however often it was
		// retried.
		noteAttemptFailed(ctx, attempt, err, class)
		giveUp := func() error {
			return &RetryError{Attempts: attempt, FirstFailedAt: firstFailed, LastFailedAt: now, Err: err, Class: class}
		}
		if class == poison.ClassPermanent || attempt >= r.cfg.MaxAttempts {
			return nil, giveUp()
		}
		if ctx.Err() != nil {
			return nil, interrupted(ctx, attempt, err)
		}

		// Exactly one NextBackOff per retry, so the waits grow by
		// Multiplier per attempt as configured.
		delay := b.NextBackOff()
		if r.cfg.MaxElapsedTime > 0 && now.Sub(start)+delay > r.cfg.MaxElapsedTime {
			return nil, giveUp()
		}
		if r.cfg.OnRetry != nil {
			r.cfg.OnRetry(attempt, err, delay)
		}
		noteRetry(ctx, attempt+1, delay) // span event; Metrics counts it
		r.cfg.Logger.Info("Handler failed, retrying", traceFields(msg.Context(), watermill.LogFields{
			"message_uuid": msg.UUID,
			"handler_name": message.HandlerNameFromCtx(ctx),
			"attempt":      attempt,
			"max_attempts": r.cfg.MaxAttempts,
			"class":        class.String(),
			"wait":         delay.String(),
			"err":          err.Error(),
		}))
		if !clock.Sleep(ctx, delay) {
			return nil, interrupted(ctx, attempt, err)
		}
	}
}

// interrupted wraps both errors so that errors.Is(err, context.Canceled)
// holds (DeadLetter then nacks instead of dead-lettering) and the handler's
// error is still visible.
func interrupted(ctx context.Context, attempt int, err error) error {
	return fmt.Errorf("antidote: retry stopped after attempt %d: %w (last handler error: %w)",
		attempt, ctx.Err(), err)
}

// isShutdown reports whether err is the message context ending (router
// shutdown or a deadline on the message) rather than a handler failure.
func isShutdown(msg *message.Message, err error) bool {
	return msg.Context().Err() != nil &&
		(errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded))
}

// deliveryOver reports whether the subscriber has ended msg's delivery,
// whatever the handler returned (its caller first puts back the context the
// message came with: a middleware below may have left its own there): the router is closing, or the broker's
// deadline for an answer passed (PostgreSQL's ack_deadline). An ack would
// not reach the broker, which delivers the message again, so nothing that
// cannot be undone (a letter, a retry stage, the breaker's verdict) may be
// done for it now: the next delivery, with its whole deadline ahead, does it.
func deliveryOver(msg *message.Message) bool { return msg.Context().Err() != nil }
