package throttle_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/antidote-mq/antidote/throttle"
)

// A token bucket never grants more than burst + rate × elapsed.
func TestRateLimiterNeverExceedsRate(t *testing.T) {
	const rate, burst = 100.0, 5
	start := time.Now() // before the bucket exists, so the bound is safe
	l, err := throttle.NewRateLimiter(throttle.RateConfig{Rate: rate, Burst: burst})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	var granted atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ { // several callers compete for one bucket
		wg.Add(1)
		go func() {
			defer wg.Done()
			for l.Wait(ctx) == nil {
				granted.Add(1)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	most := burst + int64(rate*elapsed.Seconds())
	t.Logf("%d granted in %s (at most %d)", granted.Load(), elapsed.Round(time.Millisecond), most)
	if granted.Load() > most {
		t.Errorf("%d tokens granted in %s; a bucket of %d at %v/s allows at most %d", granted.Load(), elapsed, burst, rate, most)
	}
	if granted.Load() < most/2 {
		t.Errorf("only %d tokens granted in %s; expected about %d", granted.Load(), elapsed, most)
	}
}

// A wait ends with the context, with an error that wraps the context's.
func TestRateLimiterWaitHonoursContext(t *testing.T) {
	l, err := throttle.NewRateLimiter(throttle.RateConfig{Rate: 0.01}) // one token per 100s
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Wait(context.Background()); err != nil { // takes the only token
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(20*time.Millisecond, cancel)
	start := time.Now()
	err = l.Wait(ctx)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait after cancel = %v; want an error wrapping context.Canceled", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Wait returned %s after the cancel", d)
	}
	// A deadline the wait would pass is waited for, not refused early, so
	// the error is the context's own (Retry and DeadLetter rely on it).
	dctx, dcancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer dcancel()
	if err := l.Wait(dctx); !errors.Is(err, context.DeadlineExceeded) || dctx.Err() == nil {
		t.Errorf("Wait with a short deadline = %v (ctx err %v); want DeadlineExceeded once the deadline passed", err, dctx.Err())
	}
}

func TestKeyedLimiterKeysAreIndependentAndBounded(t *testing.T) {
	k, err := throttle.NewKeyedLimiter(throttle.KeyedConfig{Rate: 0.01, MaxKeys: 100})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := k.Wait(ctx, "flood"); err != nil {
		t.Fatal(err)
	}
	// "flood" has spent its token; "quiet" has its own.
	if err := k.Wait(ctx, "quiet"); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if err := k.Wait(short, "flood"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("second Wait on the spent key = %v; want it to wait until the deadline", err)
	}
	for i := 0; i < 1000; i++ {
		if err := k.Wait(ctx, "key-"+strconv.Itoa(i)); err != nil {
			t.Fatal(err)
		}
	}
	if got := k.Len(); got != 100 {
		t.Errorf("Len = %d after 1002 keys; want MaxKeys = 100", got)
	}
	if got := k.Evicted(); got != 902 {
		t.Errorf("Evicted = %d; want 902", got)
	}
}

// At most Limit callers hold a slot; waiters that give up leave no slot
// behind, whatever the timing of their give-up.
func TestConcurrencyLimiterBoundsAndReleases(t *testing.T) {
	const limit = 5
	l, err := throttle.NewConcurrencyLimiter(limit)
	if err != nil {
		t.Fatal(err)
	}
	var inside, most atomic.Int64
	var wg sync.WaitGroup
	var completed, gaveUp atomic.Int64
	for i := 0; i < 200; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(i), 7))
			ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rng.IntN(20))*time.Millisecond)
			defer cancel()
			release, err := l.Acquire(ctx)
			if err != nil {
				if !errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("Acquire: %v", err)
				}
				gaveUp.Add(1)
				return
			}
			n := inside.Add(1)
			for {
				m := most.Load()
				if n <= m || most.CompareAndSwap(m, n) {
					break
				}
			}
			time.Sleep(time.Millisecond)
			inside.Add(-1)
			release()
			release() // a second call is ignored
			completed.Add(1)
		}(i)
	}
	wg.Wait()
	t.Logf("%d completed, %d gave up, at most %d inside", completed.Load(), gaveUp.Load(), most.Load())
	if most.Load() > limit {
		t.Errorf("%d callers inside at once; limit %d", most.Load(), limit)
	}
	if completed.Load()+gaveUp.Load() != 200 {
		t.Errorf("%d + %d != 200", completed.Load(), gaveUp.Load())
	}
	if l.InFlight() != 0 || l.Waiting() != 0 {
		t.Errorf("after everyone left: %d in flight, %d waiting; want 0, 0", l.InFlight(), l.Waiting())
	}
	// All slots are free again.
	for i := 0; i < limit; i++ {
		if _, err := l.Acquire(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}

// The adaptive limiter on the real clock: a downstream that slows down
// past 8 concurrent calls (sleeping base × (c/8)²), 64 callers. The limit
// must come down from 40 and stay within [4, 16] once settled. Wider bounds
// than the simulated-time test (TestAdaptiveSettlesNearOptimum), since
// sleeping on a loaded machine is noisy.
func TestAdaptiveLimiterRealClock(t *testing.T) {
	if testing.Short() {
		t.Skip("runs for 4s")
	}
	const optimum = 8
	l, err := throttle.NewAdaptiveLimiter(throttle.AdaptiveConfig{InitialLimit: 40, BaselineWindow: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var inFlight atomic.Int64
	base := 5 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				done, err := l.Acquire(ctx)
				if err != nil {
					return
				}
				c := float64(inFlight.Add(1))
				f := max(1, c/optimum)
				time.Sleep(time.Duration(float64(base) * f * f))
				inFlight.Add(-1)
				done(false)
			}
		}()
	}
	var samples []int
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for ctx.Err() == nil {
		select {
		case <-tick.C:
			if s := l.Stats(); !s.Probing {
				samples = append(samples, s.Limit)
			}
		case <-ctx.Done():
		}
	}
	wg.Wait()
	last := samples[len(samples)/2:]
	sum := 0
	for _, s := range last {
		sum += s
	}
	mean := float64(sum) / float64(len(last))
	t.Logf("limit every 100ms: %v; mean of the second half %.1f (optimum %d)", samples, mean, optimum)
	if mean < 4 || mean > 16 {
		t.Errorf("mean limit %.1f over the second half; want within [4, 16] around the optimum %d", mean, optimum)
	}
	if s := l.Stats(); s.InFlight != 0 || s.Waiting != 0 {
		t.Errorf("after the run: %d in flight, %d waiting", s.InFlight, s.Waiting)
	}
}

func TestConfigErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want []string
	}{
		{throttle.RateConfig{Rate: -1, Burst: -2}.Validate(), []string{"RateConfig.Rate", "RateConfig.Burst"}},
		{throttle.KeyedConfig{MaxKeys: -1}.Validate(), []string{"KeyedConfig.Rate", "KeyedConfig.MaxKeys"}},
		{throttle.AdaptiveConfig{MinLimit: 5, MaxLimit: 2, Tolerance: 0.5, Backoff: 2, MaxErrorRate: 3}.Validate(),
			[]string{"AdaptiveConfig.MaxLimit", "AdaptiveConfig.InitialLimit", "AdaptiveConfig.Tolerance", "AdaptiveConfig.Backoff", "AdaptiveConfig.MaxErrorRate"}},
		{throttle.BackpressureConfig{HighWatermark: 10, LowWatermark: 10, Mode: 7}.Validate(),
			[]string{"BackpressureConfig.Publisher", "BackpressureConfig.Source", "BackpressureConfig.LowWatermark", "BackpressureConfig.Mode"}},
	} {
		if tc.err == nil {
			t.Errorf("no error; want one naming %v", tc.want)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(tc.err.Error(), w) {
				t.Errorf("error %q does not name %s", tc.err, w)
			}
		}
	}
	for _, ok := range []error{
		throttle.RateConfig{Rate: 1}.Validate(),
		throttle.KeyedConfig{Rate: 1}.Validate(),
		throttle.AdaptiveConfig{}.Validate(),
	} {
		if ok != nil {
			t.Errorf("valid config refused: %v", ok)
		}
	}
}
