package middleware_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	wmmiddleware "github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/poison"
)

const (
	dlSourceTopic = "orders"
	dlOutTopic    = "orders.out"
	dlHandlerName = "store-orders"
	dlWait        = 10 * time.Second
)

// dlCollector acks and keeps every message a subscription receives.
type dlCollector struct {
	mu   sync.Mutex
	msgs []*message.Message
	more chan struct{}
}

func dlCollect(t *testing.T, pubSub message.Subscriber, topic string) *dlCollector {
	t.Helper()
	ch, err := pubSub.Subscribe(context.Background(), topic)
	require.NoError(t, err)
	c := &dlCollector{more: make(chan struct{}, 1)}
	go func() {
		for m := range ch {
			c.mu.Lock()
			c.msgs = append(c.msgs, m)
			c.mu.Unlock()
			m.Ack()
			select {
			case c.more <- struct{}{}:
			default:
			}
		}
	}()
	return c
}

func (c *dlCollector) all() []*message.Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*message.Message(nil), c.msgs...)
}

// waitN waits until at least n messages arrived and returns all of them.
func (c *dlCollector) waitN(t *testing.T, n int) []*message.Message {
	t.Helper()
	deadline := time.After(dlWait)
	for {
		if got := c.all(); len(got) >= n {
			return got
		}
		select {
		case <-c.more:
		case <-time.After(10 * time.Millisecond):
		case <-deadline:
			t.Fatalf("waited for %d messages, got %d", n, len(c.all()))
		}
	}
}

// dlPublisher wraps the DLQ publisher: it can fail the first `fail` calls,
// block, and run a hook before each publish.
type dlPublisher struct {
	message.Publisher
	fail      atomic.Int32 // publishes left to fail
	calls     atomic.Int32
	published atomic.Int32
	before    func(topic string, msgs []*message.Message)
	block     chan struct{} // when non-nil, Publish waits for it to close
}

func (p *dlPublisher) Publish(topic string, msgs ...*message.Message) error {
	p.calls.Add(1)
	if p.before != nil {
		p.before(topic, msgs)
	}
	if p.block != nil {
		<-p.block
	}
	if p.fail.Add(-1) >= 0 {
		return errors.New("broker unavailable")
	}
	if err := p.Publisher.Publish(topic, msgs...); err != nil {
		return err
	}
	p.published.Add(1)
	return nil
}

type dlRigOpts struct {
	handler   message.HandlerFunc
	retry     middleware.RetryConfig // MaxAttempts 0 means no Retry middleware
	dlqTopic  func(string) string
	configure func(p *dlPublisher)
}

// dlRig is a real message.Router over gochannel with the standard stack
// DeadLetter -> Retry -> Recover -> handler, plus an outermost tap that
// records every delivery and what the stack returned for it.
type dlRig struct {
	pubSub *gochannel.GoChannel
	router *message.Router
	dlqPub *dlPublisher
	dl     *middleware.DeadLetter
	dlq    *dlCollector
	out    *dlCollector

	mu         sync.Mutex
	deliveries map[string][]*message.Message
	results    []error
	// ends[i] ends the i-th delivery's context, as a subscriber does when
	// it stops waiting for the answer (ack deadline, shutdown).
	ends []context.CancelFunc
}

func startDLRig(t *testing.T, o dlRigOpts) *dlRig {
	t.Helper()
	logger := watermill.NopLogger{}
	r := &dlRig{
		pubSub:     gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 16}, logger),
		deliveries: map[string][]*message.Message{},
	}
	r.dlqPub = &dlPublisher{Publisher: r.pubSub}
	if o.configure != nil {
		o.configure(r.dlqPub)
	}
	dlqTopic := antidote.DLQTopic(dlSourceTopic)
	if o.dlqTopic != nil {
		dlqTopic = o.dlqTopic(dlSourceTopic)
	}
	r.dlq = dlCollect(t, r.pubSub, dlqTopic)
	r.out = dlCollect(t, r.pubSub, dlOutTopic)

	var err error
	r.dl, err = middleware.NewDeadLetter(middleware.DeadLetterConfig{
		Publisher:     r.dlqPub,
		Topic:         o.dlqTopic,
		ConsumerGroup: "sink",
	})
	require.NoError(t, err)

	r.router, err = message.NewRouter(message.RouterConfig{CloseTimeout: dlWait}, logger)
	require.NoError(t, err)
	h := r.router.AddHandler(dlHandlerName, dlSourceTopic, r.pubSub, dlOutTopic, r.pubSub, o.handler)
	mws := []message.HandlerMiddleware{r.tap, r.dl.Middleware}
	if o.retry.MaxAttempts != 0 {
		mws = append(mws, newRetry(t, o.retry).Middleware)
	}
	mws = append(mws, middleware.Recover)
	h.AddMiddleware(mws...)

	go func() { _ = r.router.Run(context.Background()) }()
	select {
	case <-r.router.Running():
	case <-time.After(dlWait):
		t.Fatal("router did not start")
	}
	t.Cleanup(func() {
		_ = r.router.Close()
		_ = r.pubSub.Close()
	})
	return r
}

func (r *dlRig) tap(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		ctx, cancel := context.WithCancel(msg.Context())
		defer cancel()
		msg.SetContext(ctx)
		r.mu.Lock()
		r.deliveries[msg.UUID] = append(r.deliveries[msg.UUID], msg)
		r.ends = append(r.ends, cancel)
		r.mu.Unlock()
		out, err := h(msg)
		r.mu.Lock()
		r.results = append(r.results, err)
		r.mu.Unlock()
		return out, err
	}
}

func (r *dlRig) deliveriesOf(uuid string) []*message.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*message.Message(nil), r.deliveries[uuid]...)
}

func (r *dlRig) lastResult() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.results) == 0 {
		return nil
	}
	return r.results[len(r.results)-1]
}

func (r *dlRig) publish(t *testing.T, msgs ...*message.Message) {
	t.Helper()
	require.NoError(t, r.pubSub.Publish(dlSourceTopic, msgs...))
}

func waitClosed(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(dlWait):
		t.Fatalf("timed out waiting for %s", what)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testenv.Eventually(t, dlWait, what, cond)
}

type order struct {
	UserID int    `json:"user_id"`
	Msg    string `json:"msg"`
}

// storeOrder is the example handler: valid JSON is stored, anything else is
// poison. It also emits a message to show what happens to output.
func storeOrder(msg *message.Message) ([]*message.Message, error) {
	var o order
	if err := json.Unmarshal(msg.Payload, &o); err != nil {
		return []*message.Message{message.NewMessage("out-"+msg.UUID, msg.Payload)}, fmt.Errorf("decode order: %w", err)
	}
	if o.UserID <= 0 {
		return nil, poison.Invalidf("user_id must be > 0, got %d", o.UserID)
	}
	return []*message.Message{message.NewMessage("out-"+msg.UUID, msg.Payload)}, nil
}

func TestDeadLetterEnvelopeThroughRouter(t *testing.T) {
	rig := startDLRig(t, dlRigOpts{
		handler: storeOrder,
		retry:   middleware.RetryConfig{MaxAttempts: 3, InitialInterval: time.Millisecond},
	})
	payload := []byte("{\"user_id\":1,\"msg\":\"Hello World\"\xff")
	msg := message.NewMessage(watermill.NewUUID(), payload)
	msg.Metadata.Set(poison.KeyTraceparent, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	msg.Metadata.Set(poison.KeyProducer, "relay-7")
	msg.Metadata.Set("idempotency_key", "k-1")
	before := time.Now()
	rig.publish(t, msg)

	letter := rig.dlq.waitN(t, 1)[0]
	assert.Equal(t, msg.UUID, letter.UUID)
	assert.Equal(t, payload, []byte(letter.Payload), "payload byte for byte")

	md := letter.Metadata
	assert.Equal(t, dlSourceTopic, md.Get(poison.KeyOriginalTopic))
	assert.Equal(t, dlHandlerName, md.Get(poison.KeyHandler))
	assert.Equal(t, "sink", md.Get(poison.KeyConsumerGroup))
	assert.Equal(t, "permanent", md.Get(poison.KeyReason))
	assert.Equal(t, "decode order: invalid character 'ÿ' after object key:value pair", md.Get(poison.KeyError))
	assert.Equal(t, "*json.SyntaxError", md.Get(poison.KeyErrorType))
	assert.Equal(t, "1", md.Get(poison.KeyAttempts), "permanent: not retried")
	assert.Empty(t, md.Get(poison.KeyStack))
	assert.Equal(t, "relay-7", md.Get(poison.KeyProducer))
	assert.Equal(t, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", md.Get(poison.KeyTraceparent))
	assert.Equal(t, "k-1", md.Get("idempotency_key"))
	_, hasPartition := md[poison.KeyOriginalPartition]
	assert.False(t, hasPartition, "gochannel has no partitions")

	l, err := poison.ReadEnvelope(letter)
	require.NoError(t, err)
	assert.False(t, l.FirstFailedAt.Before(before.Add(-time.Second)))
	assert.Equal(t, l.FirstFailedAt, l.LastFailedAt)

	// The original is acked once (not redelivered) and only after the DLQ
	// publish.
	d := rig.deliveriesOf(msg.UUID)
	require.Len(t, d, 1)
	waitClosed(t, d[0].Acked(), "the original to be acked")
	assert.Empty(t, rig.out.all(), "the failed attempt's output is dropped")
}

func dlPanickingHandler(*message.Message) ([]*message.Message, error) {
	panic("cannot handle this")
}

func TestDeadLetterReasons(t *testing.T) {
	tests := []struct {
		name         string
		handler      message.HandlerFunc
		noRetry      bool
		wantReason   poison.Reason
		wantAttempts string
		wantType     string
		wantStack    string
	}{
		{
			name:       "transient exhausts retries",
			handler:    func(*message.Message) ([]*message.Message, error) { return nil, poison.Transient(errDBDown) },
			wantReason: poison.ReasonRetriesExhausted, wantAttempts: "3", wantType: "*errors.errorString",
		},
		{
			name:       "unknown exhausts retries",
			handler:    func(*message.Message) ([]*message.Message, error) { return nil, errDBDown },
			wantReason: poison.ReasonRetriesExhausted, wantAttempts: "3", wantType: "*errors.errorString",
		},
		{
			name:       "panic",
			handler:    dlPanickingHandler,
			wantReason: poison.ReasonPanic, wantAttempts: "1", wantType: "*poison.PanicError", wantStack: "dlPanickingHandler",
		},
		{
			name:       "invalid",
			handler:    storeOrder, // payload below has user_id 0
			wantReason: poison.ReasonPermanent, wantAttempts: "1", wantType: "*poison.ValidationError",
		},
		{
			name: "explicit reason wins",
			handler: func(*message.Message) ([]*message.Message, error) {
				return nil, poison.WithReason(errors.New("schema v9 unknown"), poison.ReasonUndecodable)
			},
			wantReason: poison.ReasonUndecodable, wantAttempts: "1", wantType: "*errors.errorString",
		},
		{
			name:       "no Retry: transient is exhausted after one attempt",
			handler:    func(*message.Message) ([]*message.Message, error) { return nil, poison.Transient(errDBDown) },
			noRetry:    true,
			wantReason: poison.ReasonRetriesExhausted, wantAttempts: "1", wantType: "*errors.errorString",
		},
		{
			name:       "no Retry: permanent",
			handler:    storeOrder,
			noRetry:    true,
			wantReason: poison.ReasonPermanent, wantAttempts: "1", wantType: "*poison.ValidationError",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := dlRigOpts{handler: tt.handler}
			if !tt.noRetry {
				o.retry = middleware.RetryConfig{MaxAttempts: 3, InitialInterval: time.Millisecond}
			}
			rig := startDLRig(t, o)
			msg := message.NewMessage(watermill.NewUUID(), []byte(`{"user_id":0,"msg":"hi"}`))
			rig.publish(t, msg)

			l, err := poison.ReadEnvelope(rig.dlq.waitN(t, 1)[0])
			require.NoError(t, err)
			assert.Equal(t, tt.wantReason, l.Reason)
			assert.Equal(t, tt.wantAttempts, strconv.Itoa(l.Attempts))
			assert.Equal(t, tt.wantType, l.ErrorType)
			if tt.wantStack != "" {
				assert.Contains(t, l.Stack, tt.wantStack)
			} else {
				assert.Empty(t, l.Stack)
			}
			assert.NotContains(t, l.Error, "retries exhausted", "the RetryError wrapper is not repeated in the letter")
			assert.False(t, l.LastFailedAt.Before(l.FirstFailedAt))
			waitClosed(t, rig.deliveriesOf(msg.UUID)[0].Acked(), "ack")
		})
	}
}

func TestDeadLetterDropsOutputOfFailedAttempts(t *testing.T) {
	var calls atomic.Int32
	rig := startDLRig(t, dlRigOpts{
		retry: middleware.RetryConfig{MaxAttempts: 3, InitialInterval: time.Millisecond},
		handler: func(msg *message.Message) ([]*message.Message, error) {
			if string(msg.Payload) == "flaky" {
				n := calls.Add(1)
				out := []*message.Message{message.NewMessage(fmt.Sprintf("flaky-attempt-%d", n), nil)}
				if n == 1 {
					return out, errDBDown
				}
				return out, nil
			}
			return storeOrder(msg)
		},
	})
	flaky := message.NewMessage("flaky", []byte("flaky"))
	poisoned := message.NewMessage("poisoned", []byte("{not json"))
	good := message.NewMessage("good", []byte(`{"user_id":1,"msg":"Hello World"}`))
	rig.publish(t, flaky, poisoned, good)

	out := rig.out.waitN(t, 2)
	dlq := rig.dlq.waitN(t, 1)
	for _, m := range append(rig.deliveriesOf("flaky"), append(rig.deliveriesOf("poisoned"), rig.deliveriesOf("good")...)...) {
		waitClosed(t, m.Acked(), "ack of "+m.UUID)
	}

	var outIDs []string
	for _, m := range out {
		outIDs = append(outIDs, m.UUID)
	}
	assert.ElementsMatch(t, []string{"flaky-attempt-2", "out-good"}, outIDs,
		"only successful attempts publish; the failed flaky attempt and the poison pill's output are dropped")
	require.Len(t, dlq, 1)
	assert.Equal(t, "poisoned", dlq[0].UUID)
}

// TestDeadLetterPublishFailureNacksNothingLost: while the DLQ cannot be
// written the poison pill is nacked (never acked) and redelivered; once the
// publisher recovers it is dead-lettered exactly once, and every healthy
// message is processed exactly once.
func TestDeadLetterPublishFailureNacksNothingLost(t *testing.T) {
	const total, poisonEvery, dlqFailures = 20, 5, 3
	var processed sync.Map // uuid -> *atomic.Int32
	var rig *dlRig
	var ackedBeforePublish atomic.Int32
	rig = startDLRig(t, dlRigOpts{
		retry: middleware.RetryConfig{MaxAttempts: 2, InitialInterval: time.Millisecond},
		handler: func(msg *message.Message) ([]*message.Message, error) {
			out, err := storeOrder(msg)
			if err == nil {
				n, _ := processed.LoadOrStore(msg.UUID, new(atomic.Int32))
				n.(*atomic.Int32).Add(1)
			}
			return out, err
		},
		configure: func(p *dlPublisher) {
			p.fail.Store(dlqFailures)
			p.before = func(_ string, msgs []*message.Message) {
				for _, d := range rig.deliveriesOf(msgs[0].UUID) {
					select {
					case <-d.Acked():
						ackedBeforePublish.Add(1)
					default:
					}
				}
			}
		},
	})

	var poisonIDs []string
	for i := 1; i <= total; i++ {
		payload := fmt.Sprintf(`{"user_id":%d,"msg":"Hello World"}`, i)
		if i%poisonEvery == 0 {
			payload = payload[:len(payload)-1] // the missing closing brace
		}
		msg := message.NewMessage(fmt.Sprintf("msg-%02d", i), []byte(payload))
		if i%poisonEvery == 0 {
			poisonIDs = append(poisonIDs, msg.UUID)
		}
		rig.publish(t, msg)
	}
	wantPoison := len(poisonIDs)

	dlq := rig.dlq.waitN(t, wantPoison)
	waitFor(t, "all healthy messages", func() bool {
		n := 0
		processed.Range(func(any, any) bool { n++; return true })
		return n == total-wantPoison
	})
	for _, id := range poisonIDs {
		d := rig.deliveriesOf(id)
		waitClosed(t, d[len(d)-1].Acked(), "ack of "+id)
	}
	// Close waits for running handlers; after it nothing can be in flight.
	require.NoError(t, rig.router.Close())

	var dlqIDs []string
	for _, m := range dlq {
		dlqIDs = append(dlqIDs, m.UUID)
	}
	assert.ElementsMatch(t, poisonIDs, dlqIDs, "each poison pill dead-lettered exactly once")
	assert.EqualValues(t, wantPoison, rig.dlqPub.published.Load(), "no duplicate letters")
	assert.EqualValues(t, wantPoison+dlqFailures, rig.dlqPub.calls.Load())
	assert.Zero(t, ackedBeforePublish.Load(), "an original must never be acked before its letter is published")

	redelivered := 0
	for _, id := range poisonIDs {
		d := rig.deliveriesOf(id)
		redelivered += len(d) - 1
		for _, m := range d[:len(d)-1] {
			waitClosed(t, m.Nacked(), "nack of a delivery whose letter failed")
		}
	}
	assert.Equal(t, dlqFailures, redelivered, "one redelivery per failed DLQ publish")
	processed.Range(func(k, v any) bool {
		assert.EqualValues(t, 1, v.(*atomic.Int32).Load(), "%s processed more than once", k)
		return true
	})
	assert.Equal(t, total, len(dlqIDs)+(total-wantPoison), "in = processed + dead-lettered")
}

func TestDeadLetterShutdownNacksInsteadOfDeadLettering(t *testing.T) {
	started := make(chan struct{})
	var once sync.Once
	rig := startDLRig(t, dlRigOpts{
		retry: middleware.RetryConfig{MaxAttempts: 5, InitialInterval: time.Hour, MaxInterval: time.Hour},
		handler: func(*message.Message) ([]*message.Message, error) {
			once.Do(func() { close(started) })
			return nil, errDBDown
		},
	})
	msg := message.NewMessage(watermill.NewUUID(), []byte("x"))
	rig.publish(t, msg)
	waitClosed(t, started, "the first attempt")

	closed := make(chan error, 1)
	go func() { closed <- rig.router.Close() }()
	select {
	case err := <-closed:
		require.NoError(t, err, "Close must not time out waiting for the retry's hour-long wait")
	case <-time.After(dlWait):
		t.Fatal("router.Close hangs while Retry waits")
	}

	err := rig.lastResult()
	require.Error(t, err, "the message must be nacked")
	assert.ErrorIs(t, err, context.Canceled)
	waitClosed(t, rig.deliveriesOf(msg.UUID)[0].Nacked(), "nack")
	assert.Zero(t, rig.dlqPub.calls.Load(), "shutdown is not a reason to dead-letter")
}

func TestDeadLetterRefusesSourceTopicAsDLQ(t *testing.T) {
	rig := startDLRig(t, dlRigOpts{
		handler:  storeOrder,
		dlqTopic: func(source string) string { return source },
	})
	msg := message.NewMessage(watermill.NewUUID(), []byte("{broken"))
	rig.publish(t, msg)

	waitFor(t, "a redelivery", func() bool { return len(rig.deliveriesOf(msg.UUID)) >= 2 })
	require.NoError(t, rig.router.Close())

	assert.ErrorIs(t, rig.lastResult(), middleware.ErrDeadLetterLoop)
	waitClosed(t, rig.deliveriesOf(msg.UUID)[0].Nacked(), "nack")
	assert.Zero(t, rig.dlqPub.calls.Load(), "nothing is published to the source topic")
}

// routedMessage returns a message as a handler sees it (with the router's
// context values), for calling Send directly.
func routedMessage(t *testing.T, rig *dlRig) *message.Message {
	t.Helper()
	msg := message.NewMessage(watermill.NewUUID(), []byte(`{"user_id":1,"msg":"Hello World"}`))
	msg.Metadata.Set(poison.KeyAttempts, "2")
	rig.publish(t, msg)
	waitFor(t, "delivery", func() bool { return len(rig.deliveriesOf(msg.UUID)) > 0 })
	return rig.deliveriesOf(msg.UUID)[0]
}

func TestDeadLetterSend(t *testing.T) {
	rig := startDLRig(t, dlRigOpts{handler: storeOrder})
	msg := routedMessage(t, rig)

	require.NoError(t, rig.dl.Send(context.Background(), msg, poison.Failure{Reason: poison.ReasonCrashLoop, Attempts: 6}))
	l, err := poison.ReadEnvelope(rig.dlq.waitN(t, 1)[0])
	require.NoError(t, err)
	assert.Equal(t, poison.ReasonCrashLoop, l.Reason)
	assert.Equal(t, 6, l.Attempts)
	assert.Equal(t, dlSourceTopic, l.OriginalTopic)
	assert.Equal(t, dlHandlerName, l.Handler)
	assert.Empty(t, l.Error, "a crash loop has no error")
	assert.False(t, l.LastFailedAt.IsZero(), "Send stamps the time")
	assert.Equal(t, l.LastFailedAt, l.FirstFailedAt)

	require.NoError(t, rig.dl.Send(context.Background(), msg, poison.Failure{Reason: poison.ReasonFloodGuard}))
	l, err = poison.ReadEnvelope(rig.dlq.waitN(t, 2)[1])
	require.NoError(t, err)
	assert.Equal(t, 2, l.Attempts, "Attempts 0 keeps the message's count")

	err = rig.dl.Send(context.Background(), message.NewMessage("u", nil), poison.Failure{})
	assert.ErrorContains(t, err, "source topic is unknown")
}

func TestDeadLetterSendTimeout(t *testing.T) {
	block := make(chan struct{})
	rig := startDLRig(t, dlRigOpts{handler: storeOrder, configure: func(p *dlPublisher) { p.block = block }})
	defer close(block)
	msg := routedMessage(t, rig)

	dl, err := middleware.NewDeadLetter(middleware.DeadLetterConfig{Publisher: rig.dlqPub, PublishTimeout: 20 * time.Millisecond})
	require.NoError(t, err)
	err = dl.Send(context.Background(), msg, poison.Failure{Err: errDBDown})
	assert.ErrorIs(t, err, context.DeadlineExceeded)

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	assert.ErrorIs(t, dl.Send(ctx, msg, poison.Failure{Err: errDBDown}), context.Canceled, "Send honours its context")
}

func TestNewDeadLetterValidates(t *testing.T) {
	_, err := middleware.NewDeadLetter(middleware.DeadLetterConfig{})
	assert.ErrorContains(t, err, "DeadLetterConfig.Publisher")
	_, err = middleware.NewDeadLetter(middleware.DeadLetterConfig{
		Publisher: gochannel.NewGoChannel(gochannel.Config{}, watermill.NopLogger{}), PublishTimeout: -time.Second,
	})
	assert.ErrorContains(t, err, "DeadLetterConfig.PublishTimeout")
	assert.Equal(t, "orders.dlq", antidote.DLQTopic("orders"))
}

// Watermill's Timeout below DeadLetter leaves its own context on the
// message, cancelled once the handler returned: that is not the delivery
// ending, and the failure is dead-lettered as usual, once.
func TestDeadLetterBelowAWatermillTimeout(t *testing.T) {
	rig := startDLRig(t, dlRigOpts{handler: wmmiddleware.Timeout(time.Minute)(func(*message.Message) ([]*message.Message, error) {
		return nil, poison.Permanent(errors.New("bad order"))
	})})
	msg := message.NewMessage(watermill.NewUUID(), []byte("x"))
	rig.publish(t, msg)

	rig.dlq.waitN(t, 1)
	d := rig.deliveriesOf(msg.UUID)
	require.Len(t, d, 1)
	waitClosed(t, d[0].Acked(), "the ack after the letter")
	assert.Equal(t, int32(1), rig.dlqPub.calls.Load())
}

// endedThenLettered waits for msg's one letter and returns what the stack
// returned for its first delivery, after checking that it was nacked and
// that one redelivery followed.
func (r *dlRig) endedThenLettered(t *testing.T, msg *message.Message) error {
	t.Helper()
	r.dlq.waitN(t, 1)
	d := r.deliveriesOf(msg.UUID)
	require.Len(t, d, 2)
	waitClosed(t, d[0].Nacked(), "the nack of the delivery that ended")
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.results[0]
}

// endFirst ends the first delivery, as its subscriber does when it stops
// waiting for the answer (PostgreSQL's ack deadline, router shutdown).
func (r *dlRig) endFirst() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ends[0]()
}

// A handler that fails (not with a context error) after its delivery ended:
// the ack would not reach the broker, so a letter now would be followed by
// another for the redelivery. It is nacked instead, and the redelivery,
// whose delivery lasts, is dead-lettered: one letter.
func TestDeadLetterNotAfterTheDeliveryEnded(t *testing.T) {
	var runs atomic.Int32
	var rig *dlRig
	rig = startDLRig(t, dlRigOpts{handler: func(*message.Message) ([]*message.Message, error) {
		if runs.Add(1) == 1 {
			rig.endFirst()
		}
		return nil, errDBDown
	}})
	msg := message.NewMessage(watermill.NewUUID(), []byte("x"))
	rig.publish(t, msg)

	first := rig.endedThenLettered(t, msg)
	assert.Equal(t, int32(1), rig.dlqPub.calls.Load(), "no letter is attempted for the delivery that ended")
	assert.ErrorIs(t, first, context.Canceled)
	assert.ErrorIs(t, first, errDBDown)
	assert.ErrorContains(t, first, "its delivery ended")
}

// The delivery ends while the letter is being published: the publish is
// cut short and the message nacked, not acked into the void after a letter
// that its redelivery would repeat.
func TestDeadLetterPublishCutWhenTheDeliveryEnds(t *testing.T) {
	var rig *dlRig
	rig = startDLRig(t, dlRigOpts{
		handler: func(*message.Message) ([]*message.Message, error) {
			return nil, errDBDown
		},
		configure: func(p *dlPublisher) {
			p.before = func(_ string, msgs []*message.Message) {
				if p.calls.Load() != 1 {
					return
				}
				rig.endFirst()
				select { // the letter's context ends with the delivery
				case <-msgs[0].Context().Done():
				case <-time.After(dlWait):
					t.Error("the letter's publish went on after the delivery ended")
				}
				p.fail.Store(1)
			}
		},
	})
	msg := message.NewMessage(watermill.NewUUID(), []byte("x"))
	rig.publish(t, msg)

	first := rig.endedThenLettered(t, msg)
	assert.Equal(t, int32(1), rig.dlqPub.published.Load())
	assert.ErrorContains(t, first, "its delivery ended")
}
