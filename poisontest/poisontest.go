package poisontest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/poison"
	"github.com/antidote-mq/antidote/router"
)

// Defaults of the options.
const (
	DefaultTimeout     = 5 * time.Second
	DefaultMaxAttempts = 3
)

// Outcome is what became of one input.
type Outcome string

// The outcomes. Processed and DeadLettered are settled; the others break a
// promise (so does DeadLettered for a valid sample).
const (
	Processed    Outcome = "processed"     // acked, the handler returned nil
	DeadLettered Outcome = "dead_lettered" // in the DLQ topic with a reason, then acked
	Blocked      Outcome = "blocked"       // the sentinel behind it was not through within the timeout
	Looped       Outcome = "looped"        // the handler ran more than the max attempts for it
	Unsettled    Outcome = "unsettled"     // neither processed nor dead-lettered within the timeout
)

// Result is one input's outcome.
type Result struct {
	Input   string  // Input.Name
	Valid   bool    // Input.Valid
	Outcome Outcome // what became of it
	// Reason and Error are the dead letter's antidote.reason and
	// antidote.error, when it was dead-lettered.
	Reason poison.Reason
	Error  string
	// Invocations counts the handler runs for the input.
	Invocations int
	// Elapsed is from publishing the input to its verdict.
	Elapsed time.Duration
	// Problem is empty when the input kept every promise; otherwise it says
	// which one broke, as reported with t.Errorf.
	Problem string
}

// Report lists every input's Result, in the order they were sent.
type Report struct {
	Results []Result
}

// Failed reports whether any input broke a promise.
func (r Report) Failed() bool {
	for _, res := range r.Results {
		if res.Problem != "" {
			return true
		}
	}
	return false
}

// String is a table of the results, one line per input.
func (r Report) String() string {
	var b strings.Builder
	for _, res := range r.Results {
		fmt.Fprintf(&b, "%-22s %-14s", res.Input, res.Outcome)
		if res.Reason != "" {
			fmt.Fprintf(&b, " reason=%s", res.Reason)
		}
		fmt.Fprintf(&b, " invocations=%d elapsed=%s", res.Invocations, res.Elapsed.Round(time.Millisecond))
		if res.Problem != "" {
			fmt.Fprintf(&b, " PROBLEM: %s", res.Problem)
		}
		b.WriteByte('\n')
	}
	return b.String()
}

type options struct {
	timeout     time.Duration
	maxAttempts int
	valid       [][]byte
	inputs      []Input
	battery     bool
	configure   func(*router.Config)
}

// Option configures Run.
type Option func(*options)

// WithTimeout sets the per-message timeout: the sentinel published after an
// input must be through the stack within it. Default DefaultTimeout. It also
// bounds how long Run waits for an input to settle.
func WithTimeout(d time.Duration) Option { return func(o *options) { o.timeout = d } }

// WithMaxAttempts sets Retry's attempts per delivery and the most handler
// runs one input may take before it counts as looping. Default
// DefaultMaxAttempts.
func WithMaxAttempts(n int) Option { return func(o *options) { o.maxAttempts = n } }

// WithValid adds valid payloads: each must be processed, so healthy
// processing is checked too. The first is also the body of the battery's
// metadata-only inputs.
func WithValid(payloads ...[]byte) Option {
	return func(o *options) { o.valid = append(o.valid, payloads...) }
}

// WithInputs adds inputs of your own, sent after the battery.
func WithInputs(inputs ...Input) Option {
	return func(o *options) { o.inputs = append(o.inputs, inputs...) }
}

// WithoutBattery leaves out the built-in bad inputs: only WithValid and
// WithInputs are sent.
func WithoutBattery() Option { return func(o *options) { o.battery = false } }

// WithRouterConfig lets f adjust the router.Config before router.New, e.g.
// to use your production Breaker or Classifier settings. The kit's
// DeadLetter.Publisher and Retry attempts are set before f runs.
func WithRouterConfig(f func(*router.Config)) Option { return func(o *options) { o.configure = f } }

// Run sends every input through handler under the full stack and reports
// each broken promise with t.Errorf (one line per input). It calls t.Fatalf
// only when the stack itself cannot be built.
func Run(t testing.TB, handler message.NoPublishHandlerFunc, opts ...Option) Report {
	t.Helper()
	o := options{timeout: DefaultTimeout, maxAttempts: DefaultMaxAttempts, battery: true}
	for _, opt := range opts {
		opt(&o)
	}
	if o.timeout <= 0 || o.maxAttempts < 1 {
		t.Fatalf("poisontest: timeout %s and max attempts %d must be positive", o.timeout, o.maxAttempts)
		return Report{}
	}
	var inputs []Input
	if o.battery {
		var sample []byte
		if len(o.valid) > 0 {
			sample = o.valid[0]
		}
		inputs = append(inputs, Battery(sample)...)
	}
	for i, p := range o.valid {
		inputs = append(inputs, Input{Name: fmt.Sprintf("valid sample %d", i+1), Payload: p, Valid: true})
	}
	inputs = append(inputs, o.inputs...)

	var rep Report
	for i, in := range inputs {
		res, err := runOne(i, in, handler, o)
		if err != nil {
			t.Fatalf("poisontest: input %q: %v", in.Name, err)
			return rep
		}
		if res.Problem != "" {
			t.Errorf("poisontest: input %q: %s: %s", in.Name, res.Outcome, res.Problem)
		}
		rep.Results = append(rep.Results, res)
	}
	return rep
}

// state is what the kit observed of one input's run, shared by the
// handler wrapper, the ack watcher and the DLQ reader.
type state struct {
	mu           sync.Mutex
	invocations  map[string]int
	lastOK       map[string]bool
	acked        map[string]bool
	letters      map[string]poison.Letter
	badLetters   []string
	sentinelDone bool
}

func (s *state) with(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f()
}

func runOne(i int, in Input, handler message.NoPublishHandlerFunc, o options) (Result, error) {
	topic := fmt.Sprintf("poisontest_%d", i)
	inputUUID := fmt.Sprintf("poisontest-input-%d", i)
	sentinelUUID := fmt.Sprintf("poisontest-sentinel-%d", i)
	st := &state{invocations: map[string]int{}, lastOK: map[string]bool{}, acked: map[string]bool{}, letters: map[string]poison.Letter{}}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b, err := adapters.Open(ctx, adapters.Config{Broker: adapters.KindMemory}, watermill.NopLogger{})
	if err != nil {
		return Result{}, err
	}
	defer func() { _ = b.Close() }()

	cfg := router.Config{CrashLoopGuard: middleware.CrashLoopGuardConfig{Tracker: poison.MustNewMemoryDeliveryTracker(poison.MemoryDeliveryTrackerConfig{})},
		CloseTimeout: time.Second,
		DeadLetter:   middleware.DeadLetterConfig{Publisher: b.Publisher, PublishTimeout: o.timeout},
		Retry: middleware.RetryConfig{
			MaxAttempts:     o.maxAttempts,
			InitialInterval: time.Millisecond,
			MaxInterval:     10 * time.Millisecond,
		},
	}
	if o.configure != nil {
		o.configure(&cfg)
	}
	r, err := router.New(cfg)
	if err != nil {
		return Result{}, err
	}

	dlqTopic := antidote.DLQTopic(topic)
	if cfg.DeadLetter.Topic != nil {
		dlqTopic = cfg.DeadLetter.Topic(topic)
	}
	letters, err := b.LetterSubscriber().Subscribe(ctx, dlqTopic)
	if err != nil {
		return Result{}, err
	}
	readerDone := make(chan struct{})
	defer func() {
		cancel() // ends the DLQ subscription
		select {
		case <-readerDone:
		case <-time.After(5 * time.Second):
		}
	}()
	go func() {
		defer close(readerDone)
		for msg := range letters {
			l, err := poison.ReadEnvelope(msg)
			st.with(func() {
				if err != nil {
					st.badLetters = append(st.badLetters, fmt.Sprintf("%s: %v", msg.UUID, err))
				} else {
					st.letters[msg.UUID] = l
				}
			})
			msg.Ack()
		}
	}()

	wrapped := func(msg *message.Message) error {
		if msg.Metadata.Get(MetadataSentinel) != "" {
			return nil
		}
		ok := false
		st.with(func() { st.invocations[msg.UUID]++ })
		defer func() { st.with(func() { st.lastOK[msg.UUID] = ok }) }()
		if msg.Metadata.Get(MetadataInjectedPanic) != "" {
			panic("poisontest: injected handler panic")
		}
		err := handler(msg)
		ok = err == nil
		return err
	}
	sub := &oneAtATime{inner: b.Subscriber, onAck: func(uuid string) {
		st.with(func() {
			st.acked[uuid] = true
			if uuid == sentinelUUID {
				st.sentinelDone = true
			}
		})
	}}
	r.AddConsumerHandler("poisontest", topic, sub, wrapped)
	runErr := make(chan error, 1)
	go func() { runErr <- r.Run(ctx) }()
	select {
	case <-r.Running():
	case err := <-runErr:
		return Result{}, fmt.Errorf("router: %w", err)
	case <-time.After(10 * time.Second):
		return Result{}, errors.New("router did not start within 10s")
	}
	defer func() {
		cancel()
		_ = r.Close()
		<-runErr
	}()

	msg := message.NewMessage(inputUUID, in.Payload)
	for k, v := range in.Metadata {
		msg.Metadata.Set(k, v)
	}
	if in.injectPanic {
		msg.Metadata.Set(MetadataInjectedPanic, "1")
	}
	start := time.Now()
	if err := b.Publisher.Publish(topic, msg); err != nil {
		return Result{}, fmt.Errorf("publish: %w", err)
	}
	// The sentinel goes out once the input has reached the handler (or
	// settled without it), so it queues behind the input.
	reached := func() bool {
		var ok bool
		st.with(func() { ok = st.invocations[inputUUID] > 0 || st.acked[inputUUID] })
		return ok
	}
	waitUntil(start.Add(o.timeout), reached)
	sentinel := message.NewMessage(sentinelUUID, []byte(`{}`))
	sentinel.Metadata.Set(MetadataSentinel, "1")
	if err := b.Publisher.Publish(topic, sentinel); err != nil {
		return Result{}, fmt.Errorf("publish sentinel: %w", err)
	}
	deadline := time.Now().Add(o.timeout)
	done := func() bool {
		var ok bool
		st.with(func() {
			if st.invocations[inputUUID] > o.maxAttempts {
				ok = true
				return
			}
			_, lettered := st.letters[inputUUID]
			settled := st.acked[inputUUID] && (lettered || st.lastOK[inputUUID])
			ok = st.sentinelDone && settled
		})
		return ok
	}
	waitUntil(deadline, done)

	res := Result{Input: in.Name, Valid: in.Valid, Elapsed: time.Since(start)}
	st.with(func() {
		res.Invocations = st.invocations[inputUUID]
		l, lettered := st.letters[inputUUID]
		if lettered {
			res.Reason, res.Error = l.Reason, l.Error
		}
		acked := st.acked[inputUUID]
		switch {
		case res.Invocations > o.maxAttempts:
			res.Outcome = Looped
			res.Problem = fmt.Sprintf("the handler ran %d times for one input, more than the %d attempts allowed", res.Invocations, o.maxAttempts)
		case !st.sentinelDone:
			res.Outcome = Blocked
			res.Problem = fmt.Sprintf("the queue is blocked: a healthy message published after it was not through within %s", o.timeout)
		case acked && lettered:
			res.Outcome = DeadLettered
		case acked && st.lastOK[inputUUID]:
			res.Outcome = Processed
		default:
			res.Outcome = Unsettled
			res.Problem = fmt.Sprintf("neither processed nor dead-lettered within %s (acked=%t, handler runs=%d)", o.timeout, acked, res.Invocations)
		}
		if res.Problem == "" {
			switch {
			case in.Valid && res.Outcome != Processed:
				res.Problem = fmt.Sprintf("a valid sample was dead-lettered (reason %s: %s)", res.Reason, res.Error)
			case in.WantReason != "" && string(res.Reason) != in.WantReason:
				res.Problem = fmt.Sprintf("want dead letter with reason %s, got %s %s", in.WantReason, res.Outcome, res.Reason)
			case len(st.badLetters) > 0:
				res.Problem = fmt.Sprintf("malformed DLQ envelope: %s", strings.Join(st.badLetters, "; "))
			}
		}
	})
	return res, nil
}

func waitUntil(deadline time.Time, cond func() bool) {
	for !cond() && time.Now().Before(deadline) {
		time.Sleep(2 * time.Millisecond)
	}
}

// oneAtATime hands the router one message at a time and waits for its ack
// or nack before the next, as a Kafka partition or a prefetch-1 queue does.
type oneAtATime struct {
	inner message.Subscriber
	onAck func(uuid string)
}

func (s *oneAtATime) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	in, err := s.inner.Subscribe(ctx, topic)
	if err != nil {
		return nil, err
	}
	out := make(chan *message.Message)
	go func() {
		defer close(out)
		for msg := range in {
			select {
			case out <- msg:
			case <-ctx.Done():
				return
			}
			select {
			case <-msg.Acked():
				s.onAck(msg.UUID)
			case <-msg.Nacked():
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}

func (s *oneAtATime) Close() error { return nil }
