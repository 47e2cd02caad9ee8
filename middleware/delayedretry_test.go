package middleware_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	wmmiddleware "github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/poison"
)

type recordingScheduler struct {
	mu    sync.Mutex
	calls []string
	fail  bool
}

func (s *recordingScheduler) Schedule(_ context.Context, topic string, msg *message.Message, after time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail {
		return errors.New("broker down")
	}
	s.calls = append(s.calls, topic+"/"+msg.Metadata.Get(antidote.MetadataRetryStage)+"/"+after.String())
	return nil
}

func runOne(t *testing.T, mw message.HandlerMiddleware, handler string, h message.HandlerFunc) error {
	t.Helper()
	return runOneMessage(t, mw, handler, message.NewMessage("m1", []byte("x")), h)
}

func runOneMessage(t *testing.T, mw message.HandlerMiddleware, handler string, msg *message.Message, h message.HandlerFunc) error {
	t.Helper()
	ps := gochannel.NewGoChannel(gochannel.Config{Persistent: true}, watermill.NopLogger{})
	r, _ := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	result := make(chan error, 1)
	r.AddHandler(handler, "in", ps, "out", ps, func(m *message.Message) ([]*message.Message, error) {
		out, err := mw(h)(m)
		select {
		case result <- err:
		default:
		}
		if err != nil {
			return nil, nil // the test reads the error; ack to stop redelivery
		}
		return out, nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = r.Run(ctx) }()
	<-r.Running()
	if err := ps.Publish("in", msg); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-result:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("handler never ran")
		return nil
	}
}

func TestDelayedRetrySchedulesTransientOnly(t *testing.T) {
	sched := &recordingScheduler{}
	d, err := middleware.NewDelayedRetry(middleware.DelayedRetryConfig{Stages: []time.Duration{time.Second, time.Minute}, Scheduler: sched})
	if err != nil {
		t.Fatal(err)
	}
	if err := runOne(t, d.Middleware, "h", func(*message.Message) ([]*message.Message, error) {
		return nil, poison.Transient(errors.New("timeout"))
	}); err != nil {
		t.Fatalf("transient failure not settled by scheduling: %v", err)
	}
	if err := runOne(t, d.Middleware, "h", func(*message.Message) ([]*message.Message, error) {
		return nil, poison.Permanent(errors.New("bad"))
	}); err == nil {
		t.Fatal("permanent failure was scheduled instead of returned")
	}
	if len(sched.calls) != 1 || sched.calls[0] != "in/1/1s" {
		t.Fatalf("calls %v", sched.calls)
	}
	// A failing schedule must not drop the message: it is Defer'd (nacked).
	sched.fail = true
	err = runOne(t, d.Middleware, "h", func(*message.Message) ([]*message.Message, error) {
		return nil, errors.New("timeout")
	})
	if !errors.Is(err, poison.ErrDeferred) {
		t.Fatalf("schedule failure: %v, want a Defer'd error", err)
	}
}

// A failure reported after the subscriber ended the delivery is not moved
// to a stage: the original would come again beside its scheduled copy.
// The stage a message says it is in is believed to pick the next delay,
// but one no stage of this list can have written (a producer's
// antidote.retry_stage=99) starts at the first: it cannot skip the stages.
// The last stage's own number still goes to the DLQ.
func TestDelayedRetryForgedStage(t *testing.T) {
	for stage, want := range map[string]string{"99": "in/1/1s", "2147483648": "in/1/1s", "-1": "in/1/1s", "x": "in/1/1s", "1": "in/2/1m0s", "2": ""} {
		sched := &recordingScheduler{}
		d, err := middleware.NewDelayedRetry(middleware.DelayedRetryConfig{Stages: []time.Duration{time.Second, time.Minute}, Scheduler: sched})
		if err != nil {
			t.Fatal(err)
		}
		msg := message.NewMessage("m1", []byte("x"))
		msg.Metadata.Set(antidote.MetadataRetryStage, stage)
		err = runOneMessage(t, d.Middleware, "h", msg, func(*message.Message) ([]*message.Message, error) {
			return nil, poison.Transient(errors.New("timeout"))
		})
		got := ""
		if len(sched.calls) > 0 {
			got = sched.calls[0]
		}
		if got != want || len(sched.calls) > 1 || (want == "") != (err != nil) {
			t.Errorf("retry_stage %q: scheduled %v (err %v), want %q", stage, sched.calls, err, want)
		}
	}
}

func TestDelayedRetryNotAfterTheDeliveryEnded(t *testing.T) {
	sched := &recordingScheduler{}
	d, err := middleware.NewDelayedRetry(middleware.DelayedRetryConfig{Stages: []time.Duration{time.Second}, Scheduler: sched})
	if err != nil {
		t.Fatal(err)
	}
	// The context the message comes with, ended by the subscriber while
	// the handler runs (ack deadline, shutdown).
	var end context.CancelFunc
	delivery := func(h message.HandlerFunc) message.HandlerFunc {
		return func(m *message.Message) ([]*message.Message, error) {
			ctx, cancel := context.WithCancel(m.Context())
			defer cancel()
			m.SetContext(ctx)
			end = cancel
			return d.Middleware(h)(m)
		}
	}
	err = runOne(t, delivery, "h", func(*message.Message) ([]*message.Message, error) {
		end()
		return nil, poison.Transient(errors.New("timeout"))
	})
	if err == nil || errors.Is(err, poison.ErrDeferred) {
		t.Fatalf("ended delivery: %v, want the handler's error", err)
	}
	if len(sched.calls) != 0 {
		t.Fatalf("scheduled after the delivery ended: %v", sched.calls)
	}
}

// Watermill's Timeout below it leaves a cancelled context of its own on
// the message: not the delivery ending, so the failure moves to its stage.
func TestDelayedRetryBelowAWatermillTimeout(t *testing.T) {
	sched := &recordingScheduler{}
	d, err := middleware.NewDelayedRetry(middleware.DelayedRetryConfig{Stages: []time.Duration{time.Second}, Scheduler: sched})
	if err != nil {
		t.Fatal(err)
	}
	if err := runOne(t, d.Middleware, "h", wmmiddleware.Timeout(time.Minute)(func(*message.Message) ([]*message.Message, error) {
		return nil, poison.Transient(errors.New("timeout"))
	})); err != nil {
		t.Fatalf("not moved to a stage: %v", err)
	}
	if len(sched.calls) != 1 {
		t.Fatalf("calls %v", sched.calls)
	}
}

func TestDelayedRetryOnlyListedHandlers(t *testing.T) {
	sched := &recordingScheduler{}
	d, err := middleware.NewDelayedRetry(middleware.DelayedRetryConfig{Stages: []time.Duration{time.Second}, Scheduler: sched, Handlers: []string{"unordered"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := runOne(t, d.Middleware, "ordered", func(*message.Message) ([]*message.Message, error) {
		return nil, errors.New("timeout")
	}); err == nil {
		t.Fatal("a handler not listed used delayed retries")
	}
	if len(sched.calls) != 0 {
		t.Fatalf("calls %v", sched.calls)
	}
}

func TestDelayedRetryConfig(t *testing.T) {
	for _, c := range []middleware.DelayedRetryConfig{
		{Scheduler: &recordingScheduler{}},
		{Stages: []time.Duration{0}, Scheduler: &recordingScheduler{}},
		{Stages: []time.Duration{time.Second}},
	} {
		if _, err := middleware.NewDelayedRetry(c); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
}
