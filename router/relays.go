package router

import (
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/internal/clock"
	"github.com/antidote-mq/antidote/poison"
)

// AddRetryRelays registers the relay handlers cfg.DelayedRetry needs for
// topic: when its Scheduler's broker cannot hold a message back (Kafka,
// antidote.Relayer), one per stage, consuming "<topic>.retry.<delay>",
// waiting until each message is due (without blocking other partitions,
// and giving up the wait on shutdown, so the message is redelivered later)
// and forwarding it to topic. On the other brokers, or without delayed
// retries, it registers nothing. The stages are cfg's, the ones New built
// DelayedRetry from: declared once.
func AddRetryRelays(r *message.Router, cfg Config, topic string) {
	if cfg.DelayedRetry == nil {
		return
	}
	relayer, ok := cfg.DelayedRetry.Scheduler.(antidote.Relayer)
	if !ok {
		return
	}
	relays, ok := relayer.Relays()
	if !ok {
		return
	}
	for _, after := range cfg.DelayedRetry.Stages {
		src := relays.Topic(topic, after)
		r.AddConsumerHandler("antidote-relay-"+src, src, relays.Subscriber, relay(relays.Publisher, topic, after))
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
		if wait := min(time.Until(antidote.DueAt(msg)), after); wait > 0 {
			if !clock.Sleep(msg.Context(), wait) {
				return poison.Defer(msg.Context().Err())
			}
		}
		out := msg.Copy() // same UUID, payload and metadata; a fresh context
		if err := pub.Publish(topic, out); err != nil {
			if antidote.IsLimit(err) {
				// Forwarding can never succeed: to the relay's DLQ.
				return poison.Permanent(fmt.Errorf("retry relay: forward %s to %q: %w", msg.UUID, topic, err))
			}
			return poison.Defer(fmt.Errorf("retry relay: forward %s to %q: %w", msg.UUID, topic, err))
		}
		return nil
	}
}
