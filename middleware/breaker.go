package middleware

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/sony/gobreaker/v2"

	"github.com/antidote-mq/antidote/poison"
)

// ErrCircuitOpen is matched (errors.Is) by the error the breaker returns for
// a message it refused to run; the message is nacked, not dead-lettered.
var ErrCircuitOpen = errors.New("antidote: circuit open, handler's dependencies are failing")

// DefaultMaxHoldTime is BreakerConfig.MaxHoldTime when zero.
const DefaultMaxHoldTime = time.Minute

// BreakerConfig configures Breaker. Every zero field takes its default.
type BreakerConfig struct {
	// Window is the rolling window over which outcomes are counted.
	// Default 30s. Shorter reacts faster and forgets an outage sooner.
	Window time.Duration
	// MinRequests is how many outcomes the window needs before the breaker
	// may open. Default 10. Lower trips on less evidence.
	MinRequests uint32
	// FailureRatio is the share of transient failures in the window that
	// opens the breaker. Default 0.5.
	FailureRatio float64
	// OpenTimeout is how long the breaker stays open before letting probe
	// messages through (half-open). Default 5s.
	OpenTimeout time.Duration
	// HalfOpenProbes is how many messages may run while half-open; all must
	// succeed to close the breaker. Default 1.
	HalfOpenProbes uint32
	// Backoff is the pause before a refused or held message is nacked, so
	// the broker does not hand it back in a hot loop. Default 1s. It honours
	// the message context: shutdown never waits for it.
	Backoff time.Duration
	// MaxHoldTime bounds how long one message failing transiently is held
	// back (nacked instead of dead-lettered), counted from its first hold.
	// Default 1m. A head-of-line consumer sees only the message at the head
	// while it is held, so without a HealthCheck it cannot tell a dead
	// database from a message that always times out; after MaxHoldTime the
	// message goes to the DLQ as retries_exhausted and the queue moves on.
	// In an outage longer than this, at most one message per partition per
	// MaxHoldTime reaches the DLQ: a trickle, not a storm. Longer tolerates
	// longer outages and lets a truly bad message hold its partition longer.
	MaxHoldTime time.Duration
	// HealthCheck, when set, answers what the breaker cannot see: whether
	// the handler's dependencies are up (e.g. a pgxpool.Pool's Ping). It is
	// called, within Backoff, for a message that fails transiently again
	// after a hold: nil means they are up, so the failure is the message's
	// own and it goes to the DLQ (retries_exhausted) at once; an error
	// means an outage and the message is held. Default nil: the breaker
	// judges by other messages' successes alone, and on an ordered queue
	// with nothing else flowing holds the message up to MaxHoldTime. It
	// must not depend on the message.
	HealthCheck func(ctx context.Context) error
	// Classifier tells transient from permanent failures. Permanent ones are
	// the message's fault and count as healthy outcomes. Default
	// poison.DefaultClassifier().
	Classifier poison.Classifier
	// OnStateChange, when set, is called on every state change ("closed",
	// "open", "half-open"), for metrics. It must not block.
	OnStateChange func(from, to string)
	// Logger gets one line per state change. Default watermill.NopLogger.
	Logger watermill.LoggerAdapter
}

func (c *BreakerConfig) setDefaults() {
	if c.Window == 0 {
		c.Window = 30 * time.Second
	}
	if c.MinRequests == 0 {
		c.MinRequests = 10
	}
	if c.FailureRatio == 0 {
		c.FailureRatio = 0.5
	}
	if c.OpenTimeout == 0 {
		c.OpenTimeout = 5 * time.Second
	}
	if c.HalfOpenProbes == 0 {
		c.HalfOpenProbes = 1
	}
	if c.Backoff == 0 {
		c.Backoff = time.Second
	}
	if c.MaxHoldTime == 0 {
		c.MaxHoldTime = DefaultMaxHoldTime
	}
	if c.Classifier == nil {
		c.Classifier = poison.DefaultClassifier()
	}
	if c.Logger == nil {
		c.Logger = watermill.NopLogger{}
	}
}

// Validate names the field that cannot work and the fix.
func (c BreakerConfig) Validate() error {
	var errs []error
	if c.Window < 0 || c.OpenTimeout < 0 || c.Backoff < 0 || c.MaxHoldTime < 0 {
		errs = append(errs, errors.New("antidote: BreakerConfig: Window, OpenTimeout, Backoff and MaxHoldTime must not be negative; use 0 for the defaults"))
	}
	if c.FailureRatio < 0 || c.FailureRatio > 1 {
		errs = append(errs, fmt.Errorf("antidote: BreakerConfig.FailureRatio %v is outside [0, 1]; use e.g. 0.5", c.FailureRatio))
	}
	return errors.Join(errs...)
}

// Breaker guards against the DLQ storm: when most messages fail with
// transient errors (the database is down, not the messages), dead-lettering
// them all would empty the queue into the DLQ. Instead the breaker opens:
// messages are nacked after Backoff without running the handler (consumption
// pauses), after OpenTimeout a probe runs (half-open), and one success closes
// it. Place it between DeadLetter and Retry (router.New does); it counts the
// outcome after Retry's attempts, and its refusals are poison.Defer'd, which
// DeadLetter nacks instead of dead-lettering. Built on sony/gobreaker/v2
// with a rolling window.
//
// While closed, a message that still fails transiently after Retry is held
// too, not dead-lettered at once: a window full of earlier successes says
// nothing about whether the database died a second ago. It goes to the DLQ
// (retries_exhausted) once it has been held twice and other messages
// succeeded since its first hold (or, with DelayedRetry, once its stages
// are spent while most outcomes in the window are successes), which shows
// the failure is its own; with no other traffic it is held up to
// MaxHoldTime.
type Breaker struct {
	cfg   BreakerConfig
	cb    *gobreaker.CircuitBreaker[struct{}]
	mu    sync.Mutex
	holds map[string]holdRecord // message UUID -> its holds; bounded
	// successes counts successful runs, so a held message can tell whether
	// others got through since its first hold.
	successes atomic.Uint64
	// nholds is len(holds), written under mu: with none held (the normal
	// case) wasHeld and forget skip the lock.
	nholds atomic.Int32
}

// maxTrackedHolds bounds the holds map; past it all are forgotten at once,
// which at worst restarts some messages' MaxHoldTime.
const maxTrackedHolds = 10_000

// NewBreaker checks cfg and returns the breaker.
func NewBreaker(cfg BreakerConfig) (*Breaker, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	b := &Breaker{cfg: cfg, holds: map[string]holdRecord{}}
	b.cb = gobreaker.NewCircuitBreaker[struct{}](gobreaker.Settings{
		Name:         "antidote",
		MaxRequests:  cfg.HalfOpenProbes,
		Interval:     cfg.Window,
		BucketPeriod: cfg.Window / 10,
		Timeout:      cfg.OpenTimeout,
		ReadyToTrip:  func(c gobreaker.Counts) bool { return cfg.failing(c) },
		OnStateChange: func(_ string, from, to gobreaker.State) {
			cfg.Logger.Info("DLQ-storm breaker changed state", watermill.LogFields{"from": from.String(), "to": to.String()})
			if cfg.OnStateChange != nil {
				cfg.OnStateChange(from.String(), to.String())
			}
		},
		// Only transient failures are the environment's; a permanent one is
		// the message's and says nothing about the database.
		IsSuccessful: func(err error) bool { return err == nil || cfg.Classifier.Classify(err) == poison.ClassPermanent },
		// err != nil first: errors.As's target would be allocated per call.
		IsExcluded: func(err error) bool { return err != nil && errors.As(err, new(excludedErr)) },
	})
	return b, nil
}

// State is "closed", "open" or "half-open".
func (b *Breaker) State() string { return b.cb.State().String() }

// Middleware returns the breaker as a Watermill middleware.
func (b *Breaker) Middleware(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		var produced []*message.Message
		var herr error
		// A message held before counts once: its redeliveries say nothing
		// new about the environment, and counting them would let one bad
		// message in a quiet stream open the breaker for good. Probes
		// (half-open) always count.
		repeat := b.wasHeld(msg.UUID) && b.cb.State() == gobreaker.StateClosed
		_, err := b.cb.Execute(func() (struct{}, error) {
			produced, herr = h(msg)
			// Deferred (a key busy elsewhere, a failed schedule) says nothing
			// about the handler's dependencies.
			if herr != nil && (repeat || errors.Is(herr, poison.ErrDeferred)) {
				return struct{}{}, excludedErr{herr}
			}
			return struct{}{}, herr
		})
		if err == nil && herr == nil {
			b.successes.Add(1)
			b.forget(msg.UUID)
			return produced, nil
		}
		return b.settle(msg, produced, herr, err)
	}
}

// settle decides what a refused or failed run returns (out of
// Middleware's closure, so the frame kept on the stack while the handler
// runs is small). err is Execute's error, herr the handler's.
func (b *Breaker) settle(msg *message.Message, produced []*message.Message, herr, err error) ([]*message.Message, error) {
	switch {
	case errors.Is(err, gobreaker.ErrOpenState), errors.Is(err, gobreaker.ErrTooManyRequests):
		return nil, b.hold(msg, fmt.Errorf("%w (%s)", ErrCircuitOpen, b.cb.State()))
	case herr == nil:
		b.successes.Add(1)
		b.forget(msg.UUID)
		return produced, nil
	case isShutdown(msg, herr) || errors.Is(herr, poison.ErrDeferred) || b.cfg.Classifier.Classify(herr) == poison.ClassPermanent:
		return nil, herr
	}
	// A transient failure that outlived Retry.
	if b.heldTooLong(msg.UUID) {
		b.forget(msg.UUID)
		return nil, herr // DeadLetter takes it: retries_exhausted
	}
	if st := b.cb.State(); st != gobreaker.StateClosed {
		return nil, b.hold(msg, fmt.Errorf("%w (%s): %w", ErrCircuitOpen, st, herr))
	}
	if b.judged(msg) {
		b.forget(msg.UUID)
		return nil, herr // others succeed while it keeps failing: the message's own problem
	}
	return nil, b.hold(msg, herr)
}

// outcomes counts finished, counted runs: gobreaker's Requests also holds
// runs still in flight and excluded ones.
func outcomes(c gobreaker.Counts) uint32 { return c.TotalSuccesses + c.TotalFailures }

// failing reports whether the window shows enough transient failures to open.
func (c BreakerConfig) failing(n gobreaker.Counts) bool {
	total := outcomes(n)
	return total >= c.MinRequests && float64(n.TotalFailures)/float64(total) >= c.FailureRatio
}

// excludedErr marks a failure gobreaker must not count.
type excludedErr struct{ error }

// hold pauses, then returns a Defer'd error so the message is nacked.
func (b *Breaker) hold(msg *message.Message, err error) error {
	b.mu.Lock()
	r, ok := b.holds[msg.UUID]
	if !ok {
		if len(b.holds) >= maxTrackedHolds {
			clear(b.holds)
		}
		r = holdRecord{first: time.Now(), successes: b.successes.Load()}
	}
	r.holds++
	b.holds[msg.UUID] = r
	b.nholds.Store(int32(len(b.holds)))
	b.mu.Unlock()
	t := time.NewTimer(b.cfg.Backoff)
	defer t.Stop()
	select {
	case <-t.C:
	case <-msg.Context().Done():
	}
	return poison.Defer(err)
}

// holdRecord is what the breaker remembers of a held message.
type holdRecord struct {
	first     time.Time // its first hold
	successes uint64    // Breaker.successes at its first hold
	holds     int
}

// verdictHolds is how often a transiently failing message is held before
// it may be judged by others' successes. One hold is not enough: right after
// an outage a redelivered message can still meet a stale connection while
// others already get through.
const verdictHolds = 2

// judged reports whether a transient failure is shown to be the message's
// own: it kept failing while its dependencies are up (HealthCheck) or while
// others succeeded, seen either through its holds here or through the
// delayed-retry stages it already went through.
func (b *Breaker) judged(msg *message.Message) bool {
	c := b.cb.Counts()
	if b.cfg.failing(c) {
		return false
	}
	if b.cfg.HealthCheck != nil && b.wasHeld(msg.UUID) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(msg.Context()), b.cfg.Backoff)
		defer cancel()
		return b.cfg.HealthCheck(ctx) == nil
	}
	return b.othersGotThrough(msg.UUID) || (Stage(msg) > 0 && outcomes(c) >= b.cfg.MinRequests)
}

// othersGotThrough reports whether uuid was held verdictHolds times and
// other messages succeeded since its first hold: then its failures are its
// own, not the environment's. Holding first, instead of trusting a window
// full of successes from before, keeps the first messages of an outage out
// of the DLQ.
func (b *Breaker) othersGotThrough(uuid string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	r, ok := b.holds[uuid]
	return ok && r.holds >= verdictHolds && b.successes.Load() > r.successes
}

// heldTooLong reports whether uuid was first held more than MaxHoldTime ago.
func (b *Breaker) heldTooLong(uuid string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	r, ok := b.holds[uuid]
	return ok && time.Since(r.first) > b.cfg.MaxHoldTime
}

func (b *Breaker) wasHeld(uuid string) bool {
	if b.nholds.Load() == 0 {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	_, ok := b.holds[uuid]
	return ok
}

func (b *Breaker) forget(uuid string) {
	if b.nholds.Load() == 0 {
		return
	}
	b.mu.Lock()
	delete(b.holds, uuid)
	b.nholds.Store(int32(len(b.holds)))
	b.mu.Unlock()
}
