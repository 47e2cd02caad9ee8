package hospital

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/antidote-mq/antidote/poison"
)

// CanaryConfig configures Canary.
type CanaryConfig struct {
	TreatConfig
	// Canaries is how many letters are replayed first. If Canaries is 0, 1.
	Canaries int
	// Settled reports whether everything replayed so far has been consumed
	// and the DLQ ingested since: e.g. the consumer group's lag on the
	// original topic and the hospital's on the DLQ are both 0. Canary polls
	// it every PollInterval. If Settled is nil, Canary waits Quiet instead
	// and takes no failure within it for success, which a slow consumer
	// can fool: give Settled when the broker's lag can be read.
	Settled func(ctx context.Context) (bool, error)
	// Quiet is the wait without Settled. If Quiet is 0, 30s.
	Quiet time.Duration
	// PollInterval between looks at the store (and Settled). If 0, 500ms.
	PollInterval time.Duration
	// Timeout bounds the wait for the canaries' outcome; past it Canary
	// stops without replaying the rest. If Timeout is 0, 5 minutes.
	Timeout time.Duration
}

func (c *CanaryConfig) setDefaults() {
	c.TreatConfig.setDefaults()
	if c.Canaries == 0 {
		c.Canaries = 1
	}
	if c.Quiet == 0 {
		c.Quiet = 30 * time.Second
	}
	if c.PollInterval == 0 {
		c.PollInterval = 500 * time.Millisecond
	}
	if c.Timeout == 0 {
		c.Timeout = 5 * time.Minute
	}
}

// Validate names every field that cannot work, in field order.
func (c CanaryConfig) Validate() error {
	errs := []error{c.TreatConfig.Validate()}
	if c.Publisher == nil {
		errs = append(errs, errors.New("hospital: CanaryConfig.Publisher is nil; a canary replay needs the broker's publisher"))
	}
	if _, ok := c.Store.(Store); c.Store != nil && !ok {
		errs = append(errs, errors.New("hospital: CanaryConfig.Store is a broker's DLQ read directly; a canary replay needs the hospital store, whose ingest sees a canary fail again"))
	}
	if c.Canaries < 0 {
		errs = append(errs, fmt.Errorf("hospital: CanaryConfig.Canaries %d is negative; use 1 or more", c.Canaries))
	}
	for name, d := range map[string]time.Duration{"Quiet": c.Quiet, "PollInterval": c.PollInterval, "Timeout": c.Timeout} {
		if d < 0 {
			errs = append(errs, fmt.Errorf("hospital: CanaryConfig.%s %s is negative", name, d))
		}
	}
	return errors.Join(errs...)
}

// CanaryResult is what a canary replay did.
type CanaryResult struct {
	// Canaries are the letters replayed first.
	Canaries Result
	// Relapsed are canaries that came back to the DLQ: the letter
	// replayed and the letter it became, with the new error.
	Relapsed []Relapse
	// Rest is the replay of the other letters: empty when a canary
	// relapsed or their outcome was not known in time.
	Rest Result
	// Stopped says why the rest was not replayed, or "".
	Stopped string
}

// Relapse is a canary that failed again.
type Relapse struct {
	Canary Letter // as it was replayed
	Again  Letter // the new letter, with its reason and error
}

func (r Relapse) String() string {
	return fmt.Sprintf("letter %d (%s) failed again as letter %d: %s: %s", r.Canary.ID, r.Canary.UUID, r.Again.ID, r.Again.Reason, r.Again.Error)
}

// Canary replays the first cfg.Canaries letters of ids, waits for their
// outcome, and replays the rest only if none came back: a fix that did not
// fix costs a few letters a trip to the DLQ, not the whole group. A canary
// came back when a letter with its UUID, replayed at least once, is ingested
// after the replay (an ingester must follow the DLQ meanwhile). The outcome
// is known once Settled says so (or after Quiet), and with a relapse at
// once: Canary stops at the first relapse it sees. Letters are treated as
// by Replay.
func Canary(ctx context.Context, cfg CanaryConfig, ids []int64) (CanaryResult, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return CanaryResult{}, err
	}
	var res CanaryResult
	n := min(cfg.Canaries, len(ids))
	// The newest letter id before the replay: a relapse is ingested after.
	var mark int64
	if page, err := cfg.Store.Letters(ctx, LetterQuery{Newest: true, Limit: 1}); err != nil {
		return res, err
	} else if len(page.Letters) > 0 {
		mark = page.Letters[0].ID
	}
	canaries := make([]Letter, 0, n)
	for _, id := range ids[:n] {
		l, err := cfg.Store.Letter(ctx, id)
		if err != nil {
			return res, err
		}
		canaries = append(canaries, l)
	}
	var err error
	if res.Canaries, err = Replay(ctx, cfg.TreatConfig, ids[:n]); err != nil {
		return res, err
	}
	if res.Canaries.Treated == 0 {
		res.Stopped = "no canary could be replayed"
		return res, nil
	}

	wait, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	quietUntil := time.Now().Add(cfg.Quiet)
	tick := time.NewTicker(cfg.PollInterval)
	defer tick.Stop()
	for {
		relapsed, err := relapses(wait, cfg.Store, canaries, mark)
		if err != nil && wait.Err() == nil {
			return res, err
		}
		if len(relapsed) > 0 {
			res.Relapsed = relapsed
			res.Stopped = fmt.Sprintf("%d of %d canaries failed again; the rest stays in the DLQ", len(relapsed), res.Canaries.Treated)
			return res, nil
		}
		settled := false
		if cfg.Settled != nil {
			if settled, err = cfg.Settled(wait); err != nil && wait.Err() == nil {
				return res, fmt.Errorf("hospital: canary: Settled: %w", err)
			}
		} else {
			settled = !time.Now().Before(quietUntil)
		}
		if settled {
			// One more look: a relapse ingested just before settling.
			if relapsed, err = relapses(wait, cfg.Store, canaries, mark); err == nil && len(relapsed) > 0 {
				continue
			}
			break
		}
		select {
		case <-wait.Done():
			if ctx.Err() != nil {
				return res, ctx.Err()
			}
			res.Stopped = fmt.Sprintf("the canaries' outcome was not known within %s; the rest stays in the DLQ", cfg.Timeout)
			return res, nil
		case <-tick.C:
		}
	}
	res.Rest, err = Replay(ctx, cfg.TreatConfig, ids[n:])
	return res, err
}

// relapses are the canaries of which a replayed copy was ingested after mark.
func relapses(ctx context.Context, s Ward, canaries []Letter, mark int64) ([]Relapse, error) {
	var out []Relapse
	for _, c := range canaries {
		page, err := s.Letters(ctx, LetterQuery{UUID: c.UUID, After: mark, Limit: 10})
		if err != nil {
			return nil, err
		}
		for _, again := range page.Letters {
			if again.ID > c.ID && again.DLQTopic == c.DLQTopic {
				full, err := s.Letter(ctx, again.ID)
				if err != nil {
					return nil, err
				}
				if full.Metadata[poison.KeyReplayCount] == "" {
					continue // the same UUID, not a replay: another message
				}
				out = append(out, Relapse{Canary: c, Again: full})
				break
			}
		}
	}
	return out, nil
}
