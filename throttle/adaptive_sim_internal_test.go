package throttle

import (
	"container/heap"
	"context"
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// downstream is a simulated dependency whose latency rises past its best
// concurrency: latency = base × max(1, c/optimum)², c counting the call
// itself. Throughput c/latency peaks at c = optimum and falls beyond it, so
// optimum is the concurrency an adaptive limiter should find.
type downstream struct {
	base    time.Duration
	optimum float64
	noise   float64 // relative spread of a log-normal factor; 0: none
	// failAbove, when > 0, makes calls fail (overload) when more than that
	// many are in flight, with no latency rise: an error-only signal.
	failAbove int
	rng       *rand.Rand
}

func (d downstream) call(inFlight int) (time.Duration, bool) {
	if d.failAbove > 0 {
		return d.base, inFlight > d.failAbove
	}
	f := math.Max(1, float64(inFlight)/d.optimum)
	lat := float64(d.base) * f * f
	if d.noise > 0 {
		lat *= math.Exp(d.rng.NormFloat64() * d.noise)
	}
	return time.Duration(lat), false
}

type completion struct {
	at         time.Time
	done       func(bool)
	overloaded bool
}

type completions []completion

func (c completions) Len() int           { return len(c) }
func (c completions) Less(i, j int) bool { return c[i].at.Before(c[j].at) }
func (c completions) Swap(i, j int)      { c[i], c[j] = c[j], c[i] }
func (c *completions) Push(x any)        { *c = append(*c, x.(completion)) }
func (c *completions) Pop() any {
	old := *c
	x := old[len(old)-1]
	*c = old[:len(old)-1]
	return x
}

// simulate drives l with unbounded demand against d in virtual time (a
// discrete-event simulation: deterministic, no sleeping) and returns the
// limit sampled every step of virtual time, -1 while probing.
func simulate(t *testing.T, l *AdaptiveLimiter, d downstream, length, step time.Duration) []int {
	t.Helper()
	clock := time.Unix(0, 0)
	l.now = func() time.Time { return clock }
	var pending completions
	var limits []int
	next := clock
	end := clock.Add(length)
	ctx := context.Background()
	for clock.Before(end) {
		// Fill every free slot: demand always exceeds the limit.
		for {
			s := l.Stats()
			if s.InFlight >= s.Limit {
				break
			}
			done, err := l.Acquire(ctx)
			if err != nil {
				t.Fatal(err)
			}
			lat, over := d.call(s.InFlight + 1)
			heap.Push(&pending, completion{at: clock.Add(lat), done: done, overloaded: over})
		}
		c := heap.Pop(&pending).(completion)
		for !c.at.Before(next) {
			if s := l.Stats(); s.Probing {
				limits = append(limits, -1)
			} else {
				limits = append(limits, s.Limit)
			}
			next = next.Add(step)
		}
		clock = c.at
		c.done(c.overloaded)
	}
	return limits
}

// steady drops the probe samples (-1).
func steady(xs []int) []int {
	var out []int
	for _, x := range xs {
		if x >= 0 {
			out = append(out, x)
		}
	}
	return out
}

func meanInt(xs []int) float64 {
	s := 0
	for _, x := range xs {
		s += x
	}
	return float64(s) / float64(len(xs))
}

// The limit climbs from its initial value to the downstream's best
// concurrency and stays near it: the mean of the second half within
// [0.9, 1.35] × optimum, never below 0.75 × optimum. Virtual time, so the
// result does not depend on the machine's load.
func TestAdaptiveSettlesNearOptimum(t *testing.T) {
	for _, tc := range []struct {
		name    string
		optimum float64
		noise   float64
		initial int
	}{
		{"optimum 20, from 1", 20, 0, 1},
		{"optimum 20, from 200", 20, 0, 200},
		{"optimum 50, 20% noise", 50, 0.2, 10},
		{"optimum 8, 20% noise", 8, 0.2, 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := NewAdaptiveLimiter(AdaptiveConfig{InitialLimit: tc.initial, MaxLimit: 500})
			if err != nil {
				t.Fatal(err)
			}
			d := downstream{base: 10 * time.Millisecond, optimum: tc.optimum, noise: tc.noise, rng: rand.New(rand.NewPCG(1, 2))}
			limits := simulate(t, l, d, 120*time.Second, 100*time.Millisecond)
			if testing.Verbose() {
				t.Logf("limit every second: %v", everyNth(limits, 10))
			}
			second := steady(limits[len(limits)/2:])
			mean := meanInt(second)
			lo, hi := second[0], second[0]
			for _, x := range second {
				lo, hi = min(lo, x), max(hi, x)
			}
			t.Logf("limit over the second half: mean %.1f, min %d, max %d (optimum %.0f)", mean, lo, hi, tc.optimum)
			if mean < 0.9*tc.optimum || mean > 1.35*tc.optimum {
				t.Errorf("mean limit %.1f not within [0.9, 1.35] × optimum %.0f", mean, tc.optimum)
			}
			if float64(lo) < 0.75*tc.optimum {
				t.Errorf("limit dipped to %d, below 0.75 × optimum %.0f", lo, tc.optimum)
			}
		})
	}
}

// Errors alone (a downstream that rejects calls beyond 30 at once, with flat
// latency) bring the limit down to about where they start.
func TestAdaptiveBacksOffOnErrors(t *testing.T) {
	l, err := NewAdaptiveLimiter(AdaptiveConfig{InitialLimit: 100, MaxLimit: 500})
	if err != nil {
		t.Fatal(err)
	}
	d := downstream{base: 10 * time.Millisecond, failAbove: 30}
	limits := simulate(t, l, d, 30*time.Second, 100*time.Millisecond)
	second := steady(limits[len(limits)/2:])
	mean := meanInt(second)
	t.Logf("limit over the second half: mean %.1f (errors above 30 in flight)", mean)
	if mean < 25 || mean > 36 {
		t.Errorf("mean limit %.1f not within [25, 36]", mean)
	}
}

// A limit that is never used (fewer callers than slots) does not grow.
func TestAdaptiveDoesNotGrowWhenIdle(t *testing.T) {
	l, err := NewAdaptiveLimiter(AdaptiveConfig{InitialLimit: 10})
	if err != nil {
		t.Fatal(err)
	}
	clock := time.Unix(0, 0)
	l.now = func() time.Time { return clock }
	for i := 0; i < 1000; i++ { // one caller at a time
		done, err := l.Acquire(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		clock = clock.Add(time.Millisecond)
		done(false)
	}
	if got := l.Limit(); got != 10 {
		t.Errorf("limit %d after 1000 sequential calls; want 10 (unused limits must not grow)", got)
	}
}

func everyNth(xs []int, n int) []int {
	var out []int
	for i := 0; i < len(xs); i += n {
		out = append(out, xs[i])
	}
	return out
}
