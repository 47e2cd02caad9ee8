package router

import (
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/adapters"
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
		r.AddConsumerHandler("antidote-relay-"+src, src, b.Subscriber, relay(b.Publisher))
	}
}

func relay(pub message.Publisher) message.NoPublishHandlerFunc {
	return func(msg *message.Message) error {
		if wait := time.Until(adapters.DueAt(msg)); wait > 0 {
			t := time.NewTimer(wait)
			defer t.Stop()
			select {
			case <-t.C:
			case <-msg.Context().Done():
				return poison.Defer(msg.Context().Err())
			}
		}
		target := msg.Metadata.Get(adapters.MetadataRetryTopic)
		if target == "" {
			return poison.Permanent(fmt.Errorf("retry relay: message %s has no %s", msg.UUID, adapters.MetadataRetryTopic))
		}
		out := msg.Copy() // same UUID, payload and metadata; a fresh context
		if err := pub.Publish(target, out); err != nil {
			return poison.Defer(fmt.Errorf("retry relay: forward %s to %q: %w", msg.UUID, target, err))
		}
		return nil
	}
}
