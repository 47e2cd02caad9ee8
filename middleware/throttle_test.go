package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/poison"
	"github.com/antidote-mq/antidote/throttle"
)

func TestThrottleConfigValidate(t *testing.T) {
	if (middleware.ThrottleConfig{}).Enabled() {
		t.Error("the zero ThrottleConfig reports Enabled")
	}
	if err := (middleware.ThrottleConfig{}).Validate(); err != nil {
		t.Errorf("zero config: %v", err)
	}
	err := middleware.ThrottleConfig{
		Rate: -1, Burst: -1, KeyRate: 5, Concurrency: 3,
		Adaptive: &throttle.AdaptiveConfig{Backoff: 2},
	}.Validate()
	for _, want := range []string{"ThrottleConfig.Rate", "ThrottleConfig.Burst", "KeyMetadata nor Key", "Concurrency (3) and Adaptive", "ThrottleConfig.Adaptive: throttle: AdaptiveConfig.Backoff"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v; want it to mention %q", err, want)
		}
	}
	if _, err := middleware.NewThrottle(middleware.ThrottleConfig{Rate: -1}); err == nil {
		t.Error("NewThrottle accepted a negative rate")
	}
}

// throttleRouter runs a router with one throttled handler on a gochannel and
// returns it with a func that closes it and waits for Run to return.
func throttleRouter(t *testing.T, pubSub *gochannel.GoChannel, topic string, cfg middleware.ThrottleConfig, handler message.NoPublishHandlerFunc, outer ...message.HandlerMiddleware) (*message.Router, func() time.Duration) {
	t.Helper()
	th, err := middleware.NewThrottle(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r, err := message.NewRouter(message.RouterConfig{CloseTimeout: 30 * time.Second}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	r.AddConsumerHandler("throttled", topic, pubSub, handler).AddMiddleware(append(outer, th.Middleware)...)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := r.Run(context.Background()); err != nil {
			t.Error(err)
		}
	}()
	<-r.Running()
	var once sync.Once
	var took time.Duration
	stop := func() time.Duration {
		once.Do(func() {
			start := time.Now()
			if err := r.Close(); err != nil {
				t.Error(err)
			}
			<-done
			took = time.Since(start)
		})
		return took
	}
	t.Cleanup(func() { stop() })
	return r, stop
}

// Per-key limits hold per key and keys do not share a bucket: 30 messages
// for each of two keys, interleaved, at 20/s per key. Each key's messages
// are at least 1/20 s apart on average, and the whole run takes about as
// long as one key's share (1.45 s), not both keys' (2.95 s).
func TestThrottlePerKeyLimitsHoldPerKey(t *testing.T) {
	const perKey, keyRate = 30, 20.0
	pubSub := gochannel.NewGoChannel(gochannel.Config{Persistent: true}, watermill.NopLogger{})
	defer pubSub.Close()
	var mu sync.Mutex
	handled := map[string][]time.Time{}
	_, stop := throttleRouter(t, pubSub, "per_key", middleware.ThrottleConfig{KeyRate: keyRate, KeyMetadata: "tenant"},
		func(m *message.Message) error {
			mu.Lock()
			handled[m.Metadata.Get("tenant")] = append(handled[m.Metadata.Get("tenant")], time.Now())
			mu.Unlock()
			return nil
		})
	for i := 0; i < perKey; i++ {
		for _, tenant := range []string{"a", "b"} {
			m := message.NewMessage(watermill.NewUUID(), []byte("x"))
			m.Metadata.Set("tenant", tenant)
			if err := pubSub.Publish("per_key", m); err != nil {
				t.Fatal(err)
			}
		}
	}
	throttleWaitUntil(t, 20*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(handled["a"]) == perKey && len(handled["b"]) == perKey
	})
	stop()
	first, last := handled["a"][0], handled["a"][0]
	for key, times := range handled {
		span := times[len(times)-1].Sub(times[0])
		rate := float64(len(times)-1) / span.Seconds()
		t.Logf("key %s: %d messages in %s = %.1f/s (limit %.0f/s)", key, len(times), span.Round(time.Millisecond), rate, keyRate)
		if rate > keyRate*1.02 {
			t.Errorf("key %s ran at %.1f/s; limit %.0f/s", key, rate, keyRate)
		}
		if times[0].Before(first) {
			first = times[0]
		}
		if times[len(times)-1].After(last) {
			last = times[len(times)-1]
		}
	}
	total := last.Sub(first)
	oneKey := time.Duration(float64(perKey-1) / keyRate * float64(time.Second))
	t.Logf("both keys: %s (one key's share %s)", total.Round(time.Millisecond), oneKey)
	if total > oneKey*3/2 {
		t.Errorf("the run took %s; with independent keys it should take about %s", total, oneKey)
	}
}

// At most Concurrency handler runs at once, from 20 concurrent callers.
func TestThrottleConcurrency(t *testing.T) {
	const limit = 3
	th, err := middleware.NewThrottle(middleware.ThrottleConfig{Concurrency: limit})
	if err != nil {
		t.Fatal(err)
	}
	var inside, most atomic.Int64
	h := th.Middleware(func(*message.Message) ([]*message.Message, error) {
		n := inside.Add(1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		time.Sleep(5 * time.Millisecond)
		inside.Add(-1)
		return nil, nil
	})
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 5; j++ {
				if _, err := h(message.NewMessage(watermill.NewUUID(), nil)); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if most.Load() != limit {
		t.Errorf("at most %d inside at once; want exactly the limit %d", most.Load(), limit)
	}
}

// A router closing while a message waits for a token does not wait for
// the token: the wait ends with the message context, the error wraps
// context.Canceled, and the message is not handled (it is nacked, so it
// would be delivered again).
//
// It runs in a synctest bubble: synctest.Wait returns once the two
// messages without a token are asleep in the throttle (no sleep guessing
// how long delivery takes), and Close's duration is fake time, so any wait
// on a timer (the router's 30 s CloseTimeout above all) shows as a
// duration > 0 instead of depending on the machine's load.
//
// The handler errors are collected without blocking: the GoChannel
// redelivers a nacked message at once, and while the router closes the
// cancelled messages can come back hundreds of times (seen on a loaded
// machine) before the subscriber stops. An earlier version sent them to a
// channel of 10; the 11th send blocked a handler, and Close timed out
// after 30 s: the flake was the test's, not the throttle's.
func TestThrottleShutdownDoesNotHang(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pubSub := gochannel.NewGoChannel(gochannel.Config{Persistent: true}, watermill.NopLogger{})
		defer pubSub.Close()
		var handled atomic.Int64
		var mu sync.Mutex
		var errs []error
		record := func(h message.HandlerFunc) message.HandlerFunc {
			return func(m *message.Message) ([]*message.Message, error) {
				out, err := h(m)
				if err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
				return out, err
			}
		}
		_, stop := throttleRouter(t, pubSub, "shutdown", middleware.ThrottleConfig{Rate: 0.01}, // a token per 100 s
			func(*message.Message) error { handled.Add(1); return nil }, record)
		for i := 0; i < 3; i++ {
			if err := pubSub.Publish("shutdown", message.NewMessage(watermill.NewUUID(), nil)); err != nil {
				t.Fatal(err)
			}
		}
		synctest.Wait() // one message handled, two asleep waiting for tokens
		if n := handled.Load(); n != 1 {
			t.Fatalf("handled %d before the close; want 1 (one token)", n)
		}
		mu.Lock()
		before := len(errs)
		mu.Unlock()
		if before != 0 {
			t.Fatalf("%d handler errors before the close; want the waiting messages still waiting", before)
		}
		took := stop()
		t.Logf("router closed in %s of fake time with two messages waiting for tokens", took)
		if took != 0 {
			t.Errorf("Close waited %s for a timer; want it to end the token waits at once", took)
		}
		if handled.Load() != 1 {
			t.Errorf("handled %d; want 1 (the rest wait for tokens)", handled.Load())
		}
		mu.Lock()
		defer mu.Unlock()
		if len(errs) < 2 {
			t.Errorf("%d handler errors; want one at least for each of the two waiting messages", len(errs))
		}
		for _, err := range errs {
			if !errors.Is(err, context.Canceled) {
				t.Errorf("a wait ended with %v; want an error wrapping context.Canceled", err)
			}
		}
	})
}

// OnWait sees every message; the adaptive limit reacts to overload errors
// (transient) but not to poison (permanent).
func TestThrottleOnWaitAndAdaptiveErrors(t *testing.T) {
	var waits atomic.Int64
	for _, tc := range []struct {
		name   string
		err    error
		shrink bool
	}{
		{"permanent errors do not shrink the limit", poison.Permanent(errors.New("bad json")), false},
		{"transient errors do", poison.Transient(errors.New("too many connections")), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var changes []int
			var mu sync.Mutex
			th, err := middleware.NewThrottle(middleware.ThrottleConfig{
				Adaptive: &throttle.AdaptiveConfig{InitialLimit: 4, MinWindow: 4, OnLimit: func(l int) {
					mu.Lock()
					changes = append(changes, l)
					mu.Unlock()
				}},
				OnWait: func(*message.Message, time.Duration) { waits.Add(1) },
			})
			if err != nil {
				t.Fatal(err)
			}
			h := th.Middleware(func(*message.Message) ([]*message.Message, error) { return nil, tc.err })
			for i := 0; i < 40; i++ {
				if _, err := h(message.NewMessage(watermill.NewUUID(), nil)); !errors.Is(err, tc.err) {
					t.Fatalf("handler error %v not passed through", err)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			shrank := len(changes) > 0 && changes[len(changes)-1] < 4
			t.Logf("limit changes: %v", changes)
			if shrank != tc.shrink {
				t.Errorf("limit changes %v; want shrinking = %v", changes, tc.shrink)
			}
		})
	}
	if waits.Load() != 80 {
		t.Errorf("OnWait called %d times; want once per message, 80", waits.Load())
	}
}

func throttleWaitUntil(t *testing.T, limit time.Duration, cond func() bool) {
	t.Helper()
	testenv.Eventually(t, limit, "the condition", cond)
}

// A handler limited to 5 messages per second with a burst of 2: after a
// quiet period two messages pass at once, then one every 200ms. OnWait
// reports each message's wait (for metrics).
func ExampleNewThrottle() {
	logger := watermill.NopLogger{}
	pubSub := gochannel.NewGoChannel(gochannel.Config{Persistent: true}, logger)
	defer pubSub.Close()

	var mu sync.Mutex
	waits := map[string]time.Duration{}
	th, err := middleware.NewThrottle(middleware.ThrottleConfig{
		Rate:  5, // messages per second, for each handler it wraps
		Burst: 2,
		OnWait: func(msg *message.Message, waited time.Duration) {
			mu.Lock()
			defer mu.Unlock()
			waits[msg.UUID] = waited
		},
	})
	if err != nil {
		panic(err)
	}
	router, err := message.NewRouter(message.RouterConfig{}, logger)
	if err != nil {
		panic(err)
	}
	router.AddMiddleware(th.Middleware) // router-wide: every handler gets its own bucket

	done := make(chan struct{})
	var handled atomic.Int64
	router.AddConsumerHandler("emails", "emails", pubSub, func(*message.Message) error {
		if handled.Add(1) == 4 {
			close(done)
		}
		return nil
	})
	go func() { _ = router.Run(context.Background()) }()
	defer router.Close()
	<-router.Running()

	for i := 1; i <= 4; i++ {
		if err := pubSub.Publish("emails", message.NewMessage(fmt.Sprint(i), nil)); err != nil {
			panic(err)
		}
	}
	<-done
	mu.Lock()
	defer mu.Unlock()
	var immediate, waited int
	for _, w := range waits {
		if w < 100*time.Millisecond {
			immediate++
		} else {
			waited++
		}
	}
	// The burst passes at once; the others wait 200ms and 400ms.
	fmt.Println("passed at once:", immediate)
	fmt.Println("waited for a token:", waited)
	// Output:
	// passed at once: 2
	// waited for a token: 2
}
