package adapters_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/internal/testenv"
)

// rabbit is a plain amqp091-go connection of a test: an operator's hands
// (deleting queues, reading them) and a foreign producer. Make it before
// the broker under test: the queues named by cleanup are deleted after the
// broker is closed, so no subscriber declares them again.
type rabbit struct {
	t      *testing.T
	conn   *amqp.Connection
	queues []string
}

func newRabbit(t *testing.T) *rabbit {
	t.Helper()
	conn, err := amqp.Dial(testenv.AMQPURL(t))
	if err != nil {
		t.Fatal(err)
	}
	r := &rabbit{t: t, conn: conn}
	t.Cleanup(func() {
		for _, n := range r.queues {
			if ch, err := conn.Channel(); err == nil {
				_, _ = ch.QueueDelete(n, false, false, false)
				_ = ch.Close()
			}
		}
		_ = conn.Close()
	})
	return r
}

// channel opens a channel closed at the end of the test.
func (r *rabbit) channel() *amqp.Channel {
	r.t.Helper()
	ch, err := r.conn.Channel()
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { _ = ch.Close() })
	return ch
}

// deleteQueue deletes name as an operator would, whatever it holds.
func (r *rabbit) deleteQueue(name string) {
	r.t.Helper()
	if _, err := r.channel().QueueDelete(name, false, false, false); err != nil {
		r.t.Fatalf("delete queue %q: %v", name, err)
	}
}

// cleanup deletes the queues at the end of the test (they may not exist).
func (r *rabbit) cleanup(names ...string) { r.queues = append(r.queues, names...) }

// exists reports whether queue name exists.
func (r *rabbit) exists(name string) bool {
	r.t.Helper()
	ch, err := r.conn.Channel()
	if err != nil {
		r.t.Fatal(err)
	}
	defer ch.Close()
	_, err = ch.QueueDeclarePassive(name, true, false, false, false, nil)
	var ae *amqp.Error
	if errors.As(err, &ae) && ae.Code == amqp.NotFound {
		return false
	}
	if err != nil {
		r.t.Fatalf("inspect queue %q: %v", name, err)
	}
	return true
}

// drain takes (and acks) every message queue name holds now; none when the
// queue does not exist.
func (r *rabbit) drain(name string) []amqp.Delivery {
	r.t.Helper()
	if !r.exists(name) {
		return nil
	}
	ch := r.channel()
	var out []amqp.Delivery
	for {
		d, ok, err := ch.Get(name, true)
		if err != nil {
			r.t.Fatalf("get from %q: %v", name, err)
		}
		if !ok {
			return out
		}
		out = append(out, d)
	}
}

// collect drains queue name until want messages arrived or limit passed.
func (r *rabbit) collect(name string, want int, limit time.Duration) []amqp.Delivery {
	r.t.Helper()
	deadline := time.Now().Add(limit)
	var got []amqp.Delivery
	for {
		got = append(got, r.drain(name)...)
		if len(got) >= want || time.Now().After(deadline) {
			return got
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func openAMQP(t *testing.T, mod func(*adapters.AMQPConfig)) *adapters.Broker {
	t.Helper()
	cfg := adapters.Config{Broker: adapters.KindAMQP, AMQP: adapters.AMQPConfig{URL: testenv.AMQPURL(t)}}
	if mod != nil {
		mod(&cfg.AMQP)
	}
	b, err := adapters.Open(context.Background(), cfg, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

func uuidHeader(d amqp.Delivery) string {
	s, _ := d.Headers["_watermill_message_uuid"].(string)
	return s
}
