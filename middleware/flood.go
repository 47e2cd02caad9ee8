package middleware

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/poison"
)

// FloodAction is what the flood guard did with a flood arrival.
type FloodAction string

// The actions of FloodGuard.
const (
	// FloodProcessed: reported only; the handler ran (Drop is false).
	FloodProcessed FloodAction = "processed"
	// FloodDropped: acked without running the handler (Drop, no DeadLetter).
	FloodDropped FloodAction = "dropped"
	// FloodDeadLettered: sent to the DLQ with reason rejected_by_flood_guard
	// without running the handler (Drop with DeadLetter).
	FloodDeadLettered FloodAction = "dead_lettered"
)

// FloodGuardConfig configures NewFloodGuard. The zero value reports floods
// and drops nothing.
type FloodGuardConfig struct {
	// Detector counts arrivals. Default: poison.NewFloodDetector with its
	// defaults (more than 20 arrivals of one message within 10s). Share one
	// detector between the guards of a router (or install the guard as
	// router middleware) so a producer's report interval is shared.
	Detector *poison.FloodDetector
	// Drop stops flood arrivals from reaching the handler. Default false:
	// they are reported and processed (an idempotent handler below acks them
	// as duplicates anyway, which is how a flood hides). The first
	// Threshold arrivals within the window are always processed.
	Drop bool
	// DeadLetter, with Drop, receives the dropped arrivals with reason
	// poison.ReasonFloodGuard, so nothing is lost and the DLQ tooling can
	// group them by producer; if the DLQ publish fails the message is
	// nacked. Without it, dropped arrivals are acked and gone: right only
	// when a copy that got through was processed, since an arrival past the
	// threshold of a message whose earlier copies all failed would be lost.
	DeadLetter *DeadLetter
	// OnFlood, when set, is called for every flood arrival with the verdict
	// and the action taken, for metrics (counts by producer). It must not
	// block and may be called concurrently. If nil, nothing is called.
	OnFlood func(v poison.FloodVerdict, action FloodAction)
	// Logger gets one error line per flooding producer per
	// FloodDetectorConfig.ReportInterval naming the producer, the message
	// and the rate. Default watermill.NopLogger.
	Logger watermill.LoggerAdapter
}

func (c *FloodGuardConfig) setDefaults() {
	if c.Logger == nil {
		c.Logger = watermill.NopLogger{}
	}
}

// Validate reports every invalid field of c, after defaults are applied
// (NewFloodGuard applies them first), in field order, joined with
// errors.Join. The zero value is valid.
func (c FloodGuardConfig) Validate() error {
	var errs []error
	if c.DeadLetter != nil && !c.Drop {
		errs = append(errs, errors.New("antidote: FloodGuardConfig.DeadLetter is set but Drop is false: set Drop to dead-letter flood arrivals, or leave DeadLetter nil to only report them"))
	}
	return errors.Join(errs...)
}

// FloodGuard reports the redelivery flood (the same message arriving far
// more often than redelivery explains, e.g. a sweeper re-sending a batch in a
// loop) naming the producer, and optionally keeps the repeats away from the
// handler. Build it with NewFloodGuard.
//
// Place it above Idempotency, or duplicates are acked before it sees them
// and the flood stays invisible; above CrashLoopGuard too, so flood arrivals it
// drops cost no durable write. Suggested: Tracing → Metrics → FloodGuard →
// CrashLoopGuard → DeadLetter → Retry → Idempotency → Throttle → Recover.
type FloodGuard struct {
	cfg FloodGuardConfig
	det *poison.FloodDetector
}

// NewFloodGuard fills cfg's defaults, validates it (see
// FloodGuardConfig.Validate) and returns the guard.
func NewFloodGuard(cfg FloodGuardConfig) (*FloodGuard, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	det := cfg.Detector
	if det == nil {
		var err error
		if det, err = poison.NewFloodDetector(poison.FloodDetectorConfig{}); err != nil {
			return nil, err
		}
	}
	return &FloodGuard{cfg: cfg, det: det}, nil
}

// Detector returns the detector in use.
func (g *FloodGuard) Detector() *poison.FloodDetector { return g.det }

// Middleware returns the guarded handler.
func (g *FloodGuard) Middleware(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		v := g.det.Observe(msg)
		if !v.Flood {
			return h(msg)
		}
		action := FloodProcessed
		switch {
		case g.cfg.Drop && g.cfg.DeadLetter != nil:
			action = FloodDeadLettered
		case g.cfg.Drop:
			action = FloodDropped
		}
		if v.Report {
			g.report(msg, v, action)
		}
		if g.cfg.OnFlood != nil {
			g.cfg.OnFlood(v, action)
		}
		switch action {
		case FloodDropped:
			return nil, nil
		case FloodDeadLettered:
			f := poison.Failure{
				Reason: poison.ReasonFloodGuard,
				Err: fmt.Errorf("%w: message %s arrived %d times within %s (%.1f/s) from producer %s",
					poison.ErrFlood, v.Key, v.Arrivals, v.Window, v.Rate, v.Producer),
			}
			if err := g.cfg.DeadLetter.Send(context.WithoutCancel(msg.Context()), msg, f); err != nil {
				// Deferred, so a DeadLetter above nacks it instead of
				// dead-lettering it a second time.
				return nil, poison.Defer(fmt.Errorf("antidote: flood arrival %s not dead-lettered, nacking it: %w", msg.UUID, err))
			}
			return nil, nil
		}
		return h(msg)
	}
}

func (g *FloodGuard) report(msg *message.Message, v poison.FloodVerdict, action FloodAction) {
	fields := watermill.LogFields{
		"producer":                  v.Producer,
		"message_key":               v.Key,
		"message_uuid":              msg.UUID,
		"topic":                     message.SubscribeTopicFromCtx(msg.Context()),
		"handler_name":              message.HandlerNameFromCtx(msg.Context()),
		"arrivals_in_window":        v.Arrivals,
		"window":                    v.Window.String(),
		"rate_per_s":                strconv.FormatFloat(v.Rate, 'f', 1, 64),
		"repeats_since_last_report": v.Repeats,
		"flooding_messages":         v.Messages,
		"action":                    string(action),
	}
	if !v.Since.IsZero() {
		fields["since"] = v.Since.UTC().Format("2006-01-02T15:04:05.000Z07:00")
	}
	g.cfg.Logger.Error(fmt.Sprintf("Redelivery flood from producer %s: message %s arrived %d times in %s (%.1f/s)",
		v.Producer, v.Key, v.Arrivals, v.Window, v.Rate), poison.ErrFlood, traceFields(msg.Context(), fields))
}
