package middleware

import (
	"errors"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/poison"
	"github.com/antidote-mq/antidote/throttle"
)

// ThrottleConfig configures Throttle. The zero value throttles nothing
// (Enabled reports false), so it can sit unused inside a larger config.
// Each limit is independent; set any combination.
type ThrottleConfig struct {
	// Rate is the handler's sustained rate, in messages per second, a token
	// bucket (golang.org/x/time/rate). Default 0: no rate limit.
	Rate float64
	// Burst is how many messages may pass at once after a quiet period.
	// Default 1: messages exactly 1/Rate apart. Larger absorbs spikes
	// without waiting but lets the downstream see Burst messages at once.
	Burst int

	// KeyRate is each key's sustained rate, in messages per second: one
	// flooding producer or tenant waits, the others do not. Default 0: no
	// per-key limit. A waiting message holds its partition or queue
	// (Watermill handles a subscription's messages in order), so the keys
	// behind it wait too; per-key limits shield the downstream, not the
	// other keys' latency on the same partition.
	KeyRate float64
	// KeyBurst is each key's bucket size. Default 1.
	KeyBurst int
	// KeyMetadata names the metadata key whose value is a message's key,
	// such as "partition_key" or poison.KeyProducer. Required with KeyRate
	// unless Key is set; if empty, Key computes the key. Messages without
	// it share the key "".
	KeyMetadata string
	// Key computes a message's key instead of KeyMetadata. If nil, the key
	// is the value of the KeyMetadata metadata.
	Key func(*message.Message) string
	// MaxKeys bounds how many keys have a bucket (least recently used
	// dropped first). Default 10,000. A key idle for Burst/KeyRate loses
	// nothing when dropped; below the number of active keys, a dropped key
	// comes back with a full bucket.
	MaxKeys int

	// Concurrency is the most messages the handler runs at once. Default 0:
	// no limit beyond what the subscriber delivers (one per Kafka partition,
	// one per AMQP or PostgreSQL subscription). Cannot be combined with
	// Adaptive, whose MaxLimit plays this part.
	Concurrency int

	// Adaptive, when set, is a concurrency limit that finds itself: it
	// grows while the handler stays fast and backs off when its latency or
	// overload errors rise (see throttle.AdaptiveLimiter). Default nil: none.
	Adaptive *throttle.AdaptiveConfig
	// Overloaded says which handler errors mean the downstream is
	// overloaded, for Adaptive. Default: errors that poison's default
	// classifier does not call permanent (a malformed message is not the
	// downstream's fault). The message context ending (shutdown) never
	// counts.
	Overloaded func(error) bool

	// OnWait, when set, is called for every message with how long it waited
	// in this middleware (0 when it did not), including when the wait ended
	// with the message context. For metrics; it must not block. If nil,
	// nothing is called.
	OnWait func(msg *message.Message, waited time.Duration)
}

// Enabled reports whether cfg limits anything.
func (c ThrottleConfig) Enabled() bool {
	return c.Rate != 0 || c.KeyRate != 0 || c.Concurrency != 0 || c.Adaptive != nil
}

func (c *ThrottleConfig) setDefaults() {
	if c.Burst == 0 {
		c.Burst = throttle.DefaultBurst
	}
	if c.KeyBurst == 0 {
		c.KeyBurst = throttle.DefaultBurst
	}
	if c.MaxKeys == 0 {
		c.MaxKeys = throttle.DefaultMaxKeys
	}
	if c.Overloaded == nil {
		classifier := poison.DefaultClassifier()
		c.Overloaded = func(err error) bool { return classifier.Classify(err) != poison.ClassPermanent }
	}
}

// Validate reports every invalid field of c, after defaults are applied
// (NewThrottle applies them first), in field order, joined with errors.Join.
// A zero field is valid: it stands for its default (the zero value limits
// nothing).
func (c ThrottleConfig) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("antidote: ThrottleConfig."+format, args...))
	}
	if c.Rate < 0 {
		bad("Rate is %v: set messages per second above 0, or 0 for no rate limit", c.Rate)
	}
	if c.Burst < 0 {
		bad("Burst is %d: set 1 or more (0 picks the default %d)", c.Burst, throttle.DefaultBurst)
	}
	if c.KeyRate < 0 {
		bad("KeyRate is %v: set messages per second per key above 0, or 0 for no per-key limit", c.KeyRate)
	}
	if c.KeyBurst < 0 {
		bad("KeyBurst is %d: set 1 or more (0 picks the default %d)", c.KeyBurst, throttle.DefaultBurst)
	}
	if c.KeyRate > 0 && c.KeyMetadata == "" && c.Key == nil {
		bad("KeyRate is set but neither KeyMetadata nor Key is: name the metadata key holding the message's key (e.g. %q) or set Key", poison.KeyProducer)
	}
	if c.MaxKeys < 0 {
		bad("MaxKeys is %d: set 1 or more (0 picks the default %d)", c.MaxKeys, throttle.DefaultMaxKeys)
	}
	if c.Concurrency < 0 {
		bad("Concurrency is %d: set 1 or more, or 0 for no limit", c.Concurrency)
	}
	if c.Concurrency > 0 && c.Adaptive != nil {
		bad("Concurrency (%d) and Adaptive are both set: keep one (Adaptive.MaxLimit caps the adaptive limit)", c.Concurrency)
	}
	if c.Adaptive != nil {
		if err := c.Adaptive.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("antidote: ThrottleConfig.Adaptive: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Throttle limits how fast and how many messages a handler runs. Build it
// with NewThrottle and install Middleware on a router or handler.
//
// Each handler it wraps gets its own limiters (Watermill calls Middleware
// once per handler), so installed router-wide it limits every handler
// separately. Per message, it waits for the key's token, then the handler's
// token, then a concurrency slot, in that order, so no slot is held while
// waiting for a token.
//
// Every wait ends with the message context (router shutdown), with an error
// wrapping the context's: Retry stops and DeadLetter nacks, so the message
// is delivered again rather than dead-lettered. Compared with Watermill's
// middleware.Throttle: that one waits on a ticker that ignores the message
// context (a shutdown waits for the next tick), has no burst, no per-key or
// concurrency limit, and one ticker is shared by every handler.
type Throttle struct {
	cfg ThrottleConfig
}

// NewThrottle fills cfg's defaults, validates it (see
// ThrottleConfig.Validate) and returns the middleware.
func NewThrottle(cfg ThrottleConfig) (*Throttle, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Throttle{cfg: cfg}, nil
}

// Middleware returns h throttled by new limiters of its own.
func (t *Throttle) Middleware(h message.HandlerFunc) message.HandlerFunc {
	cfg := t.cfg
	if !cfg.Enabled() {
		return h
	}
	// The config was validated by NewThrottle, so these cannot fail; a
	// failure would be a bug here, reported on every message rather than
	// hidden.
	var (
		rl    *throttle.RateLimiter
		kl    *throttle.KeyedLimiter
		cl    *throttle.ConcurrencyLimiter
		al    *throttle.AdaptiveLimiter
		setup []error
	)
	if cfg.Rate > 0 {
		var err error
		rl, err = throttle.NewRateLimiter(throttle.RateConfig{Rate: cfg.Rate, Burst: cfg.Burst})
		setup = append(setup, err)
	}
	if cfg.KeyRate > 0 {
		var err error
		kl, err = throttle.NewKeyedLimiter(throttle.KeyedConfig{Rate: cfg.KeyRate, Burst: cfg.KeyBurst, MaxKeys: cfg.MaxKeys})
		setup = append(setup, err)
	}
	if cfg.Concurrency > 0 {
		var err error
		cl, err = throttle.NewConcurrencyLimiter(cfg.Concurrency)
		setup = append(setup, err)
	}
	if cfg.Adaptive != nil {
		var err error
		al, err = throttle.NewAdaptiveLimiter(*cfg.Adaptive)
		setup = append(setup, err)
	}
	if err := errors.Join(setup...); err != nil {
		return func(*message.Message) ([]*message.Message, error) {
			return nil, fmt.Errorf("antidote: throttle setup: %w", err)
		}
	}
	key := cfg.Key
	if key == nil {
		name := cfg.KeyMetadata
		key = func(m *message.Message) string { return m.Metadata.Get(name) }
	}

	return func(msg *message.Message) (_ []*message.Message, err error) {
		ctx := msg.Context()
		start := time.Now()
		if kl != nil {
			if werr := kl.Wait(ctx, key(msg)); werr != nil {
				return nil, t.waitFailed(msg, start, werr)
			}
		}
		if rl != nil {
			if werr := rl.Wait(ctx); werr != nil {
				return nil, t.waitFailed(msg, start, werr)
			}
		}
		if cl != nil {
			release, acqErr := cl.Acquire(ctx)
			if acqErr != nil {
				return nil, t.waitFailed(msg, start, acqErr)
			}
			defer release()
		}
		if al != nil {
			done, acqErr := al.Acquire(ctx)
			if acqErr != nil {
				return nil, t.waitFailed(msg, start, acqErr)
			}
			// Deferred so a panic (no Recover inside) still frees the slot;
			// err is the handler's result.
			defer func() {
				done(err != nil && !isShutdown(msg, err) && cfg.Overloaded(err))
			}()
		}
		if cfg.OnWait != nil {
			cfg.OnWait(msg, time.Since(start))
		}
		return h(msg)
	}
}

func (t *Throttle) waitFailed(msg *message.Message, start time.Time, err error) error {
	if t.cfg.OnWait != nil {
		t.cfg.OnWait(msg, time.Since(start))
	}
	return fmt.Errorf("antidote: throttle: %w", err)
}
