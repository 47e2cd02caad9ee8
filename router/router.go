package router

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	wmiddleware "github.com/ThreeDotsLabs/watermill/message/router/middleware"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/internal/stack"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/poison"
)

// Config configures New. Only DeadLetter.Publisher is required.
type Config struct {
	// CloseTimeout is how long Close waits for running handlers. Default 30s.
	// Messages still in flight after it are not acked, so they are delivered
	// again: nothing is lost, some work may repeat.
	CloseTimeout time.Duration

	// Logger receives the router's and the middleware's logs. Default: none.
	Logger watermill.LoggerAdapter

	// Consumer is who consumes (messaging system, consumer group, server
	// address, version), set once here for the whole stack; from a broker
	// opened with adapters.Open, b.ConsumerIdentity() fills it. New hands
	// each field to every middleware whose own field is empty: System and
	// ServerAddress to Tracing and Metrics; Group to Tracing, Metrics,
	// DeadLetter and CrashLoopGuard (part of every tracker key); Version
	// to DeadLetter. A middleware's own field, when set, overrides
	// Consumer for that middleware alone: spans and letters may then name
	// different groups, which is allowed (that is what an override is
	// for) and not checked. The zero value names nothing: Metrics then
	// takes Tracing's fields and CrashLoopGuard DeadLetter's group, as
	// when each is set by hand.
	Consumer antidote.ConsumerIdentity

	// Tracing configures the consumer span per delivery. Default: the global
	// TracerProvider, a no-op until the program installs one (see
	// telemetry.SetupFromEnv). Wrap DeadLetter.Publisher and
	// DelayedRetry.Scheduler with telemetry.NewPublisher / NewScheduler to
	// get their producer spans in the same trace.
	Tracing middleware.TracingConfig
	// DisableTracing leaves Tracing out of the stack. Default false.
	DisableTracing bool

	// Metrics configures the counters and the duration histogram. Default:
	// the global MeterProvider, a no-op until the program installs one.
	// New wires the duplicate and breaker hooks into it.
	Metrics middleware.MetricsConfig
	// DisableMetrics leaves Metrics out of the stack. Default false.
	DisableMetrics bool

	// Classifier tells permanent from transient errors for Retry and
	// DeadLetter when their own Classifier is unset. Default
	// poison.DefaultClassifier().
	Classifier poison.Classifier

	// DeadLetter configures the DLQ. Publisher is required: usually the
	// broker's own publisher (adapters.Broker.Publisher). Default DLQ topic:
	// "<topic>.dlq"; per handler via HandlerTopics.
	DeadLetter middleware.DeadLetterConfig

	// Retry configures the in-process retries of transient errors. The zero
	// value means 3 attempts, 100ms doubling backoff with jitter.
	Retry middleware.RetryConfig

	// CrashLoopGuard configures the crash-loop guard. DeadLetter is filled by New.
	// Tracker is required (unless DisableCrashLoopGuard): a durable
	// pgstore.NewDeliveryTracker or redisstore.NewDeliveryTracker.
	// poison.NewMemoryDeliveryTracker is an explicit opt-in, logged as not
	// durable: it forgets on exit, so a handler that kills the process
	// loops forever. MaxDeliveries default 3.
	CrashLoopGuard middleware.CrashLoopGuardConfig

	// DisableCrashLoopGuard leaves CrashLoopGuard out of the stack. Default false.
	DisableCrashLoopGuard bool

	// Breaker configures the DLQ-storm breaker: when most messages fail
	// transiently, consumption pauses instead of dead-lettering them all.
	Breaker middleware.BreakerConfig

	// DisableBreaker leaves the breaker out of the stack. Default false.
	DisableBreaker bool

	// The optional pieces below are off when nil and on when set: one
	// idiom for all four.

	// Idempotency, if non-nil, turns on idempotency keys (Store is then
	// required): a completed key is acked without running (a duplicate), a
	// failed attempt releases its key so the retry runs. It sits below
	// Retry, so each attempt claims again. If Idempotency is nil, keys are
	// not checked.
	Idempotency *middleware.IdempotencyConfig

	// Throttle, if non-nil, limits the handlers' rate, per-key rate,
	// concurrency or adaptive concurrency (at least one must be set). Waits
	// honour the message context, so shutdown never hangs on a token. If
	// Throttle is nil, nothing is limited.
	Throttle *middleware.ThrottleConfig

	// FloodGuard, if non-nil, reports (and with Drop, dead-letters) messages
	// that arrive more than a threshold of times in a window, naming their
	// producer. It sits outermost so it sees copies before Idempotency acks
	// them as duplicates, which is how a flood hides. With Drop and no
	// DeadLetter, New fills in the stack's DeadLetter. If FloodGuard is nil,
	// floods are not watched.
	FloodGuard *middleware.FloodGuardConfig

	// DelayedRetry, if non-nil, turns on non-blocking retries (Stages and
	// Scheduler are then required): after Retry's quick attempts, a message
	// still failing transiently moves to a delayed stage and the original
	// is acked (per-key order is given up for it). Scheduler: the broker's
	// (adapters.Broker.Scheduler). Call AddRetryRelays(r, cfg, topic) for
	// each topic: on Kafka it registers the stages' relays. If DelayedRetry
	// is nil, retries only block (order kept).
	DelayedRetry *middleware.DelayedRetryConfig
}

func (c *Config) setDefaults() {
	if c.CloseTimeout == 0 {
		c.CloseTimeout = 30 * time.Second
	}
	if c.Logger == nil {
		c.Logger = watermill.NopLogger{}
	}
	if c.Classifier == nil {
		c.Classifier = poison.DefaultClassifier()
	}
	if c.DeadLetter.Classifier == nil {
		c.DeadLetter.Classifier = c.Classifier
	}
	if c.DeadLetter.Logger == nil {
		c.DeadLetter.Logger = c.Logger
	}
	if c.Retry.Classifier == nil {
		c.Retry.Classifier = c.Classifier
	}
	if c.Retry.Logger == nil {
		c.Retry.Logger = c.Logger
	}
	if c.CrashLoopGuard.Logger == nil {
		c.CrashLoopGuard.Logger = c.Logger
	}
	if c.Breaker.Classifier == nil {
		c.Breaker.Classifier = c.Classifier
	}
	if c.Breaker.Logger == nil {
		c.Breaker.Logger = c.Logger
	}
	c.applyConsumer()
	// The optional pieces are the caller's: fill copies.
	if c.Idempotency != nil {
		ic := *c.Idempotency
		if ic.Logger == nil {
			ic.Logger = c.Logger
		}
		c.Idempotency = &ic
	}
	if c.Throttle != nil {
		tc := *c.Throttle
		c.Throttle = &tc
	}
	if c.FloodGuard != nil {
		fc := *c.FloodGuard
		if fc.Logger == nil {
			fc.Logger = c.Logger
		}
		c.FloodGuard = &fc
	}
	if c.DelayedRetry != nil {
		dc := *c.DelayedRetry
		if dc.Classifier == nil {
			dc.Classifier = c.Classifier
		}
		if dc.Logger == nil {
			dc.Logger = c.Logger
		}
		c.DelayedRetry = &dc
	}
}

// applyConsumer fills every middleware's empty identity field from
// Consumer, then, for what Consumer leaves empty, keeps the older copies
// (Tracing's into Metrics, DeadLetter's group into CrashLoopGuard), so a
// config that sets them by hand works as before.
func (c *Config) applyConsumer() {
	id := c.Consumer
	fill := func(field *string, v string) {
		if *field == "" {
			*field = v
		}
	}
	fill(&c.Tracing.System, id.System)
	fill(&c.Tracing.ConsumerGroup, id.Group)
	fill(&c.Tracing.ServerAddress, id.ServerAddress)
	fill(&c.Metrics.System, id.System)
	fill(&c.Metrics.ConsumerGroup, id.Group)
	fill(&c.Metrics.ServerAddress, id.ServerAddress)
	fill(&c.DeadLetter.ConsumerGroup, id.Group)
	fill(&c.DeadLetter.ConsumerVersion, id.Version)
	fill(&c.CrashLoopGuard.ConsumerGroup, id.Group)
	// The semconv metrics carry the same messaging.* attributes as the
	// spans unless the Metrics config names its own.
	fill(&c.Metrics.System, c.Tracing.System)
	fill(&c.Metrics.ConsumerGroup, c.Tracing.ConsumerGroup)
	fill(&c.Metrics.ServerAddress, c.Tracing.ServerAddress)
	fill(&c.CrashLoopGuard.ConsumerGroup, c.DeadLetter.ConsumerGroup)
}

// Validate reports a config that cannot work.
func (c Config) Validate() error {
	var errs []error
	if c.CloseTimeout < 0 {
		errs = append(errs, fmt.Errorf("router: CloseTimeout %s is negative; use a positive duration such as 30s", c.CloseTimeout))
	}
	if c.CrashLoopGuard.Tracker == nil && !c.DisableCrashLoopGuard {
		errs = append(errs, errors.New("router: CrashLoopGuard.Tracker is nil; pass a durable tracker (pgstore.NewDeliveryTracker or redisstore.NewDeliveryTracker), opt in to poison.NewMemoryDeliveryTracker (lost on exit: tests and demos), or set DisableCrashLoopGuard"))
	}
	if c.DeadLetter.Publisher == nil {
		errs = append(errs, errors.New("router: DeadLetter.Publisher is nil; pass the publisher of the broker the DLQ topics live on (adapters.Broker.Publisher)"))
	}
	if err := c.Retry.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("router: Retry: %w", err))
	}
	if c.Throttle != nil && !c.Throttle.Enabled() {
		errs = append(errs, errors.New("router: Throttle is set but limits nothing; set Rate, KeyRate, Concurrency or Adaptive, or leave Throttle nil"))
	}
	return errors.Join(errs...)
}

// New builds a router with the standard stack installed as router-level
// middleware, so it wraps every handler added later.
func New(cfg Config) (*message.Router, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	var err error
	var tracing *middleware.Tracing
	if !cfg.DisableTracing {
		if tracing, err = middleware.NewTracing(cfg.Tracing); err != nil {
			return nil, fmt.Errorf("router: %w", err)
		}
	}
	var metrics *middleware.Metrics // nil records nothing
	if !cfg.DisableMetrics {
		if metrics, err = middleware.NewMetrics(cfg.Metrics); err != nil {
			return nil, fmt.Errorf("router: %w", err)
		}
		if cfg.Idempotency != nil {
			onDup := cfg.Idempotency.OnDuplicate
			cfg.Idempotency.OnDuplicate = func(msg *message.Message, key string) {
				metrics.RecordDuplicate(msg.Context(), "")
				if onDup != nil {
					onDup(msg, key)
				}
			}
		}
		if cfg.Throttle != nil {
			onWait := cfg.Throttle.OnWait
			cfg.Throttle.OnWait = func(msg *message.Message, waited time.Duration) {
				metrics.RecordThrottleWait(msg.Context(), "", waited)
				if onWait != nil {
					onWait(msg, waited)
				}
			}
		}
		onState := cfg.Breaker.OnStateChange
		cfg.Breaker.OnStateChange = func(from, to string) {
			metrics.RecordBreakerState(context.Background(), from, to)
			if onState != nil {
				onState(from, to)
			}
		}
		onHold := cfg.Breaker.OnHold
		cfg.Breaker.OnHold = func(handler string, held bool) {
			metrics.RecordBreakerHold(context.Background(), handler, held)
			if onHold != nil {
				onHold(handler, held)
			}
		}
	}
	dl, err := middleware.NewDeadLetter(cfg.DeadLetter)
	if err != nil {
		return nil, fmt.Errorf("router: %w", err)
	}
	retry, err := middleware.NewRetry(cfg.Retry)
	if err != nil {
		return nil, fmt.Errorf("router: %w", err)
	}
	var delayed *middleware.DelayedRetry
	if cfg.DelayedRetry != nil {
		if delayed, err = middleware.NewDelayedRetry(*cfg.DelayedRetry); err != nil {
			return nil, fmt.Errorf("router: %w", err)
		}
	}
	var idem *middleware.Idempotency
	if cfg.Idempotency != nil {
		if idem, err = middleware.NewIdempotency(*cfg.Idempotency); err != nil {
			return nil, fmt.Errorf("router: %w", err)
		}
	}
	var throttle *middleware.Throttle
	if cfg.Throttle != nil {
		if throttle, err = middleware.NewThrottle(*cfg.Throttle); err != nil {
			return nil, fmt.Errorf("router: %w", err)
		}
	}
	var flood *middleware.FloodGuard
	if cfg.FloodGuard != nil {
		fc := *cfg.FloodGuard
		if fc.Drop && fc.DeadLetter == nil {
			fc.DeadLetter = dl
		}
		if flood, err = middleware.NewFloodGuard(fc); err != nil {
			return nil, fmt.Errorf("router: %w", err)
		}
	}
	var breaker *middleware.Breaker
	if !cfg.DisableBreaker {
		if breaker, err = middleware.NewBreaker(cfg.Breaker); err != nil {
			return nil, fmt.Errorf("router: %w", err)
		}
	}
	var guard *middleware.CrashLoopGuard
	if !cfg.DisableCrashLoopGuard {
		dc := cfg.CrashLoopGuard
		dc.DeadLetter = dl
		if _, inMemory := dc.Tracker.(*poison.MemoryDeliveryTracker); inMemory {
			cfg.Logger.Error("Crash-loop guard with an in-memory tracker: a message that kills the process is redelivered forever", antidote.ErrNotDurable, nil)
		}
		if guard, err = middleware.NewCrashLoopGuard(dc); err != nil {
			return nil, fmt.Errorf("router: %w", err)
		}
	}
	r, err := message.NewRouter(message.RouterConfig{CloseTimeout: cfg.CloseTimeout}, cfg.Logger)
	if err != nil {
		return nil, fmt.Errorf("router: %w", err)
	}
	// Before consuming a topic, make sure every name derived from it can
	// exist: a DLQ or retry stage that cannot would turn each failure into
	// a loop at run time.
	r.AddSubscriberDecorators(checkNames(cfg))
	// Outermost: a bug in a middleware itself becomes a nack, not a crash.
	r.AddMiddleware(wmiddleware.Recoverer)
	// Grow the message goroutine's stack once, here, instead of step by
	// step deep in the chain (see stack.Reserve).
	r.AddMiddleware(stack.Reserve)
	if tracing != nil {
		r.AddMiddleware(tracing.Middleware)
	}
	if metrics != nil {
		r.AddMiddleware(metrics.Middleware)
	}
	if flood != nil {
		r.AddMiddleware(flood.Middleware)
	}
	if guard != nil {
		r.AddMiddleware(guard.Middleware)
	}
	r.AddMiddleware(dl.Middleware)
	if breaker != nil {
		r.AddMiddleware(breaker.Middleware)
	}
	if delayed != nil {
		r.AddMiddleware(delayed.Middleware)
	}
	r.AddMiddleware(retry.Middleware)
	if idem != nil {
		r.AddMiddleware(idem.Middleware)
	}
	if throttle != nil {
		r.AddMiddleware(throttle.Middleware)
	}
	r.AddMiddleware(middleware.Recover)
	return r, nil
}
