package adapters

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wamqp "github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/antidote-mq/antidote"
)

// amqpPublisher is the Publisher Open returns for RabbitMQ. It publishes on
// its own connection (so a publisher-side problem never drops the
// consumers, and RabbitMQ's publisher flow control never blocks their
// acks), on the default exchange with routing key = queue name, every
// message persistent, mandatory and confirmed:
//
//   - it declares a queue before its first publish to it: RabbitMQ drops a
//     message routed to a queue that does not exist, and watermill-amqp
//     declares queues only when subscribing;
//   - mandatory makes RabbitMQ return (basic.return) a message no queue
//     took, before it confirms it. A returned message is not published: the
//     queue was deleted behind the adapter's back (an operator, a policy, a
//     vhost reset). The adapter forgets the declaration, declares the queue
//     again and publishes the returned messages once more; returned again,
//     Publish fails naming the queue. A confirm never stands for a message
//     that is nowhere.
//   - a message RabbitMQ cannot take (body over max_message_bytes, headers
//     over one frame, a header name over 255 bytes) is refused before
//     anything is sent, with a *antidote.TooLargeError; the connection stays up.
//
// Publish is safe for concurrent use: each call borrows a confirm-mode
// channel of its own from a pool and pipelines its messages (up to
// amqpWindow unconfirmed at a time). A lost connection is dialled again by
// the next Publish.
type amqpPublisher struct {
	cfg     wamqp.Config
	logger  watermill.LoggerAdapter
	maxBody int

	connMu   sync.Mutex
	conn     *amqp.Connection
	frameMax atomic.Int64 // negotiated on the last dial

	idle  chan *amqpPubChannel // open channels nobody uses
	slots chan struct{}        // bounds the channels in use

	declared sync.Map // queue name -> struct{}

	gate closeGate
}

const (
	// amqpWindow is how many messages one Publish sends before waiting for
	// their confirms (and returns).
	amqpWindow = 256
	// amqpMaxChannels bounds the channels publishing at once; RabbitMQ
	// allows 2047 per connection by default.
	amqpMaxChannels  = 64
	amqpIdleChannels = 16
)

// amqpPubChannel is a confirm-mode channel with its listeners. Only the
// Publish that borrowed it reads them.
type amqpPubChannel struct {
	ch      *amqp.Channel
	returns chan amqp.Return
	closed  chan *amqp.Error
}

// why says why pc's publish failed: RabbitMQ's reason when it closed the
// channel (e.g. a body over its max_message_size), else a nack.
func (pc *amqpPubChannel) why() string {
	select {
	case e, ok := <-pc.closed:
		if ok && e != nil {
			return "RabbitMQ closed the channel: " + e.Error()
		}
		return "the channel was closed"
	default:
		return "RabbitMQ nacked it"
	}
}

// amqpQueue is a queue as the publisher declares it.
type amqpQueue struct {
	name string
	args amqp.Table
}

type amqpOutgoing struct {
	msg *message.Message
	pub amqp.Publishing
	key string // the UUID header: correlates a basic.return to its message
}

func newAMQPPublisher(cfg wamqp.Config, maxBody int, logger watermill.LoggerAdapter) (*amqpPublisher, error) {
	p := &amqpPublisher{
		cfg: cfg, logger: logger, maxBody: maxBody,
		idle:  make(chan *amqpPubChannel, amqpIdleChannels),
		slots: make(chan struct{}, amqpMaxChannels),
	}
	if _, err := p.connection(); err != nil {
		return nil, err
	}
	return p, nil
}

// connection returns the open connection, dialling a new one if the last
// was lost.
func (p *amqpPublisher) connection() (*amqp.Connection, error) {
	p.connMu.Lock()
	defer p.connMu.Unlock()
	if p.conn != nil && !p.conn.IsClosed() {
		return p.conn, nil
	}
	if p.gate.isClosed() {
		return nil, ErrPublisherClosed
	}
	c := p.cfg.Connection
	var (
		conn *amqp.Connection
		err  error
	)
	if c.AmqpConfig != nil {
		conn, err = amqp.DialConfig(c.AmqpURI, *c.AmqpConfig)
	} else {
		conn, err = amqp.Dial(c.AmqpURI)
	}
	if err != nil {
		// Never quote the password, should the client's error hold the URL.
		msg := strings.ReplaceAll(err.Error(), c.AmqpURI, Redact(c.AmqpURI))
		return nil, fmt.Errorf("%w: amqp publisher: connect to %s: %s", ErrUnreachable, Redact(c.AmqpURI), msg)
	}
	p.frameMax.Store(int64(conn.Config.FrameSize))
	if p.conn != nil {
		p.logger.Info("AMQP publisher connected again", nil)
	}
	p.conn = conn
	return conn, nil
}

// CheckName implements antidote.NameChecker: name's queue must be one RabbitMQ can
// declare.
func (p *amqpPublisher) CheckName(name string) error {
	return amqpCheckName(name, p.cfg.Queue.GenerateName)
}

// queue is topic's queue as declared for a message, or for a dead letter
// when letter is set (amqpDLQArguments).
func (p *amqpPublisher) queue(topic string, letter bool) amqpQueue {
	args := p.cfg.Queue.Arguments
	if letter || amqpIsDLQ(topic) {
		args = amqpDLQArguments(args)
	}
	return amqpQueue{name: p.cfg.Queue.GenerateName(topic), args: args}
}

// checkStages checks the delay queues of topic for stages, and refuses
// them where they would break the queue's order (amqpOrderedStages).
func (p *amqpPublisher) checkStages(topic string, stages []time.Duration) error {
	if err := amqpCheckStages(topic, stages, p.cfg.Queue.GenerateName); err != nil {
		return err
	}
	return amqpOrderedStages(topic, stages, p.queue(topic, false).args)
}

// Publish publishes msgs to topic's queue; it returns nil only once
// RabbitMQ has confirmed every message into the queue.
func (p *amqpPublisher) Publish(topic string, msgs ...*message.Message) error {
	if err := checkTopic(p.CheckName, topic); err != nil {
		return err
	}
	if len(msgs) == 0 {
		return nil
	}
	return p.publish(msgs[0].Context(), topic, p.queue(topic, antidote.IsLetter(msgs[0].Context())), nil, msgs)
}

// publish sends msgs to q after declaring it (and before it each queue of
// also, such as the queue a delay queue expires into); topic is for errors.
func (p *amqpPublisher) publish(ctx context.Context, topic string, q amqpQueue, also []amqpQueue, msgs []*message.Message) error {
	if err := p.gate.enter(); err != nil {
		return err
	}
	defer p.gate.leave()

	items, err := p.marshal(topic, msgs)
	if err != nil {
		return err
	}
	pc, err := p.acquire(ctx)
	if err != nil {
		return err
	}
	healthy := false
	defer func() { p.release(pc, healthy) }()

	queues := append(append([]amqpQueue(nil), also...), q)
	for _, d := range queues {
		if err := p.declare(pc, d, false); err != nil {
			return err
		}
	}
	returned, err := p.send(pc, q.name, items)
	if err != nil {
		return err
	}
	if len(returned) > 0 {
		// No queue took them: q is gone although declared. Declare it again
		// (a queue in also may be gone too: the target of a delay queue)
		// and try once more.
		p.logger.Info("AMQP queue vanished after it was declared; declaring it again", watermill.LogFields{"queue": q.name, "returned": len(returned)})
		for _, d := range queues {
			if err := p.declare(pc, d, true); err != nil {
				return fmt.Errorf("amqp: %d message(s) to queue %q were returned as unroutable (the queue was deleted) and declaring it again failed: %w", len(returned), q.name, err)
			}
		}
		again, err := p.send(pc, q.name, returned)
		if err != nil {
			return err
		}
		if len(again) > 0 {
			healthy = true
			return fmt.Errorf("amqp: %d message(s) to queue %q (first %s) were returned as unroutable twice, after the queue was declared again; nothing was published for them", len(again), q.name, again[0].msg.UUID)
		}
	}
	healthy = true
	return nil
}

// CheckMessage implements antidote.MessageChecker.
func (p *amqpPublisher) CheckMessage(topic string, msg *message.Message) error {
	if err := checkTopic(p.CheckName, topic); err != nil {
		return err
	}
	_, err := p.marshal(topic, []*message.Message{msg})
	return err
}

// marshal turns msgs into publishings and refuses, before anything is
// sent, what RabbitMQ would not take.
func (p *amqpPublisher) marshal(topic string, msgs []*message.Message) ([]amqpOutgoing, error) {
	frameMax := int(p.frameMax.Load())
	items := make([]amqpOutgoing, len(msgs))
	for i, m := range msgs {
		pub, err := p.cfg.Marshaler.Marshal(m)
		if err != nil {
			return nil, fmt.Errorf("amqp: marshal message %s: %w", m.UUID, err)
		}
		if err := amqpCheckPublishing(topic, m, pub, p.maxBody, frameMax, antidote.IsLetter(m.Context())); err != nil {
			return nil, err
		}
		key, _ := pub.Headers[wamqp.DefaultMessageUUIDHeaderKey].(string)
		items[i] = amqpOutgoing{msg: m, pub: pub, key: key}
	}
	return items, nil
}

func (p *amqpPublisher) acquire(ctx context.Context) (*amqpPubChannel, error) {
	select {
	case p.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("amqp publisher: waiting for a channel: %w", ctx.Err())
	}
	for {
		select {
		case pc := <-p.idle:
			if !pc.ch.IsClosed() {
				return pc, nil
			}
			continue
		default:
		}
		break
	}
	pc, err := p.open()
	if err != nil {
		<-p.slots
		return nil, err
	}
	return pc, nil
}

func (p *amqpPublisher) open() (*amqpPubChannel, error) {
	conn, err := p.connection()
	if err != nil {
		return nil, err
	}
	ch, err := conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("amqp publisher: open channel: %w", err)
	}
	if err := ch.Confirm(false); err != nil {
		_ = ch.Close()
		return nil, fmt.Errorf("amqp publisher: confirm mode: %w", err)
	}
	// Room for every return of a window: amqp091-go drops a notification
	// its listener does not take within 5s.
	returns := ch.NotifyReturn(make(chan amqp.Return, amqpWindow))
	closed := ch.NotifyClose(make(chan *amqp.Error, 1))
	return &amqpPubChannel{ch: ch, returns: returns, closed: closed}, nil
}

// release gives pc back to the pool, or closes it when a publish on it was
// abandoned midway (returns or confirms may still be on their way).
func (p *amqpPublisher) release(pc *amqpPubChannel, healthy bool) {
	defer func() { <-p.slots }()
	if healthy && !pc.ch.IsClosed() {
		select {
		case p.idle <- pc:
			return
		default:
		}
	}
	_ = pc.ch.Close()
}

// declare declares q unless it was declared before (or again is set).
func (p *amqpPublisher) declare(pc *amqpPubChannel, q amqpQueue, again bool) error {
	if again {
		p.declared.Delete(q.name)
	} else if _, ok := p.declared.Load(q.name); ok {
		return nil
	}
	c := p.cfg.Queue
	if _, err := pc.ch.QueueDeclare(q.name, c.Durable, c.AutoDelete, c.Exclusive, false, q.args); err != nil {
		return amqpDeclareError(q.name, q.args, err)
	}
	p.declared.Store(q.name, struct{}{})
	return nil
}

// send publishes items to queue on pc and waits for their confirms; it
// returns the items RabbitMQ returned as unroutable.
func (p *amqpPublisher) send(pc *amqpPubChannel, queue string, items []amqpOutgoing) ([]amqpOutgoing, error) {
	var returned []amqpOutgoing
	for start := 0; start < len(items); {
		// A window holds each key once, so a return names its message.
		window := map[string]int{}
		end := start
		for end < len(items) && end-start < amqpWindow {
			if _, dup := window[items[end].key]; dup {
				break
			}
			window[items[end].key] = end
			end++
		}
		rets, err := p.sendWindow(pc, queue, items[start:end])
		if err != nil {
			return nil, err
		}
		for _, r := range rets {
			key, _ := r.Headers[wamqp.DefaultMessageUUIDHeaderKey].(string)
			i, ok := window[key]
			if !ok {
				return nil, fmt.Errorf("amqp: RabbitMQ returned a message to queue %q that this publish cannot match (%d %s); not all messages were published", queue, r.ReplyCode, r.ReplyText)
			}
			returned = append(returned, items[i])
		}
		start = end
	}
	return returned, nil
}

func (p *amqpPublisher) sendWindow(pc *amqpPubChannel, queue string, items []amqpOutgoing) ([]amqp.Return, error) {
	confirms := make([]*amqp.DeferredConfirmation, len(items))
	for i, it := range items {
		dc, err := pc.ch.PublishWithDeferredConfirmWithContext(it.msg.Context(), "", queue, true, false, it.pub)
		if err != nil {
			return nil, fmt.Errorf("amqp: publish %s to queue %q: %w", it.msg.UUID, queue, err)
		}
		confirms[i] = dc
	}
	var rets []amqp.Return
	// amqp091-go closes the listener when the channel closes, after
	// handing it every return it read: nil stops reading then.
	returns := pc.returns
	for i, dc := range confirms {
		ctx := items[i].msg.Context()
	wait:
		for {
			select {
			case <-dc.Done():
				break wait
			case r, ok := <-returns:
				if !ok {
					returns = nil
					continue
				}
				rets = append(rets, r)
			case <-ctx.Done():
				return nil, fmt.Errorf("amqp: confirm of %s for queue %q: %w", items[i].msg.UUID, queue, ctx.Err())
			}
		}
		if !dc.Acked() {
			return nil, fmt.Errorf("amqp: message %s for queue %q was not confirmed: %s", items[i].msg.UUID, queue, pc.why())
		}
	}
	// RabbitMQ sends a message's basic.return before its basic.ack, and
	// amqp091-go hands it to the listener before it reads the ack: every
	// return of this window is in the buffer now.
	for {
		select {
		case r, ok := <-returns:
			if !ok {
				return rets, nil
			}
			rets = append(rets, r)
		default:
			return rets, nil
		}
	}
}

// Close waits for running publishes and closes the connection.
func (p *amqpPublisher) Close() error {
	if !p.gate.close() {
		return nil
	}
	for {
		select {
		case pc := <-p.idle:
			_ = pc.ch.Close()
			continue
		default:
		}
		break
	}
	p.connMu.Lock()
	defer p.connMu.Unlock()
	if p.conn != nil && !p.conn.IsClosed() {
		return p.conn.Close()
	}
	return nil
}
