// Command adaptive shows throttle.AdaptiveLimiter finding a downstream's best
// concurrency, in real time, and following it when it changes.
//
// The downstream is simulated: a call with c calls in flight (itself
// included) takes base × max(1, c/optimum)², so throughput c/latency peaks
// at c = optimum and falls past it: the shape of a database or service whose
// latency is flat until its workers are all busy and then grows with the
// queue. Demand is unbounded (-clients callers in a loop), so the limiter
// alone decides the concurrency.
//
//	go run ./bench/adaptive                       # optimum 20, drops to 8 halfway
//	go run ./bench/adaptive -optimum 50 -change-to 0 -duration 20s
//
// It prints one row per -every: the limit, calls in flight, the median
// latency of the last window and the throughput; then the mean limit and
// throughput of the second half of each phase against the best possible.
package main

import (
	"context"
	"flag"
	"fmt"
	"math"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/antidote-mq/antidote/internal/clock"
	"github.com/antidote-mq/antidote/throttle"
)

func main() {
	var (
		optimum  = flag.Int("optimum", 20, "the downstream's best concurrency")
		changeTo = flag.Int("change-to", 8, "the optimum after half the run (0: no change)")
		base     = flag.Duration("base", 10*time.Millisecond, "latency of a call at or below the optimum")
		clients  = flag.Int("clients", 200, "callers competing for slots")
		duration = flag.Duration("duration", 40*time.Second, "length of the run")
		every    = flag.Duration("every", time.Second, "reporting interval")
		initial  = flag.Int("initial", 0, "AdaptiveConfig.InitialLimit (0: the default)")
		baseline = flag.Duration("baseline", 0, "AdaptiveConfig.BaselineWindow (0: the default)")
		fixed    = flag.Int("fixed", 0, "use a fixed concurrency limit of N instead (a reference: what the best limit achieves here)")
	)
	flag.Parse()
	if err := run(*optimum, *changeTo, *base, *clients, *duration, *every, *initial, *baseline, *fixed); err != nil {
		fmt.Fprintln(os.Stderr, "adaptive:", err)
		os.Exit(1)
	}
}

// downstream is the simulated dependency.
type downstream struct {
	base     time.Duration
	optimum  atomic.Int64
	inFlight atomic.Int64
}

func (d *downstream) call(ctx context.Context) {
	c := float64(d.inFlight.Add(1))
	defer d.inFlight.Add(-1)
	f := math.Max(1, c/float64(d.optimum.Load()))
	clock.Sleep(ctx, time.Duration(float64(d.base)*f*f))
}

type phase struct {
	optimum     int
	limits      []int
	completions int64
	seconds     float64
}

// limiter is the adaptive limiter, or a fixed one for reference.
type limiter interface {
	Acquire(ctx context.Context) (func(overloaded bool), error)
	Stats() throttle.AdaptiveStats
}

type fixedLimiter struct {
	*throttle.ConcurrencyLimiter
	limit int
}

func (f fixedLimiter) Acquire(ctx context.Context) (func(bool), error) {
	release, err := f.ConcurrencyLimiter.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	return func(bool) { release() }, nil
}

func (f fixedLimiter) Stats() throttle.AdaptiveStats {
	return throttle.AdaptiveStats{Limit: f.limit, InFlight: f.InFlight(), Waiting: f.Waiting()}
}

func run(optimum, changeTo int, base time.Duration, clients int, duration, every time.Duration, initial int, baseline time.Duration, fixed int) error {
	var lim limiter
	if fixed > 0 {
		c, err := throttle.NewConcurrencyLimiter(fixed)
		if err != nil {
			return err
		}
		lim = fixedLimiter{ConcurrencyLimiter: c, limit: fixed}
	} else {
		a, err := throttle.NewAdaptiveLimiter(throttle.AdaptiveConfig{InitialLimit: initial, BaselineWindow: baseline})
		if err != nil {
			return err
		}
		lim = a
	}
	d := &downstream{base: base}
	d.optimum.Store(int64(optimum))
	ctx, cancel := context.WithTimeout(context.Background(), duration)
	defer cancel()

	var completed atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				done, err := lim.Acquire(ctx)
				if err != nil {
					return // the run is over
				}
				d.call(ctx)
				done(false)
				completed.Add(1)
			}
		}()
	}

	fmt.Printf("downstream: latency %s × max(1, c/optimum)²; optimum %d", base, optimum)
	if changeTo > 0 {
		fmt.Printf(", %d after %s", changeTo, duration/2)
	}
	fmt.Printf("; %d callers; best throughput %.0f/s\n\n", clients, float64(optimum)/base.Seconds())
	fmt.Printf("%6s %8s %6s %9s %9s %10s  %s\n", "t", "optimum", "limit", "in flight", "median", "calls/s", "limit")

	phases := []*phase{{optimum: optimum}}
	start := time.Now()
	tick := time.NewTicker(every)
	defer tick.Stop()
	prev, prevAt := int64(0), start
	changed := changeTo <= 0
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
			continue
		case now := <-tick.C:
			s := lim.Stats()
			n := completed.Load()
			rate := float64(n-prev) / now.Sub(prevAt).Seconds()
			prev, prevAt = n, now
			p := phases[len(phases)-1]
			p.limits = append(p.limits, s.Limit)
			mark := ""
			if s.Probing {
				mark = " (probe)"
			}
			fmt.Printf("%5.0fs %8d %6d %9d %9s %10.0f  %s%s\n", now.Sub(start).Seconds(), d.optimum.Load(), s.Limit, s.InFlight,
				s.LastMedian.Round(100*time.Microsecond), rate, strings.Repeat("#", min(s.Limit, 100)), mark)
			// Throughput of the second half of each phase, for the summary.
			if len(p.limits) > phaseRows(duration, every, changeTo)/2 {
				p.completions += int64(rate * every.Seconds())
				p.seconds += every.Seconds()
			}
			if !changed && now.Sub(start) >= duration/2 {
				changed = true
				d.optimum.Store(int64(changeTo))
				phases = append(phases, &phase{optimum: changeTo})
			}
		}
	}
	wg.Wait()

	fmt.Println()
	for i, p := range phases {
		half := p.limits[len(p.limits)/2:]
		sum := 0
		for _, l := range half {
			sum += l
		}
		mean := float64(sum) / float64(len(half))
		best := float64(p.optimum) / base.Seconds()
		fmt.Printf("phase %d (optimum %d): second half: mean limit %.1f (%.2f × optimum), throughput %.0f/s (%.0f%% of the best %.0f/s)\n",
			i+1, p.optimum, mean, mean/float64(p.optimum), float64(p.completions)/p.seconds, 100*float64(p.completions)/p.seconds/best, best)
	}
	if s := lim.Stats(); s.InFlight != 0 || s.Waiting != 0 {
		return fmt.Errorf("after the run %d calls in flight and %d waiting; want none", s.InFlight, s.Waiting)
	}
	return nil
}

// phaseRows is how many report rows one phase has.
func phaseRows(duration, every time.Duration, changeTo int) int {
	if changeTo > 0 {
		duration /= 2
	}
	return int(duration / every)
}
