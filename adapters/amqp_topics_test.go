package adapters_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/adapters"
)

// topicOfLen returns a unique topic of n bytes.
func topicOfLen(n int) string {
	base := "antidote_test_name_" + watermill.NewShortUUID() + "_"
	return base + strings.Repeat("x", n-len(base))
}

func invalidTopic(t *testing.T, err error, what string) {
	t.Helper()
	if !errors.Is(err, antidote.ErrInvalidTopic) {
		t.Fatalf("%s: want antidote.ErrInvalidTopic, got %v", what, err)
	}
	var te *antidote.TopicError
	if !errors.As(err, &te) || te.Broker != string(adapters.KindAMQP) {
		t.Fatalf("%s: want *antidote.TopicError, got %T", what, err)
	}
}

// A queue name is an AMQP shortstr (255 bytes) and the topic's DLQ queue
// "<topic>.dlq" must exist too, so a topic may have 255-4 bytes: such a
// topic works end to end, dead letters included; one byte more is refused
// by Subscribe and Publish before RabbitMQ is asked.
func TestAMQPTopicAtTheNameLimit(t *testing.T) {
	r := newRabbit(t)
	b := openAMQP(t, nil)
	const limit = 255 - len(antidote.DeadLetterSuffix)

	topic := topicOfLen(limit)
	dlq := topic + antidote.DeadLetterSuffix
	r.cleanup(topic, dlq)
	if len(dlq) != 255 {
		t.Fatalf("DLQ name of %d bytes", len(dlq))
	}
	if err := b.CheckTopic(topic); err != nil {
		t.Fatalf("CheckTopic(%d bytes): %v", len(topic), err)
	}
	rcv := receiveAMQP(t, b, topic)
	if !r.exists(topic) {
		t.Fatal("Subscribe did not declare the queue")
	}
	m := message.NewMessage(watermill.NewUUID(), []byte("x"))
	if err := b.Publisher.Publish(topic, m); err != nil {
		t.Fatalf("Publish to a %d-byte topic: %v", len(topic), err)
	}
	rcv.expectIntact(m)
	// Its letters go to a 255-byte DLQ queue, which is itself a topic.
	if err := b.Publisher.Publish(dlq, message.NewMessage(watermill.NewUUID(), []byte("x"))); err != nil {
		t.Fatalf("Publish to the 255-byte DLQ: %v", err)
	}
	if got := r.collect(dlq, 1, 10*time.Second); len(got) != 1 {
		t.Fatalf("%d letters in the DLQ", len(got))
	}

	over := topicOfLen(limit + 1)
	r.cleanup(over, over+antidote.DeadLetterSuffix)
	_, err := b.Subscriber.Subscribe(context.Background(), over)
	invalidTopic(t, err, "Subscribe one byte over")
	if !strings.Contains(err.Error(), "255") {
		t.Fatalf("error does not name the limit: %v", err)
	}
	err = b.Publisher.Publish(over, message.NewMessage(watermill.NewUUID(), []byte("x")))
	invalidTopic(t, err, "Publish one byte over")
	if !strings.Contains(err.Error(), "255") || !strings.Contains(err.Error(), ".dlq") {
		t.Fatalf("error does not name the limit and the DLQ queue: %v", err)
	}
	invalidTopic(t, b.CheckTopic(over), "CheckTopic one byte over")
	if r.exists(over) {
		t.Fatal("a refused topic's queue was declared")
	}
	// A name over 255 bytes itself.
	long := topicOfLen(256)
	invalidTopic(t, b.Publisher.Publish(long, message.NewMessage(watermill.NewUUID(), []byte("x"))), "Publish 256 bytes")
	if sub, ok := b.Subscriber.(message.SubscribeInitializer); !ok {
		t.Fatal("the subscriber lost SubscribeInitialize")
	} else {
		invalidTopic(t, sub.SubscribeInitialize(long), "SubscribeInitialize 256 bytes")
	}
}

func TestAMQPReservedAndEmptyTopics(t *testing.T) {
	b := openAMQP(t, nil)
	for _, topic := range []string{"", "amq.orders", "amq."} {
		invalidTopic(t, b.Publisher.Publish(topic, message.NewMessage(watermill.NewUUID(), []byte("x"))), "Publish "+topic)
		_, err := b.Subscriber.Subscribe(context.Background(), topic)
		invalidTopic(t, err, "Subscribe "+topic)
	}
	// "amq" without the dot, or amq. inside the name, are ordinary names.
	if err := b.CheckTopic("amqp_orders.amq.x"); err != nil {
		t.Fatal(err)
	}
}

// Delay queues are "<queue>.delay.<delay>": CheckStages refuses stages
// whose names do not fit, and Schedule refuses them too.
func TestAMQPDelayQueueNames(t *testing.T) {
	b := openAMQP(t, nil)
	s := b.Scheduler()
	sc, ok := s.(antidote.StageChecker)
	if !ok {
		t.Fatal("the AMQP scheduler is not a StageChecker")
	}
	stages := []time.Duration{time.Second, 30 * time.Second, 10 * time.Minute}
	// ".delay.10m0s" is 12 bytes.
	fits := topicOfLen(255 - len(".delay.10m0s"))
	if err := sc.CheckStages(fits, stages); err != nil {
		t.Fatalf("CheckStages(%d bytes): %v", len(fits), err)
	}
	tooLong := topicOfLen(255 - len(".delay.10m0s") + 1)
	err := sc.CheckStages(tooLong, stages)
	invalidTopic(t, err, "CheckStages one byte over")
	if !strings.Contains(err.Error(), ".delay.10m0s") || !strings.Contains(err.Error(), "255") {
		t.Fatalf("error does not name the delay queue and the limit: %v", err)
	}
	if err := sc.CheckStages(tooLong, stages[:2]); err != nil {
		t.Fatalf("shorter stages fit: %v", err)
	}
	invalidTopic(t, s.Schedule(context.Background(), tooLong, message.NewMessage(watermill.NewUUID(), []byte("x")), 10*time.Minute), "Schedule")
}

// A queue RabbitMQ refuses to declare for the publisher (here: it exists as
// a quorum queue, the adapter declares classic ones) closes the channel:
// Publish fails naming the queue, and the next publishes, to it or to any
// other queue, get a fresh channel instead of a dead one.
func TestAMQPChannelLossOnDeclare(t *testing.T) {
	r := newRabbit(t)
	b := openAMQP(t, nil)
	conflict := "antidote_test_conflict_" + watermill.NewShortUUID()
	ok := "antidote_test_conflict_ok_" + watermill.NewShortUUID()
	r.cleanup(conflict, ok)
	if _, err := r.channel().QueueDeclare(conflict, true, false, false, false, map[string]any{"x-queue-type": "quorum"}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		err := b.Publisher.Publish(conflict, message.NewMessage(watermill.NewUUID(), []byte("x")))
		if err == nil || !strings.Contains(err.Error(), conflict) {
			t.Fatalf("publish %d to a queue RabbitMQ refuses to declare: %v", i, err)
		}
		if err := b.Publisher.Publish(ok, message.NewMessage(watermill.NewUUID(), []byte("x"))); err != nil {
			t.Fatalf("publish %d to another queue after the channel was closed: %v", i, err)
		}
	}
	if got := r.collect(ok, 3, 10*time.Second); len(got) != 3 {
		t.Fatalf("%d of 3 messages arrived", len(got))
	}
}
