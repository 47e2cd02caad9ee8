package throttle

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
)

// LagSource reports a consumer's backlog: how many messages of topic are
// published but not yet consumed (acked). Implementations query a broker;
// BackpressurePublisher calls Lag from a single poller goroutine and caches
// the answer, so Lag need not be cheap, only bounded by ctx.
type LagSource interface {
	Lag(ctx context.Context, topic string) (int64, error)
}

// LagSourceFunc adapts a function to LagSource.
type LagSourceFunc func(ctx context.Context, topic string) (int64, error)

// Lag calls f.
func (f LagSourceFunc) Lag(ctx context.Context, topic string) (int64, error) { return f(ctx, topic) }

// ErrBackpressure is matched (errors.Is) by every error a
// BackpressurePublisher returns because the consumer's backlog is too high.
// errors.As with *BackpressureError gives the details.
var ErrBackpressure = errors.New("backpressure: the consumer's backlog is above the high watermark")

// ErrPublisherClosed is wrapped by Publish after, or interrupted by, Close.
var ErrPublisherClosed = errors.New("throttle: backpressure publisher closed")

// BackpressureError says why a publish was refused or interrupted. It
// matches ErrBackpressure with errors.Is.
type BackpressureError struct {
	Topic string
	// Backlog is the backlog the decision was based on: the last reading
	// plus what this publisher published since.
	Backlog int64
	// HighWatermark and LowWatermark are the configured bounds: publishing
	// stopped when Backlog reached HighWatermark and resumes at or below
	// LowWatermark.
	HighWatermark, LowWatermark int64
	// Waited is how long Publish blocked before giving up (in Reject mode
	// at most the wait for a new topic's first reading).
	Waited time.Duration
	// Err is the error of the last backlog reading, when the backlog could
	// not be read and FailClosed treated that as too high; nil otherwise.
	Err error
}

func (e *BackpressureError) Error() string {
	s := fmt.Sprintf("backpressure on topic %q: backlog %d, publishing resumes at or below %d (paused at %d)", e.Topic, e.Backlog, e.LowWatermark, e.HighWatermark)
	if e.Waited > 0 {
		s += fmt.Sprintf(", after waiting %s", e.Waited.Round(time.Millisecond))
	}
	if e.Err != nil {
		s += fmt.Sprintf(" (backlog unreadable: %v)", e.Err)
	}
	return s
}

// Is makes errors.Is(err, ErrBackpressure) hold.
func (e *BackpressureError) Is(target error) bool { return target == ErrBackpressure }

// Unwrap returns the backlog reading error, if any.
func (e *BackpressureError) Unwrap() error { return e.Err }

// BackpressureMode is what Publish does while the backlog is too high.
type BackpressureMode int

const (
	// Block waits until the backlog is at or below LowWatermark, the
	// message context ends, BlockTimeout passes, or the publisher is closed.
	// The producer slows to the consumer's pace. The default.
	Block BackpressureMode = iota
	// Reject returns a *BackpressureError at once; the producer decides
	// (shed load, answer 429/503 upstream, retry later).
	Reject
)

func (m BackpressureMode) String() string {
	switch m {
	case Block:
		return "block"
	case Reject:
		return "reject"
	}
	return fmt.Sprintf("BackpressureMode(%d)", int(m))
}

// Defaults of BackpressureConfig.
const (
	DefaultHighWatermark = 10000
	DefaultPollInterval  = 200 * time.Millisecond
	DefaultPollTimeout   = 5 * time.Second
)

// BackpressureConfig configures a BackpressurePublisher.
type BackpressureConfig struct {
	// Publisher does the publishing. Required: if nil,
	// NewBackpressurePublisher fails. Close closes it, as
	// Watermill's own publisher decorators do.
	Publisher message.Publisher

	// Source reads the consumer's backlog per topic. Required: if nil,
	// NewBackpressurePublisher fails. It belongs
	// to the caller: Close does not close it (sources can be shared).
	Source LagSource

	// HighWatermark is the backlog at which publishing stops. Default
	// 10,000. Size it by what the broker can hold and how long a backlog
	// you accept (backlog / consumer rate is the delay a new message sees).
	HighWatermark int64

	// LowWatermark is the backlog at or below which publishing resumes.
	// Default HighWatermark/2. The gap is the hysteresis: a narrow gap
	// toggles producers on and off often; a wide one lets the backlog, and
	// the latency it means, swing more.
	LowWatermark int64

	// Mode is Block (default) or Reject.
	Mode BackpressureMode

	// BlockTimeout, in Block mode, gives up after this long with a
	// *BackpressureError. Default 0: wait as long as the message context
	// allows.
	BlockTimeout time.Duration

	// PollInterval is how often the backlog of each topic published to is
	// read, by one goroutine for all topics. Default 200ms. Between
	// readings the publisher adds what it published itself, so the backlog
	// cannot overshoot HighWatermark by a whole interval of publishing;
	// what the interval does decide is how soon a blocked producer notices
	// the backlog fell (the backlog can undershoot LowWatermark by about a
	// consumer's interval of work) and the load on the broker (one query
	// per topic per interval).
	PollInterval time.Duration

	// PollTimeout bounds one reading. Default 5s.
	PollTimeout time.Duration

	// FailClosed treats a backlog that cannot be read (the query failed) as
	// above HighWatermark: Publish blocks or rejects until a reading works.
	// Default false: publishing goes on with the last good reading plus
	// what was published since (or none, if there never was one), logged
	// once per outage; the broker being down usually fails the publish
	// itself anyway.
	FailClosed bool

	// OnWait, when set, is called after each Publish that met backpressure
	// (waited for the backlog to fall, or was refused), with how long it
	// waited and the error it returns (nil when it went on to publish). For
	// metrics; it must not block. If nil, nothing is called.
	OnWait func(topic string, waited time.Duration, err error)

	// Logger gets pause/resume transitions and reading errors. Default
	// watermill.NopLogger: none.
	Logger watermill.LoggerAdapter
}

func (c *BackpressureConfig) setDefaults() {
	if c.HighWatermark == 0 {
		c.HighWatermark = DefaultHighWatermark
	}
	if c.LowWatermark == 0 {
		c.LowWatermark = c.HighWatermark / 2
	}
	if c.PollInterval == 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.PollTimeout == 0 {
		c.PollTimeout = DefaultPollTimeout
	}
	if c.Logger == nil {
		c.Logger = watermill.NopLogger{}
	}
}

// Validate reports every invalid field of c, after defaults are applied
// (NewBackpressurePublisher applies them first), in field order, joined
// with errors.Join. Publisher and Source are required; the other zero
// fields are valid: they stand for their defaults, which Validate uses in
// the checks that compare fields.
func (c BackpressureConfig) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("throttle: BackpressureConfig."+format, args...))
	}
	if c.Publisher == nil {
		bad("Publisher is nil: pass the publisher to guard, such as adapters.Broker.Publisher")
	}
	if c.Source == nil {
		bad("Source is nil: pass a LagSource, such as adapters.OpenLagSource(ctx, broker.Config)")
	}
	high := orDefault(c.HighWatermark, DefaultHighWatermark)
	if high < 1 {
		bad("HighWatermark is %d: set the backlog at which publishing stops, 1 or more", high)
	}
	if low := orDefault(c.LowWatermark, high/2); low < 0 || low >= high {
		bad("LowWatermark (%d) must be at least 0 and below HighWatermark (%d): lower it (0 picks HighWatermark/2)", low, high)
	}
	if c.Mode != Block && c.Mode != Reject {
		bad("Mode is %v: use throttle.Block or throttle.Reject", c.Mode)
	}
	if c.BlockTimeout < 0 {
		bad("BlockTimeout is %s: set a positive duration, or 0 to wait as long as the message context allows", c.BlockTimeout)
	}
	if c.PollInterval < 0 {
		bad("PollInterval is %s: set a positive duration such as 200ms", c.PollInterval)
	}
	if c.PollTimeout < 0 {
		bad("PollTimeout is %s: set a positive duration such as 5s", c.PollTimeout)
	}
	return errors.Join(errs...)
}

// BackpressurePublisher is a message.Publisher that stops publishing while
// the consumer's backlog is too high: at HighWatermark it blocks (or
// rejects, by Mode) until the backlog is at or below LowWatermark. Between
// the two it lets messages through, so the backlog stays in the band.
//
// Publish has no context parameter, so a blocked Publish ends with the
// messages' own context (msg.SetContext; the first of them to end), with
// BlockTimeout, or with Close. A message without a context (Background)
// waits until one of the other two.
//
// One goroutine polls the backlog of every topic published to so far, every
// PollInterval; Close stops it.
type BackpressurePublisher struct {
	cfg BackpressureConfig

	mu     sync.Mutex
	topics map[string]*topicLag

	wake    chan struct{} // a new topic wants its first reading now
	closing chan struct{}
	stopped chan struct{} // closed when the poller returned
	cancel  context.CancelFunc

	closeOnce sync.Once
	closeErr  error
}

// topicLag is one topic's backlog state, guarded by BackpressurePublisher.mu.
type topicLag struct {
	polled    bool  // a reading was attempted
	readable  bool  // a reading ever succeeded
	lag       int64 // the last good reading
	err       error // the last reading's error, nil when it worked
	published int64 // messages this publisher counted for the topic, ever
	// publishedAtReading is published as it was when the last good
	// reading's query started: what it already includes.
	publishedAtReading int64
	paused             bool          // between HighWatermark and LowWatermark on the way down
	updated            chan struct{} // closed and replaced after every reading
}

func (t *topicLag) backlog() int64 {
	return t.lag + t.published - t.publishedAtReading
}

// NewBackpressurePublisher fills cfg's defaults, validates it (see
// BackpressureConfig.Validate) and starts the poller.
func NewBackpressurePublisher(cfg BackpressureConfig) (*BackpressurePublisher, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &BackpressurePublisher{
		cfg:     cfg,
		topics:  make(map[string]*topicLag),
		wake:    make(chan struct{}, 1),
		closing: make(chan struct{}),
		stopped: make(chan struct{}),
		cancel:  cancel,
	}
	go p.poll(ctx)
	return p, nil
}

// Publish publishes msgs once the backlog of topic allows it. See
// BackpressurePublisher for when it waits and how the wait ends. Errors:
// a *BackpressureError (errors.Is ErrBackpressure) when refused; that error
// joined with the context's error when a message context ended the wait,
// or with ErrPublisherClosed when Close did; otherwise the inner
// publisher's error.
func (p *BackpressurePublisher) Publish(topic string, msgs ...*message.Message) error {
	select {
	case <-p.closing:
		return fmt.Errorf("%w: publish to %q", ErrPublisherClosed, topic)
	default:
	}
	ctx, stop := messagesContext(msgs)
	defer stop()
	n := int64(len(msgs))
	st, err := p.admit(ctx, topic, n)
	if err != nil {
		return err
	}
	if err := p.cfg.Publisher.Publish(topic, msgs...); err != nil {
		// Assume none of them made it: an undercount lasts only until the
		// next reading, an overcount would too but could block for nothing.
		p.mu.Lock()
		st.published -= n
		p.mu.Unlock()
		return err
	}
	return nil
}

// admit waits until topic accepts n more messages and counts them.
func (p *BackpressurePublisher) admit(ctx context.Context, topic string, n int64) (*topicLag, error) {
	var (
		start   time.Time
		timeout <-chan time.Time
		held    bool // the backlog was too high at least once
	)
	waited := func() time.Duration {
		if start.IsZero() {
			return 0
		}
		return time.Since(start)
	}
	// OnWait reports backpressure, not the short wait for a new topic's
	// first reading (unless that wait fails).
	finish := func(err error) {
		if p.cfg.OnWait != nil && (held || err != nil) {
			p.cfg.OnWait(topic, waited(), err)
		}
	}
	for {
		p.mu.Lock()
		st := p.topicLocked(topic)
		var bpErr *BackpressureError
		if st.polled {
			bpErr = p.decideLocked(topic, st)
			if bpErr == nil {
				st.published += n
				p.mu.Unlock()
				finish(nil)
				return st, nil
			}
		}
		updated := st.updated
		p.mu.Unlock()

		if bpErr != nil {
			held = true
			bpErr.Waited = waited()
			if p.cfg.Mode == Reject {
				finish(bpErr)
				return nil, bpErr
			}
		}
		// Block mode, or the first reading of a new topic (in any mode).
		if start.IsZero() {
			start = time.Now()
		}
		if p.cfg.BlockTimeout > 0 && bpErr != nil && timeout == nil {
			t := time.NewTimer(p.cfg.BlockTimeout)
			defer t.Stop() // at most once: timeout is set from here on
			timeout = t.C
		}
		select {
		case <-updated:
		case <-timeout:
			bpErr.Waited = waited()
			finish(bpErr)
			return nil, bpErr
		case <-ctx.Done():
			err := p.interrupted(topic, bpErr, waited(), ctx.Err())
			finish(err)
			return nil, err
		case <-p.closing:
			err := p.interrupted(topic, bpErr, waited(), ErrPublisherClosed)
			finish(err)
			return nil, err
		}
	}
}

// interrupted builds the error of a wait ended by cause: it matches cause
// and, when the wait was for backpressure, ErrBackpressure too.
func (p *BackpressurePublisher) interrupted(topic string, bpErr *BackpressureError, waited time.Duration, cause error) error {
	if bpErr == nil {
		return fmt.Errorf("throttle: publish to %q: waiting for the first backlog reading: %w", topic, cause)
	}
	bpErr.Waited = waited
	return fmt.Errorf("%w: %w", cause, bpErr)
}

// decideLocked applies the watermarks; nil means publish.
func (p *BackpressurePublisher) decideLocked(topic string, st *topicLag) *BackpressureError {
	backlog := st.backlog()
	if st.err != nil {
		if p.cfg.FailClosed {
			return p.errorLocked(topic, backlog, st.err)
		}
		return nil
	}
	wasPaused := st.paused
	if st.paused && backlog <= p.cfg.LowWatermark {
		st.paused = false
	}
	if !st.paused && backlog >= p.cfg.HighWatermark {
		st.paused = true
	}
	if st.paused != wasPaused {
		verb := "Backpressure: consumer caught up, publishing resumes"
		if st.paused {
			verb = "Backpressure: consumer backlog at the high watermark, publishing paused"
		}
		p.cfg.Logger.Info(verb, watermill.LogFields{"topic": topic, "backlog": backlog, "high_watermark": p.cfg.HighWatermark, "low_watermark": p.cfg.LowWatermark, "mode": p.cfg.Mode.String()})
	}
	if st.paused {
		return p.errorLocked(topic, backlog, nil)
	}
	return nil
}

func (p *BackpressurePublisher) errorLocked(topic string, backlog int64, err error) *BackpressureError {
	return &BackpressureError{Topic: topic, Backlog: backlog, HighWatermark: p.cfg.HighWatermark, LowWatermark: p.cfg.LowWatermark, Err: err}
}

func (p *BackpressurePublisher) topicLocked(topic string) *topicLag {
	st, ok := p.topics[topic]
	if !ok {
		st = &topicLag{updated: make(chan struct{})}
		p.topics[topic] = st
		select {
		case p.wake <- struct{}{}:
		default:
		}
	}
	return st
}

// Backlog is the current backlog estimate of topic (the last reading plus
// what was published since) and whether topic has been read successfully.
func (p *BackpressurePublisher) Backlog(topic string) (backlog int64, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	st, found := p.topics[topic]
	if !found || !st.readable {
		return 0, false
	}
	return st.backlog(), true
}

// poll reads every known topic's backlog each PollInterval, and at once
// when a new topic appears, until Close.
func (p *BackpressurePublisher) poll(ctx context.Context) {
	defer close(p.stopped)
	ticker := time.NewTicker(p.cfg.PollInterval)
	defer ticker.Stop()
	for {
		select {
		case <-p.closing:
			return
		case <-ticker.C:
		case <-p.wake:
		}
		p.mu.Lock()
		names := make([]string, 0, len(p.topics))
		for name := range p.topics {
			names = append(names, name)
		}
		p.mu.Unlock()
		for _, name := range names {
			if ctx.Err() != nil {
				return
			}
			p.read(ctx, name)
		}
	}
}

func (p *BackpressurePublisher) read(ctx context.Context, topic string) {
	p.mu.Lock()
	st := p.topics[topic]
	startedAt := st.published
	p.mu.Unlock()

	qctx, cancel := context.WithTimeout(ctx, p.cfg.PollTimeout)
	lag, err := p.cfg.Source.Lag(qctx, topic)
	cancel()
	if err != nil && ctx.Err() != nil {
		return // closing: not an outage worth recording
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		if st.err == nil {
			p.cfg.Logger.Error("Backpressure: cannot read the consumer backlog", err, watermill.LogFields{"topic": topic, "fail_closed": p.cfg.FailClosed})
		}
	} else {
		if st.err != nil {
			p.cfg.Logger.Info("Backpressure: consumer backlog readable again", watermill.LogFields{"topic": topic, "backlog": lag})
		}
		st.lag, st.publishedAtReading, st.readable = lag, startedAt, true
	}
	st.err, st.polled = err, true
	close(st.updated)
	st.updated = make(chan struct{})
}

// Close stops the poller, makes every blocked Publish return an error
// wrapping ErrPublisherClosed, then closes the inner publisher. It waits for
// a reading in progress, which PollTimeout bounds. Safe to call more than
// once.
func (p *BackpressurePublisher) Close() error {
	p.closeOnce.Do(func() {
		close(p.closing)
		p.cancel()
		<-p.stopped
		p.closeErr = p.cfg.Publisher.Close()
	})
	return p.closeErr
}

// messagesContext returns a context that ends when the first of the
// messages' contexts ends, and a func releasing it. With one message it is
// that message's context.
func messagesContext(msgs []*message.Message) (context.Context, func()) {
	switch len(msgs) {
	case 0:
		return context.Background(), func() {}
	case 1:
		return msgs[0].Context(), func() {}
	}
	ctx, cancel := context.WithCancel(context.Background())
	stops := make([]func() bool, 0, len(msgs))
	seen := make(map[context.Context]bool, 1)
	for _, m := range msgs {
		mctx := m.Context()
		if seen[mctx] {
			continue
		}
		seen[mctx] = true
		if err := mctx.Err(); err != nil {
			cancel()
			break
		}
		stops = append(stops, context.AfterFunc(mctx, cancel))
	}
	return ctx, func() {
		for _, stop := range stops {
			stop()
		}
		cancel()
	}
}
