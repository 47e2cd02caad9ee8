package hospital

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// AutoCanaryConfig configures AutoCanary.
type AutoCanaryConfig struct {
	CanaryConfig
	// Version is the version of a handler's consumer running now. If
	// Version is nil, Store.LatestVersion: the version of the newest
	// letter of that handler. A new version that dead-letters nothing at
	// all is then never seen; give Version when the deployment can tell
	// (a build-info metric, a config service).
	Version func(ctx context.Context, handler string) (string, error)
	// Interval between passes of AutoCanary. If Interval is 0, a minute.
	Interval time.Duration
}

// AutoOutcome is what one pass did to one group.
type AutoOutcome struct {
	Group   Group
	Version string // the version the canaries ran against
	Result  CanaryResult
	Err     error
}

// Outcome is a one-line summary, recorded by FinishCanary.
func (o AutoOutcome) Outcome() string {
	switch {
	case o.Err != nil:
		return "error: " + o.Err.Error()
	case o.Result.Stopped != "":
		return "stopped: " + o.Result.Stopped
	}
	return fmt.Sprintf("replayed %d", o.Result.Canaries.Treated+o.Result.Rest.Treated)
}

// AutoCanary runs AutoCanaryOnce every cfg.Interval until ctx is done;
// report, when not nil, gets each outcome.
func AutoCanary(ctx context.Context, cfg AutoCanaryConfig, report func(AutoOutcome)) error {
	if cfg.Interval == 0 {
		cfg.Interval = time.Minute
	}
	if cfg.Interval < 0 {
		return fmt.Errorf("hospital: AutoCanaryConfig.Interval %s is negative; use e.g. 1m", cfg.Interval)
	}
	for {
		outcomes, err := AutoCanaryOnce(ctx, cfg)
		for _, o := range outcomes {
			if report != nil {
				report(o)
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(cfg.Interval):
		}
	}
}

// AutoCanaryOnce looks at every group with dead letters once: where the
// consumer of its handler runs a version other than the one that sent the
// group's latest letter, and the group was not canaried at that version
// before (Store.ClaimCanary: never twice, however many hospitals run), it
// replays the group with Canary and records the outcome. A group that
// fails again is left until the next version.
func AutoCanaryOnce(ctx context.Context, cfg AutoCanaryConfig) ([]AutoOutcome, error) {
	cfg.CanaryConfig.setDefaults()
	if err := cfg.CanaryConfig.Validate(); err != nil {
		return nil, err
	}
	store := cfg.Store.(Store) // Validate made sure
	version := cfg.Version
	if version == nil {
		version = store.LatestVersion
	}
	var groups []Group
	for q := (GroupQuery{Order: ByCount, Limit: 1000}); ; q.Offset += q.Limit {
		page, err := cfg.Store.Groups(ctx, q)
		if err != nil {
			return nil, err
		}
		groups = append(groups, page.Groups...)
		if len(page.Groups) < q.Limit {
			break
		}
	}
	var out []AutoOutcome
	var errs []error
	for _, g := range groups {
		v, err := version(ctx, g.Fingerprint.Handler)
		if err != nil {
			errs = append(errs, fmt.Errorf("hospital: version of %s: %w", g.Fingerprint.Handler, err))
			continue
		}
		if v == "" || v == g.ConsumerVersion {
			continue // no newer consumer seen
		}
		claimed, err := store.ClaimCanary(ctx, g.Fingerprint.ID, v)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !claimed {
			continue
		}
		o := AutoOutcome{Group: g, Version: v}
		ids, err := Select(ctx, cfg.Store, LetterQuery{Fingerprint: g.Fingerprint.ID})
		if err == nil {
			o.Result, err = Canary(ctx, cfg.CanaryConfig, ids)
		}
		o.Err = err
		if err := store.FinishCanary(context.WithoutCancel(ctx), g.Fingerprint.ID, v, o.Outcome()); err != nil {
			errs = append(errs, err)
		}
		out = append(out, o)
		if ctx.Err() != nil {
			break
		}
	}
	return out, errors.Join(errs...)
}
