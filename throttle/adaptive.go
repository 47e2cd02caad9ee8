package throttle

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of AdaptiveConfig.
const (
	DefaultAdaptiveInitialLimit = 10
	DefaultAdaptiveMinLimit     = 1
	DefaultAdaptiveMaxLimit     = 1000
	DefaultAdaptiveTolerance    = 1.3
	DefaultAdaptiveBackoff      = 0.9
	DefaultAdaptiveMaxErrorRate = 0.1
	DefaultAdaptiveMinWindow    = 20
	DefaultAdaptiveBaseline     = 30 * time.Second
	DefaultAdaptiveLatencyNoise = time.Millisecond
)

// AdaptiveConfig configures an AdaptiveLimiter. The zero value is usable:
// every zero field takes its default.
type AdaptiveConfig struct {
	// InitialLimit is the concurrency limit before any measurement.
	// Default 10. Start low when the downstream is fragile: the limit grows
	// by one per window, so it reaches the right value after a few hundred
	// calls either way.
	InitialLimit int

	// MinLimit is the floor the limit never goes below. Default 1: even a
	// downstream in trouble gets one call at a time, so the limiter notices
	// when it recovers.
	MinLimit int

	// MaxLimit is the ceiling. Default 1000. Also caps the damage while the
	// limiter learns a new downstream.
	MaxLimit int

	// Tolerance is how much slower than its baseline (the fastest recent
	// window) the downstream may get before the limit backs off: a window
	// whose median latency exceeds Tolerance × baseline shrinks the limit.
	// Default 1.3. Lower stays closer to the best concurrency but mistakes
	// ordinary latency noise for congestion more often (needless backoffs);
	// higher tolerates more queueing before reacting. Must be > 1.
	Tolerance float64

	// Backoff multiplies the limit on congestion (the "multiplicative
	// decrease"). Default 0.9: gentle, so one noisy window costs little.
	// Lower reacts harder to overload and takes longer to climb back.
	// Must be in (0, 1).
	Backoff float64

	// MaxErrorRate is the fraction of failed calls in a window above which
	// the limit backs off, whatever the latency. Default 0.1. Only report
	// failures that mean overload (timeouts, "too many connections", 429s):
	// a poison message is not the downstream's fault. Must be in (0, 1];
	// 1 disables the error signal.
	MaxErrorRate float64

	// MinWindow is the least number of calls per decision window. A window
	// holds max(MinWindow, limit) calls, roughly one round of every slot
	// (TCP's "once per round trip"). Default 20. Larger windows measure
	// latency more precisely and react more slowly.
	MinWindow int

	// BaselineWindow is how long the fastest window latency is remembered
	// as the baseline; every BaselineWindow/2 one probe window runs at half
	// the limit to measure it afresh. Default 30s. If the downstream gets
	// slower for good (a bigger index scan, a slower replica), the limit
	// shrinks until the old baseline is forgotten, at most BaselineWindow,
	// then climbs back. Shorter forgets and probes sooner (each probe costs
	// one window at half concurrency); too long keeps a limiter that started
	// inside congestion there for longer.
	BaselineWindow time.Duration

	// LatencyNoise is a latency rise ignored whatever the ratio. Default
	// 1ms: scheduling jitter on a busy machine. Handlers much faster than
	// this gain nothing from an adaptive limit anyway.
	LatencyNoise time.Duration

	// OnLimit, when set, is called after every change of the limit with the
	// new value, for metrics and logs. It runs on the caller's goroutine of
	// the call that closed the window and must not block. If nil, nothing
	// is called.
	OnLimit func(limit int)
}

func (c *AdaptiveConfig) setDefaults() {
	if c.InitialLimit == 0 {
		c.InitialLimit = DefaultAdaptiveInitialLimit
	}
	if c.MinLimit == 0 {
		c.MinLimit = DefaultAdaptiveMinLimit
	}
	if c.MaxLimit == 0 {
		c.MaxLimit = DefaultAdaptiveMaxLimit
	}
	if c.Tolerance == 0 {
		c.Tolerance = DefaultAdaptiveTolerance
	}
	if c.Backoff == 0 {
		c.Backoff = DefaultAdaptiveBackoff
	}
	if c.MaxErrorRate == 0 {
		c.MaxErrorRate = DefaultAdaptiveMaxErrorRate
	}
	if c.MinWindow == 0 {
		c.MinWindow = DefaultAdaptiveMinWindow
	}
	if c.BaselineWindow == 0 {
		c.BaselineWindow = DefaultAdaptiveBaseline
	}
	if c.LatencyNoise == 0 {
		c.LatencyNoise = DefaultAdaptiveLatencyNoise
	}
}

// Validate reports every invalid field of c, after defaults are applied
// (NewAdaptiveLimiter applies them first), in field order, joined with
// errors.Join. A zero field is valid: it stands for its default, which
// Validate uses in the checks that compare fields.
func (c AdaptiveConfig) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("throttle: AdaptiveConfig."+format, args...))
	}
	// The limits as NewAdaptiveLimiter will use them.
	initial := orDefault(c.InitialLimit, DefaultAdaptiveInitialLimit)
	minLimit := orDefault(c.MinLimit, DefaultAdaptiveMinLimit)
	maxLimit := orDefault(c.MaxLimit, DefaultAdaptiveMaxLimit)
	if initial < minLimit || initial > maxLimit {
		bad("InitialLimit (%d) is outside [MinLimit %d, MaxLimit %d]: pick a value in that range", initial, minLimit, maxLimit)
	}
	if minLimit < 1 {
		bad("MinLimit is %d: set 1 or more", minLimit)
	}
	if maxLimit < minLimit {
		bad("MaxLimit (%d) is below MinLimit (%d): raise MaxLimit", maxLimit, minLimit)
	}
	if c.Tolerance != 0 && !(c.Tolerance > 1) {
		bad("Tolerance is %v: set a latency ratio above 1, such as %v", c.Tolerance, DefaultAdaptiveTolerance)
	}
	if c.Backoff != 0 && !(c.Backoff > 0 && c.Backoff < 1) {
		bad("Backoff is %v: set a factor between 0 and 1, such as %v", c.Backoff, DefaultAdaptiveBackoff)
	}
	if c.MaxErrorRate != 0 && !(c.MaxErrorRate > 0 && c.MaxErrorRate <= 1) {
		bad("MaxErrorRate is %v: set a fraction in (0, 1], such as %v (1 disables the error signal)", c.MaxErrorRate, DefaultAdaptiveMaxErrorRate)
	}
	if c.MinWindow < 0 {
		bad("MinWindow is %d: set 1 or more (0 picks the default %d)", c.MinWindow, DefaultAdaptiveMinWindow)
	}
	if c.BaselineWindow < 0 {
		bad("BaselineWindow is %s: set a positive duration such as 30s", c.BaselineWindow)
	}
	if c.LatencyNoise < 0 {
		bad("LatencyNoise is %s: set a positive duration such as 1ms", c.LatencyNoise)
	}
	return errors.Join(errs...)
}

// AdaptiveLimiter is a concurrency limit that finds the downstream's best
// concurrency by itself and follows it when it changes.
//
// The algorithm is AIMD driven by a latency gradient. Calls are grouped in
// windows of max(MinWindow, limit) calls, all admitted under the same limit.
// At the end of a window:
//
//   - if more than MaxErrorRate of its calls failed, or its median latency
//     is above Tolerance × baseline (the fastest window median of the last
//     BaselineWindow), the limit is multiplied by Backoff;
//   - otherwise, if the window actually used the whole limit, the limit
//     grows by one (a window that never reached the limit says nothing
//     about a higher one, so an idle consumer does not inflate it);
//   - calls admitted under an older limit are ignored: they measured that.
//
// A baseline measured while the limiter itself overloads the downstream
// (it started too high, or the downstream's capacity fell) would make that
// congestion look normal. So, like TCP BBR's ProbeRTT, after the second
// window and then every BaselineWindow/2, one window runs at half the limit:
// its median latency refreshes the baseline, and the limit goes back to
// where it was, to be judged against the new baseline. Each probe halves the
// concurrency an overloading limiter can hide behind, and a probe that finds
// the downstream much faster at half the concurrency (by more than
// Tolerance) is repeated a few windows later, so a limit that started far
// too high comes down in seconds.
//
// Why this mix rather than pure AIMD or a pure gradient limiter:
//
//   - Pure AIMD (Netflix's AIMDLimit, TCP Reno) needs a congestion signal,
//     which for a database or an HTTP service is not a dropped packet but a
//     latency threshold that somebody has to know and keep up to date.
//     Measuring the latency against the downstream's own recent best makes
//     the threshold relative, so nothing needs tuning per downstream.
//   - Pure gradient limiters (Netflix's Gradient2, Vegas) set the limit
//     from the latency ratio directly (limit × baseline/latency + queue).
//     They converge fast from far away, but the ratio is noisy, so the limit
//     jumps; and several consumers sharing a downstream each settle
//     wherever they started. Additive increase with multiplicative decrease
//     is the linear control law that converges to an efficient and fair
//     share from any start (Chiu and Jain, 1989), the reason TCP uses it.
//
// The price is a sawtooth: the limit climbs one per window until the
// latency crosses the tolerance, then drops by 10%. With a downstream whose
// latency is flat up to its best concurrency and rises past it, the limit
// oscillates just above that point (see docs/benchmarks.md, made with
// bench/adaptive).
//
// It starts no goroutine and needs no Close.
type AdaptiveLimiter struct {
	cfg AdaptiveConfig
	g   gate
	now func() time.Time // time.Now; replaced in tests by a simulated clock

	mu          sync.Mutex
	limit       float64 // fractional, so 0.9× and +1 compose; the gate gets floor
	gen         uint64  // bumped on every limit change
	latencies   []time.Duration
	samples     int
	failures    int
	maxInFlight int
	lastMedian  time.Duration
	windows     int     // windows closed so far
	probing     bool    // the current window is a baseline probe
	saved       float64 // the limit to restore after the probe
	probeIn     int     // windows until an early probe; 0: none planned

	// The baseline is a sliding minimum kept in two halves of BaselineWindow:
	// min(baseCur, basePrev) covers between half and all of it.
	baseCur, basePrev time.Duration
	baseRotated       time.Time
}

const noBaseline = time.Duration(math.MaxInt64)

// NewAdaptiveLimiter fills cfg's defaults, validates it (see
// AdaptiveConfig.Validate) and returns a limiter at InitialLimit.
func NewAdaptiveLimiter(cfg AdaptiveConfig) (*AdaptiveLimiter, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	l := &AdaptiveLimiter{
		cfg:      cfg,
		now:      time.Now,
		limit:    float64(cfg.InitialLimit),
		baseCur:  noBaseline,
		basePrev: noBaseline,
	}
	l.g.capacity = cfg.InitialLimit
	return l, nil
}

// Acquire waits for a slot or for ctx to end (the error then wraps
// ctx.Err()). The caller does its work and then calls done exactly once,
// with overloaded true when the work failed in a way that signals overload
// (a timeout, a rejection by the downstream); extra calls are ignored. The
// time between Acquire returning and done is the latency sample.
func (l *AdaptiveLimiter) Acquire(ctx context.Context) (done func(overloaded bool), err error) {
	n, err := l.g.acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("throttle: adaptive concurrency wait: %w", err)
	}
	l.mu.Lock()
	gen := l.gen
	if n > l.maxInFlight {
		l.maxInFlight = n
	}
	l.mu.Unlock()
	start := l.now()
	var once atomic.Bool
	return func(overloaded bool) {
		if !once.CompareAndSwap(false, true) {
			return
		}
		l.observe(gen, l.now().Sub(start), overloaded)
		// Release after observing, so a slot freed by a shrinking limit is
		// not handed to a waiter first.
		l.g.release()
	}, nil
}

func (l *AdaptiveLimiter) observe(gen uint64, latency time.Duration, overloaded bool) {
	l.mu.Lock()
	if gen != l.gen {
		l.mu.Unlock()
		return
	}
	l.samples++
	if overloaded {
		l.failures++
	} else {
		l.latencies = append(l.latencies, latency)
	}
	if l.samples < max(l.cfg.MinWindow, int(l.limit)) {
		l.mu.Unlock()
		return
	}
	before := int(l.limit)
	if l.probing {
		l.endProbeLocked()
	} else {
		rotated := l.decideLocked()
		early := false
		if l.probeIn > 0 {
			l.probeIn--
			early = l.probeIn == 0
		}
		// The first window includes the ramp from zero to the limit, so the
		// first probe follows the second, the first measured at the limit.
		if rotated || early || l.windows == 1 {
			l.startProbeLocked()
		}
	}
	l.windows++
	after := int(l.limit)
	l.samples, l.failures = 0, 0
	l.latencies = l.latencies[:0]
	// The calls still running belong to the next window's concurrency.
	l.maxInFlight, _ = l.g.load()
	if after != before {
		l.gen++
		l.g.setCapacity(after)
	}
	l.mu.Unlock()
	if after != before && l.cfg.OnLimit != nil {
		l.cfg.OnLimit(after)
	}
}

// startProbeLocked halves the limit for one window to measure the latency
// at lower concurrency; pointless (and skipped) at MinLimit.
func (l *AdaptiveLimiter) startProbeLocked() {
	half := math.Max(float64(l.cfg.MinLimit), math.Floor(l.limit/2))
	if int(half) >= int(l.limit) {
		return
	}
	l.saved, l.limit, l.probing = l.limit, half, true
}

// endProbeLocked takes the probe window's median into the baseline and
// restores the limit; the next window is judged against the new baseline.
//
// A probe much faster (by more than Tolerance) than the window before it,
// at twice the concurrency, means the limit sits past the downstream's
// best; another probe follows after a few windows instead of a half
// BaselineWindow, so the limit halves its way down in seconds rather than
// minutes.
func (l *AdaptiveLimiter) endProbeLocked() {
	if len(l.latencies) > 0 {
		slices.Sort(l.latencies)
		median := l.latencies[len(l.latencies)/2]
		if l.cfg.Tolerance*float64(median) < float64(l.lastMedian) {
			l.probeIn = earlyProbeWindows
		}
		l.lastMedian = median
		l.baseCur = min(l.baseCur, median)
	}
	l.limit, l.probing = l.saved, false
}

// earlyProbeWindows is how many windows after a probe that found congestion
// the next one runs: time for a few backoffs against the new baseline.
const earlyProbeWindows = 5

// decideLocked applies AIMD to the window just closed; it reports whether
// the baseline moved on to a new half (time for a probe).
func (l *AdaptiveLimiter) decideLocked() (rotated bool) {
	congested := float64(l.failures) > l.cfg.MaxErrorRate*float64(l.samples)
	if len(l.latencies) > 0 {
		slices.Sort(l.latencies)
		median := l.latencies[len(l.latencies)/2]
		l.lastMedian = median
		rotated = l.updateBaselineLocked(median)
		base := min(l.baseCur, l.basePrev)
		if float64(median) > l.cfg.Tolerance*float64(base) && median-base > l.cfg.LatencyNoise {
			congested = true
		}
	}
	switch {
	case congested:
		l.limit = max(float64(l.cfg.MinLimit), l.limit*l.cfg.Backoff)
	case l.maxInFlight >= int(l.limit):
		l.limit = min(float64(l.cfg.MaxLimit), l.limit+1)
	}
	return rotated
}

func (l *AdaptiveLimiter) updateBaselineLocked(median time.Duration) (rotated bool) {
	now := l.now()
	if l.baseRotated.IsZero() {
		l.baseRotated = now
	}
	if now.Sub(l.baseRotated) >= l.cfg.BaselineWindow/2 {
		l.basePrev, l.baseCur, l.baseRotated = l.baseCur, noBaseline, now
		rotated = true
	}
	l.baseCur = min(l.baseCur, median)
	return rotated
}

// AdaptiveStats is a snapshot of an AdaptiveLimiter.
type AdaptiveStats struct {
	Limit    int // current limit
	InFlight int // slots held
	Waiting  int // callers waiting for a slot
	// Baseline is the fastest window median remembered (0 before the first
	// window); LastMedian the median latency of the last window.
	Baseline, LastMedian time.Duration
	// Probing is true during a baseline probe window, when Limit is half
	// the limit that will be restored after it.
	Probing bool
}

// Stats returns the current limit, load and latencies.
func (l *AdaptiveLimiter) Stats() AdaptiveStats {
	l.mu.Lock()
	s := AdaptiveStats{Limit: int(l.limit), LastMedian: l.lastMedian, Probing: l.probing}
	if b := min(l.baseCur, l.basePrev); b != noBaseline {
		s.Baseline = b
	}
	l.mu.Unlock()
	s.InFlight, s.Waiting = l.g.load()
	return s
}

// Limit is the current concurrency limit.
func (l *AdaptiveLimiter) Limit() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return int(l.limit)
}
