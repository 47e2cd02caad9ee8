package throttle_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/throttle"
)

// fakeLag is a backlog the test sets by hand.
type fakeLag struct {
	lag   atomic.Int64
	fail  atomic.Bool
	reads atomic.Int64
}

func (f *fakeLag) Lag(ctx context.Context, topic string) (int64, error) {
	f.reads.Add(1)
	if f.fail.Load() {
		return 0, errors.New("broker unreachable (simulated)")
	}
	return f.lag.Load(), nil
}

// countingPublisher counts what it publishes.
type countingPublisher struct {
	published atomic.Int64
	fail      atomic.Bool
	closed    atomic.Bool
}

func (p *countingPublisher) Publish(topic string, msgs ...*message.Message) error {
	if p.fail.Load() {
		return errors.New("publish failed (simulated)")
	}
	p.published.Add(int64(len(msgs)))
	return nil
}

func (p *countingPublisher) Close() error { p.closed.Store(true); return nil }

func newMsg() *message.Message { return message.NewMessage(watermill.NewUUID(), []byte("x")) }

func newBackpressure(t *testing.T, cfg throttle.BackpressureConfig) *throttle.BackpressurePublisher {
	t.Helper()
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 5 * time.Millisecond
	}
	p, err := throttle.NewBackpressurePublisher(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// checkLeaks, called first in a test, checks after everything the test
// registered for cleanup (cleanups run last-in first-out) that no goroutine
// of package throttle is left.
func checkLeaks(t *testing.T) {
	t.Cleanup(func() { assertNoThrottleGoroutines(t) })
}

// assertNoThrottleGoroutines fails when a goroutine running code of package
// throttle is still alive (a second to wind down is allowed).
func assertNoThrottleGoroutines(t *testing.T) {
	t.Helper()
	var stacks string
	for deadline := time.Now().Add(time.Second); ; {
		buf := make([]byte, 1<<20)
		stacks = string(buf[:runtime.Stack(buf, true)])
		leaked := false
		for _, g := range strings.Split(stacks, "\n\n") {
			if strings.Contains(g, "antidote/throttle.(") && !strings.Contains(g, "throttle_test.") {
				leaked = true
			}
		}
		if !leaked {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("goroutines of package throttle still running after Close:\n%s", stacks)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func publishAsync(p message.Publisher, msg *message.Message) <-chan error {
	done := make(chan error, 1)
	go func() { done <- p.Publish("orders", msg) }()
	return done
}

func mustBlock(t *testing.T, done <-chan error) {
	t.Helper()
	select {
	case err := <-done:
		t.Fatalf("Publish returned (%v); want it blocked", err)
	case <-time.After(100 * time.Millisecond):
	}
}

func mustReturn(t *testing.T, done <-chan error, within time.Duration) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(within):
		t.Fatalf("Publish still blocked after %s", within)
		return nil
	}
}

// Block mode: publishing stops at the high watermark and resumes only at or
// below the low one (hysteresis), not as soon as the backlog dips under
// the high watermark.
func TestBackpressureBlocksBetweenWatermarks(t *testing.T) {
	checkLeaks(t)
	src := &fakeLag{}
	inner := &countingPublisher{}
	p := newBackpressure(t, throttle.BackpressureConfig{Publisher: inner, Source: src, HighWatermark: 100, LowWatermark: 50})

	src.lag.Store(99)
	if err := p.Publish("orders", newMsg()); err != nil {
		t.Fatalf("below the high watermark: %v", err)
	}
	src.lag.Store(150)
	waitBacklog(t, p, "orders", 150)
	done := publishAsync(p, newMsg())
	mustBlock(t, done)
	src.lag.Store(60) // below high, above low: still paused
	waitBacklog(t, p, "orders", 60)
	mustBlock(t, done)
	src.lag.Store(50)
	if err := mustReturn(t, done, 5*time.Second); err != nil {
		t.Fatalf("at the low watermark: %v", err)
	}
	if got := inner.published.Load(); got != 2 {
		t.Errorf("inner publisher got %d messages; want 2", got)
	}
}

// What the publisher published since the last reading counts: with a
// backlog that never drains (and the poller slow), no more than
// HighWatermark messages get through.
func TestBackpressureCountsOwnPublishesBetweenReadings(t *testing.T) {
	checkLeaks(t)
	src := &fakeLag{}
	inner := &countingPublisher{}
	p := newBackpressure(t, throttle.BackpressureConfig{Publisher: inner, Source: src, HighWatermark: 10, LowWatermark: 5, Mode: throttle.Reject, PollInterval: time.Hour})
	var rejected int
	for i := 0; i < 30; i++ {
		err := p.Publish("orders", newMsg())
		var bp *throttle.BackpressureError
		switch {
		case err == nil:
		case errors.As(err, &bp) && errors.Is(err, throttle.ErrBackpressure):
			rejected++
			if bp.Backlog != 10 || bp.HighWatermark != 10 || bp.LowWatermark != 5 || bp.Topic != "orders" {
				t.Errorf("BackpressureError %+v; want backlog 10, watermarks 10/5, topic orders", bp)
			}
		default:
			t.Fatalf("Publish: %v", err)
		}
	}
	if inner.published.Load() != 10 || rejected != 20 {
		t.Errorf("published %d, rejected %d; want 10 and 20", inner.published.Load(), rejected)
	}
	// A failed publish does not count.
	inner.fail.Store(true)
	p2 := newBackpressure(t, throttle.BackpressureConfig{Publisher: inner, Source: src, HighWatermark: 3, Mode: throttle.Reject, PollInterval: time.Hour})
	for i := 0; i < 5; i++ {
		if err := p2.Publish("orders", newMsg()); errors.Is(err, throttle.ErrBackpressure) {
			t.Fatalf("failed publishes were counted as backlog: %v", err)
		}
	}
}

// A blocked Publish ends with its message's context, with BlockTimeout,
// and with Close; each error says why.
func TestBackpressureBlockedPublishEnds(t *testing.T) {
	checkLeaks(t)
	src := &fakeLag{}
	src.lag.Store(1000)
	inner := &countingPublisher{}

	t.Run("message context", func(t *testing.T) {
		p := newBackpressure(t, throttle.BackpressureConfig{Publisher: &countingPublisher{}, Source: src, HighWatermark: 100})
		ctx, cancel := context.WithCancel(context.Background())
		msg := newMsg()
		msg.SetContext(ctx)
		done := publishAsync(p, msg)
		mustBlock(t, done)
		cancel()
		err := mustReturn(t, done, 5*time.Second)
		if !errors.Is(err, context.Canceled) || !errors.Is(err, throttle.ErrBackpressure) {
			t.Errorf("err = %v; want context.Canceled and ErrBackpressure", err)
		}
	})
	t.Run("context of any message of a batch", func(t *testing.T) {
		p := newBackpressure(t, throttle.BackpressureConfig{Publisher: &countingPublisher{}, Source: src, HighWatermark: 100})
		ctx, cancel := context.WithCancel(context.Background())
		second := newMsg()
		second.SetContext(ctx)
		done := make(chan error, 1)
		go func() { done <- p.Publish("orders", newMsg(), second) }()
		mustBlock(t, done)
		cancel()
		if err := mustReturn(t, done, 5*time.Second); !errors.Is(err, context.Canceled) {
			t.Errorf("err = %v; want context.Canceled", err)
		}
	})
	t.Run("block timeout", func(t *testing.T) {
		var waits atomic.Int64
		p := newBackpressure(t, throttle.BackpressureConfig{Publisher: &countingPublisher{}, Source: src, HighWatermark: 100, BlockTimeout: 200 * time.Millisecond,
			OnWait: func(topic string, waited time.Duration, err error) {
				if topic == "orders" && waited >= 200*time.Millisecond && errors.Is(err, throttle.ErrBackpressure) {
					waits.Add(1)
				}
			}})
		err := mustReturn(t, publishAsync(p, newMsg()), 5*time.Second)
		var bp *throttle.BackpressureError
		if !errors.As(err, &bp) || bp.Waited < 200*time.Millisecond || bp.Backlog != 1000 {
			t.Errorf("err = %v; want a *BackpressureError after 200ms with backlog 1000", err)
		}
		if waits.Load() != 1 {
			t.Errorf("OnWait saw %d matching waits; want 1", waits.Load())
		}
	})
	t.Run("close", func(t *testing.T) {
		p := newBackpressure(t, throttle.BackpressureConfig{Publisher: inner, Source: src, HighWatermark: 100})
		var dones []<-chan error
		for i := 0; i < 5; i++ {
			dones = append(dones, publishAsync(p, newMsg()))
		}
		for _, d := range dones {
			mustBlock(t, d)
		}
		start := time.Now()
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		for _, d := range dones {
			if err := mustReturn(t, d, 5*time.Second); !errors.Is(err, throttle.ErrPublisherClosed) {
				t.Errorf("err = %v; want ErrPublisherClosed", err)
			}
		}
		t.Logf("5 blocked publishers returned %s after Close", time.Since(start).Round(time.Millisecond))
		if !inner.closed.Load() {
			t.Error("Close did not close the inner publisher")
		}
		if err := p.Publish("orders", newMsg()); !errors.Is(err, throttle.ErrPublisherClosed) {
			t.Errorf("Publish after Close = %v; want ErrPublisherClosed", err)
		}
	})
}

// An unreadable backlog: publishing goes on by default (fail open), and
// blocks with FailClosed until a reading works again.
func TestBackpressureUnreadableBacklog(t *testing.T) {
	checkLeaks(t)
	src := &fakeLag{}
	src.fail.Store(true)
	open := newBackpressure(t, throttle.BackpressureConfig{Publisher: &countingPublisher{}, Source: src, HighWatermark: 10, Mode: throttle.Reject})
	for i := 0; i < 20; i++ {
		if err := open.Publish("orders", newMsg()); err != nil {
			t.Fatalf("fail-open publish %d: %v", i, err)
		}
	}
	closed := newBackpressure(t, throttle.BackpressureConfig{Publisher: &countingPublisher{}, Source: src, HighWatermark: 10, FailClosed: true})
	done := publishAsync(closed, newMsg())
	mustBlock(t, done)
	src.fail.Store(false)
	if err := mustReturn(t, done, 5*time.Second); err != nil {
		t.Errorf("after the backlog became readable: %v", err)
	}
	rej := newBackpressure(t, throttle.BackpressureConfig{Publisher: &countingPublisher{}, Source: src, HighWatermark: 10, FailClosed: true, Mode: throttle.Reject})
	src.fail.Store(true)
	time.Sleep(50 * time.Millisecond)
	err := rej.Publish("other", newMsg())
	var bp *throttle.BackpressureError
	if !errors.As(err, &bp) || bp.Err == nil {
		t.Errorf("fail-closed reject = %v; want a *BackpressureError carrying the reading error", err)
	}
}

// Many producers on many topics, one poller: every message is published
// exactly once and the poller is gone after Close.
func TestBackpressureConcurrentProducers(t *testing.T) {
	checkLeaks(t)
	src := &fakeLag{}
	inner := &countingPublisher{}
	p := newBackpressure(t, throttle.BackpressureConfig{Publisher: inner, Source: src, HighWatermark: 1_000_000})
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			topic := []string{"a", "b", "c"}[i%3]
			for j := 0; j < 100; j++ {
				if err := p.Publish(topic, newMsg()); err != nil {
					t.Error(err)
					return
				}
			}
		}(i)
	}
	wg.Wait()
	if got := inner.published.Load(); got != 800 {
		t.Errorf("published %d; want 800", got)
	}
	for _, topic := range []string{"a", "b", "c"} {
		if _, ok := p.Backlog(topic); !ok {
			t.Errorf("topic %s was never read", topic)
		}
	}
}

func waitBacklog(t *testing.T, p *throttle.BackpressurePublisher, topic string, want int64) {
	t.Helper()
	testenv.EventuallyNil(t, 5*time.Second, func() error {
		if got, ok := p.Backlog(topic); !ok || got != want {
			return fmt.Errorf("backlog of %s is %d (known: %t); want %d", topic, got, ok, want)
		}
		return nil
	})
}
