package hospital

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"golang.org/x/time/rate"

	"github.com/antidote-mq/antidote/poison"
)

// TreatConfig configures Replay and Purge.
type TreatConfig struct {
	// Store holds the letters: the hospital store, or a broker's DLQ read
	// directly (dlq.Open). Required.
	Store Ward
	// Publisher sends replays (Replay only; required there). Wrap it with
	// telemetry.NewPublisher for a producer span per replay.
	Publisher message.Publisher
	// Actor is who treats the letters, written to the audit table. If
	// Actor is empty, "unknown".
	Actor string
	// Rate caps replays per second. If Rate is 0, 100: replaying a large
	// group at full speed would be a flood of its own.
	Rate float64
	// Now stamps replays. If Now is nil, time.Now.
	Now func() time.Time
	// To sends every replay to this topic instead of each letter's
	// original topic. If To is empty, the original topic.
	To string
	// Progress, when not nil, is called after each letter treated with the
	// number treated so far.
	Progress func(done int)
	// ClaimCheck reads back the payload of a letter that still refers to
	// a claim (ingested without the claim-check store, or read from a
	// broker's DLQ), so it is replayed whole. If ClaimCheck is nil, such a
	// letter is not replayed (its empty payload would lose the message):
	// it fails with the reason, and the others go on.
	ClaimCheck poison.ClaimCheck
}

func (c *TreatConfig) setDefaults() {
	if c.Actor == "" {
		c.Actor = "unknown"
	}
	if c.Rate == 0 {
		c.Rate = 100
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Validate names every field that cannot work, in field order.
func (c TreatConfig) Validate() error {
	var errs []error
	if c.Store == nil {
		errs = append(errs, errors.New("hospital: TreatConfig.Store is nil; pass the hospital store"))
	}
	if c.Rate < 0 {
		errs = append(errs, fmt.Errorf("hospital: TreatConfig.Rate %v is negative; use e.g. 100", c.Rate))
	}
	return errors.Join(errs...)
}

// Result counts what a treatment did.
type Result struct {
	// Treated letters (replayed or purged), Skipped ones another treatment
	// got first.
	Treated, Skipped int
	// Failed are the letters that could not be treated, each with why; they
	// stay dead. A failed letter never stops the others.
	Failed []LetterError
}

// LetterError is why one letter could not be treated.
type LetterError struct {
	ID  int64
	Err error
}

func (e LetterError) Error() string { return fmt.Sprintf("letter %d: %v", e.ID, e.Err) }

// Err joins the failures, or nil.
func (r Result) Err() error {
	errs := make([]error, len(r.Failed))
	for i, f := range r.Failed {
		errs[i] = f
	}
	return errors.Join(errs...)
}

// Select lists the ids of the dead letters q selects (q.State is ignored),
// oldest first, all pages.
func Select(ctx context.Context, s Ward, q LetterQuery) ([]int64, error) {
	q.State, q.Newest, q.After, q.Limit = StateDead, false, 0, 1000
	var ids []int64
	for {
		page, err := s.Letters(ctx, q)
		if err != nil {
			return ids, err
		}
		for _, l := range page.Letters {
			ids = append(ids, l.ID)
		}
		if page.Next == 0 {
			return ids, nil
		}
		q.After = page.Next
	}
}

// ReplayMessage is the message that sends l back to its topic: the
// letter's UUID, payload and original metadata, without its failure
// keys, one more replay counted (poison.Replay).
func ReplayMessage(l Letter, now time.Time) *message.Message {
	return poison.Replay(LetterMessage(l), now)
}

// LetterMessage is l as the message it was in its DLQ: its UUID, payload
// and metadata.
func LetterMessage(l Letter) *message.Message {
	m := message.NewMessage(l.UUID, l.Payload)
	for k, v := range l.Metadata {
		m.Metadata.Set(k, v)
	}
	return m
}

// Replay sends each letter of ids back to its original topic and marks it
// replayed, each in its own treatment with the letter taken (Ward.Treat):
// a purge racing the replay gets the letters the replay has not, never the
// same one. A letter that cannot be replayed (no original topic, its
// payload in a claim that cannot be read, the publish failed) stays dead
// and is reported in Result.Failed with the reason; the others go on. If
// the ward's commit fails after the publish, the letter stays dead and a
// later replay sends it again: at least once, as every delivery (the
// consumer's idempotency skips the copy, which keeps its UUID). On a
// Kafka DLQ read directly the publish and the commit are one transaction.
func Replay(ctx context.Context, cfg TreatConfig, ids []int64) (Result, error) {
	cfg.setDefaults()
	err := cfg.Validate()
	if err == nil && cfg.Publisher == nil {
		err = errors.New("hospital: TreatConfig.Publisher is nil; Replay needs the broker's publisher")
	}
	if err != nil {
		return Result{}, err
	}
	limiter := rate.NewLimiter(rate.Limit(cfg.Rate), 1)
	return treat(ctx, cfg, ids, StateReplayed, func(l Letter) error {
		topic := cmp.Or(cfg.To, l.OriginalTopic)
		if topic == "" {
			return fmt.Errorf("it names no original topic (%s): nowhere to replay it; replay it with a destination (--to)", poison.KeyOriginalTopic)
		}
		if topic == l.DLQTopic {
			return fmt.Errorf("it would be replayed into the DLQ it came from (%s)", topic)
		}
		m := LetterMessage(l)
		if key := l.Metadata[poison.KeyClaimCheck]; key != "" {
			if cfg.ClaimCheck == nil {
				return fmt.Errorf("its payload is in the claim check %s: configure the claim-check store (--claim-check) to replay it whole", key)
			}
			whole, err := poison.ResolveClaim(ctx, cfg.ClaimCheck, m)
			if err != nil {
				return fmt.Errorf("its payload cannot be read back: %w", err)
			}
			m = whole
		}
		if err := limiter.Wait(ctx); err != nil {
			return err
		}
		return cfg.Publisher.Publish(topic, poison.Replay(m, cfg.Now()))
	}, "replayed to "+cmp.Or(cfg.To, "original topic"))
}

// Purge marks each letter of ids purged (Store.Treat): it stays in the
// store, out of every count of waiting letters, with who purged it when.
func Purge(ctx context.Context, cfg TreatConfig, ids []int64) (Result, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return Result{}, err
	}
	return treat(ctx, cfg, ids, StatePurged, nil, "purged")
}

func treat(ctx context.Context, cfg TreatConfig, ids []int64, to State, do func(Letter) error, detail string) (Result, error) {
	var res Result
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		err := cfg.Store.Treat(ctx, id, to, cfg.Actor, detail, do)
		switch {
		case err == nil:
			res.Treated++
			if cfg.Progress != nil {
				cfg.Progress(res.Treated)
			}
		case errors.Is(err, ErrNotDead):
			res.Skipped++
		case ctx.Err() != nil:
			return res, ctx.Err()
		case errors.Is(err, ErrTakenOver):
			return res, err
		default:
			res.Failed = append(res.Failed, LetterError{ID: id, Err: err})
		}
	}
	return res, nil
}
