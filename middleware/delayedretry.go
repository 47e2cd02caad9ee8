package middleware

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/poison"
)

// DelayedRetryConfig configures DelayedRetry.
type DelayedRetryConfig struct {
	// Stages are the delays of the successive retry stages, e.g. 10s, 1m,
	// 10m. Required: if empty, NewDelayedRetry fails. After the last stage
	// the message goes to the DLQ.
	Stages []time.Duration
	// Scheduler moves a message to its next stage: adapters.Broker.Scheduler.
	// Required: if nil, NewDelayedRetry fails.
	Scheduler antidote.Scheduler
	// ScheduleTimeout bounds one schedule. Default (0) 10s,
	// DefaultScheduleTimeout. A schedule that fails
	// nacks the message (it stays where it was), never drops it.
	ScheduleTimeout time.Duration
	// Classifier: permanent errors skip the stages and go straight to the
	// DLQ. Default poison.DefaultClassifier().
	Classifier poison.Classifier
	// Handlers limits delayed retries to these handler names; the others
	// keep blocking retries (and their order). Default: every handler.
	Handlers []string
	// OnScheduled, when set, is called for each message moved to a stage.
	// If nil, nothing is called.
	OnScheduled func(stage int, after time.Duration)
	// Logger gets one line per message moved to a stage and per failed
	// schedule. Default watermill.NopLogger.
	Logger watermill.LoggerAdapter
}

// DelayedRetry is the non-blocking retry: after the quick in-process
// attempts (Retry, below it) a message that still fails transiently moves to
// a delayed retry stage and the original is acked, so one bad message does
// not hold its partition or queue while it waits. Stage and due time travel
// in metadata (antidote.MetadataRetryStage, antidote.MetadataRetryDue).
//
// The trade-off: a retried message comes back after newer ones, so per-key
// order is given up for it. Handlers that need order keep blocking retries
// (Retry alone, the default). Place it below DeadLetter and the breaker and
// above Retry (router.New does); on Kafka also register the retry-topic
// relays (router.AddRetryRelays).
type DelayedRetry struct {
	cfg DelayedRetryConfig
}

// DefaultScheduleTimeout is DelayedRetryConfig.ScheduleTimeout when zero.
const DefaultScheduleTimeout = 10 * time.Second

func (c *DelayedRetryConfig) setDefaults() {
	if c.ScheduleTimeout == 0 {
		c.ScheduleTimeout = DefaultScheduleTimeout
	}
	if c.Classifier == nil {
		c.Classifier = poison.DefaultClassifier()
	}
	if c.Logger == nil {
		c.Logger = watermill.NopLogger{}
	}
}

// Validate reports every invalid field of c, after defaults are applied
// (NewDelayedRetry applies them first), in field order, joined with
// errors.Join. Stages and Scheduler are required; the other zero fields
// are valid: they stand for their defaults.
func (c DelayedRetryConfig) Validate() error {
	var errs []error
	if len(c.Stages) == 0 {
		errs = append(errs, errors.New("antidote: DelayedRetryConfig.Stages is empty: list the delays, e.g. 10s, 1m, 10m"))
	}
	for i, d := range c.Stages {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("antidote: DelayedRetryConfig.Stages[%d] is %s: use a positive delay", i, d))
		}
	}
	if c.Scheduler == nil {
		errs = append(errs, errors.New("antidote: DelayedRetryConfig.Scheduler is nil: pass the broker's Scheduler() (adapters.Broker.Scheduler)"))
	}
	if c.ScheduleTimeout < 0 {
		errs = append(errs, fmt.Errorf("antidote: DelayedRetryConfig.ScheduleTimeout is %s: set a positive duration (0 picks the default %s)", c.ScheduleTimeout, DefaultScheduleTimeout))
	}
	return errors.Join(errs...)
}

// NewDelayedRetry fills cfg's defaults, validates it (see
// DelayedRetryConfig.Validate) and returns the middleware.
func NewDelayedRetry(cfg DelayedRetryConfig) (*DelayedRetry, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &DelayedRetry{cfg: cfg}, nil
}

// Stage reads the message's delayed-retry stage (0 when it has none).
func Stage(msg *message.Message) int {
	n, err := strconv.Atoi(msg.Metadata.Get(antidote.MetadataRetryStage))
	if err != nil || n < 0 {
		return 0
	}
	return n
}

// Middleware returns the delayed-retry handler.
func (d *DelayedRetry) Middleware(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		ctx := msg.Context()
		produced, err := h(msg)
		if err == nil {
			return produced, nil
		}
		msg.SetContext(ctx) // the delivery's, not one a middleware below left
		if deliveryOver(msg) || errors.Is(err, poison.ErrDeferred) || d.cfg.Classifier.Classify(err) == poison.ClassPermanent {
			return nil, err
		}
		if len(d.cfg.Handlers) > 0 && !slices.Contains(d.cfg.Handlers, message.HandlerNameFromCtx(msg.Context())) {
			return nil, err
		}
		stage := Stage(msg)
		if stage > len(d.cfg.Stages) {
			// No stage of ours wrote it: a producer's (or a longer list's
			// before a deploy). Believed, it would skip every stage.
			stage = 0
		}
		if stage == len(d.cfg.Stages) {
			return nil, err // the last stage failed too: DeadLetter takes it
		}
		topic := message.SubscribeTopicFromCtx(msg.Context())
		if topic == "" {
			return nil, err
		}
		after := d.cfg.Stages[stage]
		next := message.NewMessage(msg.UUID, append([]byte(nil), msg.Payload...))
		for k, v := range msg.Metadata {
			next.Metadata.Set(k, v)
		}
		next.Metadata.Set(antidote.MetadataRetryStage, strconv.Itoa(stage+1))
		// Our own timeout, the message's trace: the next stage's consumer
		// span continues this trace (through the scheduler's producer span
		// when it is decorated with telemetry.NewScheduler).
		traced := withTraceOf(context.Background(), msg.Context())
		stampTraceparent(traced, next.Metadata)
		// Not the timeout context: a scheduler may publish after Schedule
		// returned (the memory one does, from a timer).
		next.SetContext(traced)
		ctx, cancel := context.WithTimeout(traced, d.cfg.ScheduleTimeout)
		defer cancel()
		if serr := d.cfg.Scheduler.Schedule(ctx, topic, next, after); serr != nil {
			if antidote.IsLimit(serr) {
				// It can never be moved (the stage's metadata pushes it over
				// the broker's limit, or the stage cannot exist): holding it
				// would loop. DeadLetter takes it as it is.
				d.cfg.Logger.Error("Message cannot move to a delayed retry stage; dead-lettering it instead", serr, traceFields(msg.Context(), watermill.LogFields{
					"message_uuid": msg.UUID, "topic": topic, "stage": stage + 1,
				}))
				return nil, err
			}
			// Not moved: keep it where it is (nack), never drop it.
			return nil, poison.Defer(fmt.Errorf("antidote: moving message %s to retry stage %d failed: %w (handler error: %w)", msg.UUID, stage+1, serr, err))
		}
		d.cfg.Logger.Info("Message moved to a delayed retry stage", traceFields(msg.Context(), watermill.LogFields{
			"message_uuid": msg.UUID, "topic": topic, "stage": stage + 1, "after": after.String(), "err": err.Error(),
		}))
		noteRetryScheduled(msg.Context(), stage+1, after, err)
		if d.cfg.OnScheduled != nil {
			d.cfg.OnScheduled(stage+1, after)
		}
		return nil, nil
	}
}
