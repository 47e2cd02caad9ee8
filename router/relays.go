package router

import (
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/internal/clock"
	"github.com/antidote-mq/antidote/poison"
)

// AddRetryRelays registers, on Kafka, one relay handler per delayed-retry
// stage of topic: it consumes "<topic>.retry.<delay>", waits until each
// message is due (without blocking other partitions, and giving up the wait
// on shutdown, so the message is redelivered later) and forwards it to
// topic. On the other brokers the broker itself does the waiting and this
// registers nothing. Call it with the same stages as Config.DelayedRetry.
func AddRetryRelays(r *message.Router, b *adapters.Broker, topic string, stages []time.Duration) {
	if b.Kind != adapters.KindKafka {
		return
	}
	for _, after := range stages {
		src := adapters.KafkaRetryTopic(topic, after)
		r.AddConsumerHandler("antidote-relay-"+src, src, b.Subscriber, relay(b.Publisher, topic, after))
	}
}

// relay forwards each message of one retry topic to topic once it is due.
// It trusts nothing in the message to decide where or how long: a record
// on a retry topic may come from anyone, and a far-future or malformed due
// time must not hold the partition, nor a forged target send it elsewhere.
// So the wait is at most the stage's delay, and the target is the topic
// the relay was registered for.
func relay(pub message.Publisher, topic string, after time.Duration) message.NoPublishHandlerFunc {
	return func(msg *message.Message) error {
		if wait := min(time.Until(adapters.DueAt(msg)), after); wait > 0 {
			if !clock.Sleep(msg.Context(), wait) {
				return poison.Defer(msg.Context().Err())
			}
		}
		out := msg.Copy() // same UUID, payload and metadata; a fresh context
		if err := pub.Publish(topic, out); err != nil {
			if adapters.IsLimit(err) {
				// Forwarding can never succeed: to the relay's DLQ.
				return poison.Permanent(fmt.Errorf("retry relay: forward %s to %q: %w", msg.UUID, topic, err))
			}
			return poison.Defer(fmt.Errorf("retry relay: forward %s to %q: %w", msg.UUID, topic, err))
		}
		return nil
	}
}
