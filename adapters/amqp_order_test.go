package adapters_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/router"
)

func queueKind(quorum bool) string {
	if quorum {
		return "quorum"
	}
	return "classic"
}

// declaresAs reports whether queue name exists with exactly args, by
// declaring it so on a channel of its own: RabbitMQ answers 406 (and
// closes the channel) when the arguments differ.
func (r *rabbit) declaresAs(name string, args amqp.Table) bool {
	r.t.Helper()
	ch, err := r.conn.Channel()
	if err != nil {
		r.t.Fatal(err)
	}
	defer ch.Close()
	_, err = ch.QueueDeclare(name, true, false, false, false, args)
	var ae *amqp.Error
	if errors.As(err, &ae) && ae.Code == amqp.PreconditionFailed {
		return false
	}
	if err != nil {
		r.t.Fatalf("declare %q: %v", name, err)
	}
	return true
}

// ready is the number of messages ready in queue name.
func (r *rabbit) ready(name string) int {
	r.t.Helper()
	ch, err := r.conn.Channel()
	if err != nil {
		r.t.Fatal(err)
	}
	defer ch.Close()
	q, err := ch.QueueDeclarePassive(name, true, false, false, false, nil)
	if err != nil {
		r.t.Fatalf("inspect queue %q: %v", name, err)
	}
	return q.Messages
}

func sacArgs(quorum bool) amqp.Table {
	args := amqp.Table{"x-single-active-consumer": true}
	if quorum {
		args["x-queue-type"] = "quorum"
		args["x-delivery-limit"] = int64(math.MaxInt32)
	}
	return args
}

func plainArgs(quorum bool) amqp.Table {
	if quorum {
		return amqp.Table{"x-queue-type": "quorum"}
	}
	return nil
}

// A queue declared beforehand with other arguments (by a raw amqp091
// client, an older deployment, another service) cannot be declared with
// x-single-active-consumer, nor without it when it has it: RabbitMQ answers
// 406 PRECONDITION_FAILED and closes the channel. Subscribe,
// SubscribeInitialize, Publish and the router's Run each fail at once with
// ErrQueueArguments naming the queue, the argument and both ways out; the
// queue is left as it was, nothing is published, and the broker's
// connections go on working (another topic round-trips a message).
func TestAMQPQueueArgumentsMismatchIsAClearError(t *testing.T) {
	cases := []struct {
		name        string
		raw         amqp.Table // as the queue was declared before
		sac, quorum bool       // as the service declares it
		want        []string
	}{
		{"classic without, service with", nil, true, false,
			[]string{"x-single-active-consumer", "declares it with x-single-active-consumer true", "amqp.single_active_consumer: false", "delete the queue"}},
		{"quorum without, service with", amqp.Table{"x-queue-type": "quorum"}, true, true,
			[]string{"x-single-active-consumer", "amqp.single_active_consumer: false", "delete the queue"}},
		{"classic with, service without", amqp.Table{"x-single-active-consumer": true}, false, false,
			[]string{"x-single-active-consumer", "declares it without x-single-active-consumer", "amqp.single_active_consumer: true", "delete the queue"}},
		{"quorum with, no delivery limit, service with", amqp.Table{"x-queue-type": "quorum", "x-single-active-consumer": true}, true, true,
			[]string{"x-delivery-limit", "declares it with x-delivery-limit 2147483647", "delete the queue"}},
		{"classic with, service quorum with", amqp.Table{"x-single-active-consumer": true}, true, true,
			[]string{"x-queue-type", "as a quorum queue (amqp.quorum: true)", "amqp.quorum: false", "delete the queue"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := newRabbit(t)
			topic := "antidote_test_args_" + watermill.NewShortUUID()
			r.cleanup(topic)
			if _, err := r.channel().QueueDeclare(topic, true, false, false, false, tc.raw); err != nil {
				t.Fatal(err)
			}
			b := openAMQP(t, func(c *adapters.AMQPConfig) { c.SingleActiveConsumer, c.Quorum = tc.sac, tc.quorum })
			check := func(what string, err error) {
				t.Helper()
				if !errors.Is(err, adapters.ErrQueueArguments) {
					t.Fatalf("%s: %v; want ErrQueueArguments", what, err)
				}
				var ae *amqp.Error
				if !errors.As(err, &ae) || ae.Code != amqp.PreconditionFailed {
					t.Errorf("%s: %v does not carry RabbitMQ's 406", what, err)
				}
				for _, w := range append([]string{fmt.Sprintf("queue %q", topic)}, tc.want...) {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("%s: %q does not say %q", what, err, w)
					}
				}
			}
			_, err := b.Subscriber.Subscribe(context.Background(), topic)
			check("Subscribe", err)
			t.Log(err)
			check("SubscribeInitialize", b.Subscriber.(message.SubscribeInitializer).SubscribeInitialize(topic))
			check("Publish", b.Publisher.Publish(topic, message.NewMessage("refused", []byte("x"))))

			rt, err := router.New(router.Config{DisableCrashLoopGuard: true, DeadLetter: middleware.DeadLetterConfig{Publisher: b.Publisher}})
			if err != nil {
				t.Fatal(err)
			}
			rt.AddConsumerHandler("h", topic, b.Subscriber, func(*message.Message) error { return nil })
			ran := make(chan error, 1)
			go func() { ran <- rt.Run(context.Background()) }()
			select {
			case err := <-ran:
				check("router Run", err)
			case <-time.After(60 * time.Second):
				t.Fatal("router Run did not return: it keeps trying instead of failing")
			}

			if !r.declaresAs(topic, tc.raw) {
				t.Error("the queue's arguments changed")
			}
			if n := r.ready(topic); n != 0 {
				t.Errorf("%d messages in the refused queue", n)
			}
			other := "antidote_test_args_ok_" + watermill.NewShortUUID()
			r.cleanup(other)
			ch, err := b.Subscriber.Subscribe(t.Context(), other)
			if err != nil {
				t.Fatalf("after the refusal, another topic: %v", err)
			}
			if err := b.Publisher.Publish(other, message.NewMessage("fine", []byte("x"))); err != nil {
				t.Fatalf("after the refusal, publish to another topic: %v", err)
			}
			select {
			case m := <-ch:
				m.Ack()
				if m.UUID != "fine" {
					t.Fatalf("got %s", m.UUID)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("after the refusal, another topic's message never arrived")
			}
		})
	}
}

// With single_active_consumer, the topic's queue has the argument and its
// DLQ queues do not: one named <topic>.dlq, whoever declares it (the
// subscriber, a publish), and one named otherwise that receives dead
// letters (antidote.WithLetter). The hospital's DLQ ward reads with
// basic.get, which a quorum queue with the argument refuses (405, shown on
// the topic's queue); on the DLQs it works, and LetterSubscriber reads
// them.
func TestAMQPSingleActiveConsumerLeavesDLQsOut(t *testing.T) {
	for _, quorum := range []bool{false, true} {
		t.Run(queueKind(quorum), func(t *testing.T) {
			r := newRabbit(t)
			topic := "antidote_test_sacdlq_" + watermill.NewShortUUID()
			dlq, custom := antidote.DLQTopic(topic), topic+"_letters"
			r.cleanup(topic, dlq, custom)
			b := openAMQP(t, func(c *adapters.AMQPConfig) { c.SingleActiveConsumer, c.Quorum = true, quorum })

			if _, err := b.Subscriber.Subscribe(t.Context(), topic); err != nil {
				t.Fatal(err)
			}
			if !r.declaresAs(topic, sacArgs(quorum)) || r.declaresAs(topic, plainArgs(quorum)) {
				t.Fatal("the topic's queue lacks x-single-active-consumer")
			}
			if err := b.Subscriber.(message.SubscribeInitializer).SubscribeInitialize(dlq); err != nil {
				t.Fatalf("subscriber declaring %s: %v", dlq, err)
			}
			letter := func(id string) *message.Message {
				m := message.NewMessage(id, []byte("dead"))
				m.SetContext(antidote.WithLetter(context.Background()))
				return m
			}
			if err := b.Publisher.Publish(dlq, letter("l1")); err != nil {
				t.Fatal(err)
			}
			if err := b.Publisher.Publish(custom, letter("l2")); err != nil {
				t.Fatal(err)
			}
			for _, q := range []string{dlq, custom} {
				if !r.declaresAs(q, plainArgs(quorum)) {
					t.Errorf("DLQ %s was declared with x-single-active-consumer", q)
				}
			}
			ch := r.channel()
			d, ok, err := ch.Get(dlq, false)
			if err != nil || !ok || uuidHeader(d) != "l1" {
				t.Fatalf("basic.get on the DLQ (as the hospital's ward reads): %v %v %q", ok, err, uuidHeader(d))
			}
			if err := d.Nack(false, true); err != nil {
				t.Fatal(err)
			}
			if quorum {
				probe, err := r.conn.Channel()
				if err != nil {
					t.Fatal(err)
				}
				_, _, err = probe.Get(topic, false)
				var ae *amqp.Error
				if !errors.As(err, &ae) || ae.Code != amqp.ResourceLocked {
					t.Errorf("basic.get on the quorum topic queue with the argument: %v; RabbitMQ used to refuse it (405)", err)
				}
			}
			for _, q := range []string{dlq, custom} {
				letters, err := b.LetterSubscriber().Subscribe(t.Context(), q)
				if err != nil {
					t.Fatalf("LetterSubscriber on %s: %v", q, err)
				}
				select {
				case m := <-letters:
					m.Ack()
				case <-time.After(30 * time.Second):
					t.Fatalf("no letter from %s", q)
				}
			}
		})
	}
}

// DelayedRetry returns a message to its queue's tail through a delay queue:
// with single_active_consumer, which is there for order, router.New's
// start-up check refuses it (the scheduler's CheckStages), naming the
// setting and the fix. Without stages, on a DLQ and without the setting it
// is allowed.
func TestAMQPSingleActiveConsumerRefusesDelayedRetry(t *testing.T) {
	r := newRabbit(t)
	topic := "antidote_test_sacdelay_" + watermill.NewShortUUID()
	r.cleanup(topic, antidote.DLQTopic(topic))
	b := openAMQP(t, func(c *adapters.AMQPConfig) { c.SingleActiveConsumer = true })
	stages := []time.Duration{time.Second}
	sc := b.Scheduler().(antidote.StageChecker)
	err := sc.CheckStages(topic, stages)
	for _, w := range []string{topic, "amqp.single_active_consumer", "DelayedRetry", topic + ".delay.1s", "tail"} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("CheckStages: %v; want it to mention %q", err, w)
		}
	}
	if err := sc.CheckStages(topic, nil); err != nil {
		t.Errorf("no stages: %v", err)
	}
	if err := sc.CheckStages(antidote.DLQTopic(topic), stages); err != nil {
		t.Errorf("a DLQ: %v", err)
	}
	plain := openAMQP(t, nil)
	if err := plain.Scheduler().(antidote.StageChecker).CheckStages(topic, stages); err != nil {
		t.Errorf("without single_active_consumer: %v", err)
	}

	rt, err := router.New(router.Config{DisableCrashLoopGuard: true, DeadLetter: middleware.DeadLetterConfig{Publisher: b.Publisher},
		DelayedRetry: &middleware.DelayedRetryConfig{Scheduler: b.Scheduler(), Stages: stages}})
	if err != nil {
		t.Fatal(err)
	}
	rt.AddConsumerHandler("h", topic, b.Subscriber, func(*message.Message) error { return nil })
	ran := make(chan error, 1)
	go func() { ran <- rt.Run(context.Background()) }()
	select {
	case err := <-ran:
		if err == nil || !strings.Contains(err.Error(), "amqp.single_active_consumer") {
			t.Errorf("router Run: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("router Run did not refuse DelayedRetry with single_active_consumer")
	}
	if r.exists(topic) {
		t.Error("the topic's queue was declared although the router refused to start")
	}
}

// Within one consumer order holds with any prefetch as long as nothing is
// nacked: watermill-amqp hands over one delivery at a time and takes the
// next only after the ack. A nack (a breaker hold, a DLQ that failed)
// requeues the message to the head: a classic queue puts it back at its
// position, a quorum queue with a delivery limit (which the adapter sets
// with single_active_consumer; without one RabbitMQ 3.x requeues to the
// tail: the probe behind this test saw 0 come back after 19 of 20) serves
// returned messages first. With prefetch 1, the default with
// single_active_consumer, it comes back before anything else. With
// prefetch 10 the next 9 are already delivered, so they are handled
// before it: an inversion. The nack waits until the prefetch is full (the
// queue's ready count shows it), so that the case is the same every run.
func TestAMQPSingleActiveConsumerNackOrder(t *testing.T) {
	for _, quorum := range []bool{false, true} {
		for _, prefetch := range []int{0, 10} {
			t.Run(fmt.Sprintf("%s/prefetch_%d", queueKind(quorum), prefetch), func(t *testing.T) {
				r := newRabbit(t)
				topic := "antidote_test_sacnack_" + watermill.NewShortUUID()
				r.cleanup(topic)
				b := openAMQP(t, func(c *adapters.AMQPConfig) {
					c.SingleActiveConsumer, c.Quorum, c.Prefetch = true, quorum, prefetch
				})
				const n = 30
				if err := b.Subscriber.(message.SubscribeInitializer).SubscribeInitialize(topic); err != nil {
					t.Fatal(err)
				}
				publishRaw(t, r, topic, n, func(i int) (string, string) { return fmt.Sprint(i), fmt.Sprint(i) })
				msgs, err := b.Subscriber.Subscribe(t.Context(), topic)
				if err != nil {
					t.Fatal(err)
				}
				inFlight := max(prefetch, 1)
				var acked []string
				nacked := false
				for len(acked) < n {
					var m *message.Message
					select {
					case m = <-msgs:
					case <-time.After(30 * time.Second):
						t.Fatalf("stuck after %v", acked)
					}
					if m.UUID == "0" && !nacked {
						testenv.Eventually(t, 30*time.Second, "the prefetch full", func() bool { return r.ready(topic) == n-inFlight })
						nacked = true
						m.Nack()
						continue
					}
					acked = append(acked, m.UUID)
					m.Ack()
				}
				want := make([]string, n)
				for i := range want {
					want[i] = fmt.Sprint(i)
				}
				inOrder := strings.Join(acked, ",") == strings.Join(want, ",")
				if prefetch == 0 && !inOrder {
					t.Fatalf("prefetch 1: handled %v after nacking 0; want 0..%d in order", acked, n-1)
				}
				if prefetch == 10 && (inOrder || acked[0] != "1" || slices.Index(acked, "0") < 9) {
					t.Fatalf("prefetch 10: handled %v after nacking 0; want at least 1..9 (the 9 prefetched) before 0", acked)
				}
				t.Logf("handled after the nack of 0: %v", acked[:12])
			})
		}
	}
}

// publishRaw publishes n messages to queue name with a plain amqp091
// client, persistent and confirmed, in order: message i has the UUID and
// payload that msg(i) gives.
func publishRaw(t *testing.T, r *rabbit, name string, n int, msg func(i int) (uuid, payload string)) {
	t.Helper()
	ch := r.channel()
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	var confirms []*amqp.DeferredConfirmation
	for i := range n {
		id, body := msg(i)
		dc, err := ch.PublishWithDeferredConfirmWithContext(t.Context(), "", name, true, false, amqp.Publishing{
			DeliveryMode: amqp.Persistent, Body: []byte(body),
			Headers: amqp.Table{"_watermill_message_uuid": id},
		})
		if err != nil {
			t.Fatal(err)
		}
		confirms = append(confirms, dc)
	}
	for i, dc := range confirms {
		if ok, err := dc.WaitContext(t.Context()); !ok || err != nil {
			t.Fatalf("message %d not confirmed: %v", i, err)
		}
	}
}
