package middleware

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/internal/clock"
	"github.com/antidote-mq/antidote/poison"
)

// DefaultPublishTimeout bounds one DLQ publish when
// DeadLetterConfig.PublishTimeout is zero.
const DefaultPublishTimeout = 10 * time.Second

// ErrDeadLetterLoop is returned (wrapped) by Send when the DLQ topic of a
// message equals its source topic: publishing there would feed the poison
// pill straight back to the consumer that just gave up on it.
var ErrDeadLetterLoop = errors.New("antidote: dead-letter topic equals the source topic")

// DeadLetterConfig configures DeadLetter.
type DeadLetterConfig struct {
	// Publisher publishes the letters. Required: if nil, NewDeadLetter
	// fails. Usually the publisher of the same broker the messages come
	// from.
	Publisher message.Publisher
	// Topic maps a source topic to its DLQ topic. Default antidote.DLQTopic.
	// One DLQ per source topic keeps letters replayable to where they came
	// from without parsing metadata first.
	Topic func(sourceTopic string) string
	// HandlerTopics names the DLQ topic of particular handlers (by handler
	// name), overriding Topic for them. If nil, Topic names every handler's
	// DLQ topic.
	HandlerTopics map[string]string
	// ConsumerGroup is recorded under poison.KeyConsumerGroup (it is not in
	// the message context). If empty, letters carry no consumer group unless
	// the message context names one. Under router.New, ConsumerGroup and
	// ConsumerVersion default to router.Config.Consumer's Group and Version.
	ConsumerGroup string
	// ConsumerVersion is recorded under poison.KeyConsumerVersion, so the
	// hospital knows which version of the service gave up on a letter (a
	// canary replay waits for a newer one). If empty, the main module's
	// version from the build information, or its VCS revision when the
	// version is "(devel)", or nothing when the binary has neither.
	ConsumerVersion string
	// PublishTimeout bounds one DLQ publish. Default 10s. It runs under its
	// own context derived from context.Background(), not msg.Context(), so
	// a message whose context is already cancelled (shutdown) can still be
	// dead-lettered. A publish that times out nacks the original; if the
	// publisher ignores the context and finishes later, the letter may then
	// exist twice (same UUID) — a duplicate in the DLQ, never a loss.
	PublishTimeout time.Duration
	// FailedPublishPause is how long a message whose letter could not be
	// published waits before it is nacked. Default 1s. Some brokers
	// (RabbitMQ) redeliver a nacked message at once, so while the DLQ is
	// down every poison message would otherwise loop as fast as the
	// network allows. The pause honours the message context. Negative: none.
	FailedPublishPause time.Duration
	// ClaimCheck stores the payload and metadata of a letter that does not
	// fit the DLQ even with its envelope shrunk (a message at the broker's
	// limit, or one the source broker took above kafka.max_message_bytes);
	// the letter then carries a reference (poison.KeyClaimCheck) and the
	// hospital reads it back. Default nil: such a letter cannot be written,
	// so the message is nacked with an error saying to configure one. Use
	// pgstore.NewClaimCheckStore or redisstore.NewClaimCheckStore.
	ClaimCheck poison.ClaimCheck
	// Classifier tells reason "permanent" from "retries_exhausted" when the
	// error did not come through Retry. Default poison.DefaultClassifier().
	Classifier poison.Classifier
	// Logger gets one line per letter and per failed publish. Default
	// watermill.NopLogger.
	Logger watermill.LoggerAdapter
	// Now stamps failure times when Retry did not. Default time.Now.
	Now func() time.Time
}

// DeadLetter sends the messages a handler finally failed on to a dead-letter
// topic, with an envelope saying where from, why and after how many
// attempts (see poison.Envelope), and acks the original only once the
// letter is published. Build it with NewDeadLetter.
type DeadLetter struct {
	cfg DeadLetterConfig
}

func (c *DeadLetterConfig) setDefaults() {
	if c.ConsumerVersion == "" {
		c.ConsumerVersion = buildVersion()
	}
	if c.Topic == nil {
		c.Topic = antidote.DLQTopic
	}
	if c.PublishTimeout == 0 {
		c.PublishTimeout = DefaultPublishTimeout
	}
	if c.FailedPublishPause == 0 {
		c.FailedPublishPause = time.Second
	}
	if c.Classifier == nil {
		c.Classifier = poison.DefaultClassifier()
	}
	if c.Logger == nil {
		c.Logger = watermill.NopLogger{}
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Validate reports every invalid field of c, after defaults are applied
// (NewDeadLetter applies them first), in field order, joined with
// errors.Join. A zero field other than Publisher is valid: it stands for
// its default.
func (c DeadLetterConfig) Validate() error {
	var errs []error
	if c.Publisher == nil {
		errs = append(errs, errors.New("antidote: DeadLetterConfig.Publisher is nil: pass the publisher that can write to the DLQ topics"))
	}
	if c.PublishTimeout < 0 {
		errs = append(errs, fmt.Errorf("antidote: DeadLetterConfig.PublishTimeout is %v: set a positive duration (0 picks the default %v)", c.PublishTimeout, DefaultPublishTimeout))
	}
	return errors.Join(errs...)
}

// NewDeadLetter fills cfg's defaults, validates it (see
// DeadLetterConfig.Validate) and returns the middleware.
func NewDeadLetter(cfg DeadLetterConfig) (*DeadLetter, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &DeadLetter{cfg: cfg}, nil
}

// Middleware returns the dead-lettering handler. A message whose broker
// record could not be decoded (antidote.IsUndecodable) is dead-lettered with
// reason "undecodable" without running h. When h fails:
//
//   - if the error is poison.Defer'd (the DLQ-storm breaker holds it back),
//     it is returned unchanged: the message is nacked and redelivered later,
//     not dead-lettered;
//   - if the message context is done (the router is shutting down, or the
//     broker's ack deadline passed), whatever the error, the message is
//     nacked, not dead-lettered: its ack would not reach the broker, which
//     delivers it again, and the letter would be a duplicate;
//   - otherwise the envelope is published to the DLQ topic and (nil, nil) is
//     returned, so the router acks the original and the messages produced by
//     the failed attempt are dropped;
//   - if publishing fails, an error wrapping both the publish error and the
//     handler error is returned: the original is nacked. Nothing is acked
//     unless it is in the DLQ.
//
// The reason recorded is, in order: an explicit poison.WithReason; "panic"
// for a *poison.PanicError; "permanent" when the error is permanent (by
// Retry's verdict or this Classifier); otherwise "retries_exhausted" (also
// when no Retry ran: the one attempt there was is used up).
func (d *DeadLetter) Middleware(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		if antidote.IsUndecodable(msg) {
			return nil, d.settleUndecodable(msg)
		}
		ctx := msg.Context()
		produced, err := h(msg)
		if err == nil {
			return produced, nil
		}
		// The delivery's context, not one a middleware below left (Watermill's
		// Timeout leaves its own, cancelled, on the message).
		msg.SetContext(ctx)
		return nil, d.settleFailed(msg, err)
	}
}

// settleUndecodable dead-letters a message the subscriber could not decode.
func (d *DeadLetter) settleUndecodable(msg *message.Message) error {
	return d.settle(msg, poison.Failure{Reason: poison.ReasonUndecodable, Err: &poison.UndecodableError{Detail: msg.Metadata.Get(antidote.MetadataUndecodable)}, Attempts: 1})
}

// settleFailed returns err as it is for a deferred message, and otherwise
// dead-letters msg (out of Middleware's closure, so the frame
// kept on the stack while the handler runs is small).
func (d *DeadLetter) settleFailed(msg *message.Message, err error) error {
	if errors.Is(err, poison.ErrDeferred) {
		return err
	}
	return d.settle(msg, d.failureOf(msg, err))
}

// settle dead-letters msg; a nil result acks it, an error nacks it.
//
// Only while its delivery lasts: once the subscriber ended it (router
// closing, PostgreSQL's ack deadline passed) the ack would not reach the
// broker, which delivers it again, and a letter sent now would be one of
// two. The publish is cut short when the delivery ends during it, for the
// same reason.
func (d *DeadLetter) settle(msg *message.Message, f poison.Failure) error {
	if deliveryOver(msg) {
		return d.notSettled(msg, f)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	defer context.AfterFunc(msg.Context(), cancel)()
	if sendErr := d.Send(ctx, msg, f); sendErr != nil {
		if deliveryOver(msg) {
			return d.notSettled(msg, f)
		}
		d.cfg.Logger.Error("Dead-lettering failed, nacking the message so it is redelivered", sendErr, traceFields(msg.Context(), watermill.LogFields{
			"message_uuid": msg.UUID,
			"handler_err":  f.Err.Error(),
		}))
		if d.cfg.FailedPublishPause > 0 {
			clock.Sleep(msg.Context(), d.cfg.FailedPublishPause)
		}
		return fmt.Errorf("antidote: message %s not dead-lettered, nacking it: %w (handler error: %w)", msg.UUID, sendErr, f.Err)
	}
	return nil
}

// notSettled nacks msg, whose delivery ended before it was dead-lettered.
func (d *DeadLetter) notSettled(msg *message.Message, f poison.Failure) error {
	cause := msg.Context().Err()
	if errors.Is(f.Err, cause) {
		return f.Err // a shutdown the handler saw: its error says so already
	}
	d.cfg.Logger.Info("Message not dead-lettered: its delivery ended first (router closing, or the broker's ack deadline passed); it is delivered again", traceFields(msg.Context(), watermill.LogFields{
		"message_uuid": msg.UUID,
		"reason":       string(f.Reason),
		"handler_err":  f.Err.Error(),
		"cause":        cause.Error(),
	}))
	return fmt.Errorf("antidote: message %s not dead-lettered, its delivery ended: %w (handler error: %w)", msg.UUID, cause, f.Err)
}

// failureOf describes err, taking attempts and times from a *RetryError
// when Retry produced one.
func (d *DeadLetter) failureOf(msg *message.Message, err error) poison.Failure {
	now := d.cfg.Now()
	f := poison.Failure{Err: err, FirstFailedAt: now, LastFailedAt: now, Attempts: 1}
	if n, convErr := strconv.Atoi(msg.Metadata.Get(poison.KeyAttempts)); convErr == nil && n > 0 {
		f.Attempts = n
	}

	var re *RetryError
	fromRetry := errors.As(err, &re)
	if fromRetry {
		if err == error(re) {
			// The RetryError wrapper only restates attempts, which the
			// envelope records separately; keep the handler's own error.
			f.Err = re.Err
		}
		f.Attempts = re.Attempts
		if !re.FirstFailedAt.IsZero() {
			f.FirstFailedAt = re.FirstFailedAt
		}
		if !re.LastFailedAt.IsZero() {
			f.LastFailedAt = re.LastFailedAt
		}
	}

	switch r := poison.InferReason(err); {
	case r != "":
		f.Reason = r
	case fromRetry && re.Class == poison.ClassPermanent,
		d.cfg.Classifier.Classify(f.Err) == poison.ClassPermanent:
		f.Reason = poison.ReasonPermanent
	default:
		f.Reason = poison.ReasonRetriesExhausted
	}
	return f
}

// Send publishes msg's envelope (poison.Envelope with f) to the DLQ topic of
// the topic msg was consumed from, within PublishTimeout of ctx. It is used
// by Middleware and by the crash-loop guard, which dead-letters without
// running the handler. Empty fields of f are filled: LastFailedAt with Now,
// FirstFailedAt with LastFailedAt; an empty Reason is inferred from f.Err
// (see poison.Failure); Attempts 0 keeps the message's poison.KeyAttempts.
//
// The publish runs under ctx (not msg.Context()) but keeps the trace of msg:
// its span and baggage go into the letter's context and its traceparent into
// the letter's metadata (see Tracing). With a publisher decorated by
// telemetry.NewPublisher the letter's traceparent then names the DLQ-publish
// span; without one, the consumer span; without Tracing, the original's.
//
// It refuses (with an error, so the caller nacks) when the source topic is
// unknown (msg not consumed through a message.Router), when Topic returns
// "", and when the DLQ topic equals the source topic (ErrDeadLetterLoop).
func (d *DeadLetter) Send(ctx context.Context, msg *message.Message, f poison.Failure) error {
	o := poison.OriginOf(msg)
	if o.ConsumerGroup == "" {
		o.ConsumerGroup = d.cfg.ConsumerGroup
	}
	o.ConsumerVersion = d.cfg.ConsumerVersion
	if o.Topic == "" {
		return fmt.Errorf("antidote: cannot dead-letter message %s: its source topic is unknown (message.SubscribeTopicFromCtx is empty; consume it through a message.Router)", msg.UUID)
	}
	topic, ok := d.cfg.HandlerTopics[o.Handler]
	if !ok {
		topic = d.cfg.Topic(o.Topic)
	}
	if topic == "" {
		return fmt.Errorf("antidote: cannot dead-letter message %s: DeadLetterConfig.Topic returned an empty DLQ topic for %q", msg.UUID, o.Topic)
	}
	if topic == o.Topic {
		return fmt.Errorf("%w: %q; make DeadLetterConfig.Topic return a different topic (message %s not dead-lettered)", ErrDeadLetterLoop, topic, msg.UUID)
	}

	if f.LastFailedAt.IsZero() {
		f.LastFailedAt = d.cfg.Now()
	}
	if f.FirstFailedAt.IsZero() {
		f.FirstFailedAt = f.LastFailedAt
	}
	letter := poison.Envelope(msg, o, f)

	if err := ctx.Err(); err != nil {
		return fmt.Errorf("antidote: not publishing message %s to DLQ topic %q: %w", msg.UUID, topic, err)
	}
	// ctx is our own (not msg.Context()), but the letter belongs to the
	// message's trace: carry its consumer span, so a decorated publisher
	// (telemetry.NewPublisher) makes the DLQ publish a child of it, and
	// point the letter's traceparent there. WithLetter lets the adapter
	// give the envelope room over its ordinary size limit.
	ctx = antidote.WithLetter(withTraceOf(ctx, msg.Context()))
	stampTraceparent(ctx, letter.Metadata)
	ctx, cancel := context.WithTimeout(ctx, d.cfg.PublishTimeout)
	defer cancel()
	// Publishers that honour the message context (SQL, AMQP) stop at the
	// deadline; for the others publish enforces it.
	letter.SetContext(ctx)
	err := d.publish(ctx, topic, letter)
	if errors.Is(err, antidote.ErrMessageTooLarge) {
		letter, err = d.publishTooLarge(ctx, topic, letter, err)
	}
	if err != nil {
		return fmt.Errorf("antidote: publishing message %s to DLQ topic %q: %w", msg.UUID, topic, err)
	}

	noteDeadLettered(msg.Context(), poison.Reason(letter.Metadata.Get(poison.KeyReason)), topic, f.Err)
	fields := watermill.LogFields{
		"message_uuid": msg.UUID,
		"topic":        o.Topic,
		"dlq_topic":    topic,
		"handler_name": o.Handler,
		"reason":       letter.Metadata.Get(poison.KeyReason),
		"attempts":     letter.Metadata.Get(poison.KeyAttempts),
	}
	if f.Err != nil {
		fields["err"] = f.Err.Error()
	}
	d.cfg.Logger.Info("Message dead-lettered", traceFields(msg.Context(), fields))
	return nil
}

// publish publishes letter within ctx's deadline.
func (d *DeadLetter) publish(ctx context.Context, topic string, letter *message.Message) error {
	done := make(chan error, 1) // buffered: the goroutine never blocks, even after a timeout
	go func() { done <- d.cfg.Publisher.Publish(topic, letter) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// publishTooLarge publishes a letter the broker refused as too large:
// shrunk first (no stack, short error), then, if that is still too large,
// with its payload and metadata in the claim check. It returns the letter
// that was published.
func (d *DeadLetter) publishTooLarge(ctx context.Context, topic string, letter *message.Message, tooLarge error) (*message.Message, error) {
	shrunk := poison.ShrinkEnvelope(letter)
	err := d.publish(ctx, topic, shrunk)
	if !errors.Is(err, antidote.ErrMessageTooLarge) {
		return shrunk, err
	}
	if d.cfg.ClaimCheck == nil {
		return nil, fmt.Errorf("%w; even with its envelope shrunk the letter does not fit, and DeadLetterConfig.ClaimCheck is nil: configure a claim-check store (pgstore.NewClaimCheckStore or redisstore.NewClaimCheckStore) to keep such payloads beside the DLQ", err)
	}
	key, data, claimed, err := poison.ClaimLetter(shrunk)
	if err != nil {
		return nil, err
	}
	if err := d.cfg.ClaimCheck.Put(ctx, key, data); err != nil {
		return nil, fmt.Errorf("store the letter's payload in the claim check (the letter is too large for the DLQ: %v): %w", tooLarge, err)
	}
	return claimed, d.publish(ctx, topic, claimed)
}
