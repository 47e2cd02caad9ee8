package dlq

import (
	"context"
	"errors"
	"fmt"
	"time"

	wamqp "github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/hospital"
	"github.com/antidote-mq/antidote/poison"
)

// amqpWard is a RabbitMQ DLQ queue. RabbitMQ gives a message to one
// consumer at a time, so the ward reads the letters present when it first
// lists (basic.get) and holds them, unacked, until it is closed: no other
// treatment can take them meanwhile. A replayed or purged letter is acked;
// the rest go back to the queue (with RabbitMQ's redelivered flag set). If
// the channel closes meanwhile (RabbitMQ's consumer_timeout, the broker
// gone), every held letter goes back to the queue and the treatment stops.
type amqpWard struct {
	walk
	conn   *amqp.Connection
	ch     *amqp.Channel
	held   map[int64]amqp.Delivery
	closed chan *amqp.Error
}

func newAMQPWard(h *Hospital, dlqTopic string) (*amqpWard, error) {
	c := adapters.AMQPConfigFor(h.cfg.Adapters)
	// The adapters' dial: the server's frame size, and the guard that makes
	// a header the client would refuse an undecodable letter instead of a
	// dropped connection.
	conn, err := amqp.DialConfig(c.Connection.AmqpURI, *c.Connection.AmqpConfig)
	if err != nil {
		return nil, fmt.Errorf("%w: amqp at %s: %v", adapters.ErrUnreachable, adapters.Redact(h.cfg.Adapters.AMQP.URL), errors.Unwrap(err))
	}
	w := &amqpWard{walk: walk{h: h, dlqTopic: dlqTopic}, conn: conn, held: map[int64]amqp.Delivery{}}
	w.fetch = w.load
	return w, nil
}

func (w *amqpWard) close() error {
	w.release()
	return w.conn.Close()
}

// release gives the letters not treated back to the queue.
func (w *amqpWard) release() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.giveBack()
}

func (w *amqpWard) giveBack() {
	for _, d := range w.held {
		_ = d.Nack(false, true)
	}
	w.held = map[int64]amqp.Delivery{}
	if w.ch != nil {
		_ = w.ch.Close()
		w.ch = nil
	}
}

// refresh gives back what it holds and reads again at the next use.
func (w *amqpWard) refresh() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.giveBack()
	w.forget()
}

func (w *amqpWard) load(ctx context.Context) ([]hospital.Letter, error) {
	// A passive declare of a missing queue closes its channel: a channel
	// of its own.
	probe, err := w.conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("dlq: amqp channel: %w", err)
	}
	q, err := probe.QueueDeclarePassive(w.dlqTopic, true, false, false, false, nil)
	if err != nil {
		var aerr *amqp.Error
		if errors.As(err, &aerr) && aerr.Code == amqp.NotFound {
			return nil, nil // no queue: nothing was ever dead-lettered
		}
		return nil, fmt.Errorf("dlq: inspect queue %q: %w", w.dlqTopic, err)
	}
	_ = probe.Close()
	if w.ch, err = w.conn.Channel(); err != nil {
		return nil, fmt.Errorf("dlq: amqp channel: %w", err)
	}
	w.closed = w.ch.NotifyClose(make(chan *amqp.Error, 1))
	unmarshal := adapters.TolerantAMQPMarshaler{Inner: wamqp.DefaultMarshaler{}, Reader: poison.LetterReader}
	var out []hospital.Letter
	// Only the letters present now: replays that fail again land behind
	// them and are not read (and replayed) a second time.
	for i := 0; i < q.Messages; i++ {
		if err := ctx.Err(); err != nil {
			return out, err
		}
		d, ok, err := w.ch.Get(w.dlqTopic, false)
		if err != nil {
			return out, fmt.Errorf("dlq: get from %q: %w", w.dlqTopic, err)
		}
		if !ok {
			break
		}
		m, _ := unmarshal.Unmarshal(d)
		m.SetContext(ctx)
		l := w.h.letter(ctx, m, w.dlqTopic)
		l.ID, l.IngestedAt = int64(len(out)+1), d.Timestamp
		if l.IngestedAt.IsZero() {
			l.IngestedAt = time.Now()
		}
		w.held[l.ID] = d
		out = append(out, l)
	}
	return out, nil
}

// Treat implements hospital.Ward.
func (w *amqpWard) Treat(ctx context.Context, id int64, to hospital.State, actor, detail string, do func(hospital.Letter) error) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	l, err := w.taken(id)
	if err != nil {
		return err
	}
	select {
	case cerr := <-w.closed:
		w.held = map[int64]amqp.Delivery{}
		return fmt.Errorf("dlq: the channel holding %s's letters closed (%v): they are back in the queue: %w", w.dlqTopic, cerr, hospital.ErrTakenOver)
	default:
	}
	d, ok := w.held[id]
	if !ok {
		return fmt.Errorf("dlq: letter %s of %s is no longer held: %w", l.UUID, w.dlqTopic, hospital.ErrTakenOver)
	}
	if do != nil {
		if err := do(*l); err != nil {
			return err
		}
	}
	if err := d.Ack(false); err != nil {
		delete(w.held, id)
		return fmt.Errorf("dlq: letter %s was %s, but its ack failed (%v): it is back in %s and may be treated again: %w", l.UUID, to, err, w.dlqTopic, hospital.ErrTakenOver)
	}
	delete(w.held, id)
	l.State = to
	w.logTreated(*l, to, actor, detail)
	return nil
}

// publisher is the broker's: a replay is confirmed before its letter is
// acked.
func (w *amqpWard) publisher() message.Publisher { return w.h.broker.Publisher }
