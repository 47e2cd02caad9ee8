package antidote

import (
	"context"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

// Scheduler publishes a message so that the consumers of a topic get it no
// earlier than a delay from now, each broker by its natural means (see
// adapters.Broker.Scheduler). It is how non-blocking retries
// (middleware.DelayedRetry) move a failing message out of the way: the
// original is acked and the queue keeps flowing; order per key is given up
// for that message.
type Scheduler interface {
	Schedule(ctx context.Context, topic string, msg *message.Message, after time.Duration) error
}

// Metadata keys of a scheduled message.
const (
	// MetadataRetryDue is when a scheduled message is due (RFC 3339, UTC).
	MetadataRetryDue = "antidote.retry_due"
	// MetadataRetryTopic is the topic a Kafka retry-topic relay forwards to.
	MetadataRetryTopic = "antidote.retry_topic"
	// MetadataRetryStage is which delayed-retry stage a message is in (1
	// for the first); set by middleware.DelayedRetry.
	MetadataRetryStage = "antidote.retry_stage"
)

// DueAt is when a scheduled message is due (MetadataRetryDue); the zero
// time when it is absent or malformed, so a foreign record is due now.
func DueAt(msg *message.Message) time.Time {
	t, err := time.Parse(time.RFC3339Nano, msg.Metadata.Get(MetadataRetryDue))
	if err != nil {
		return time.Time{}
	}
	return t
}

// Relays says how a Scheduler's delayed messages come back when its broker
// cannot hold a message back by itself (Kafka): each delay is a topic of
// its own, which a relay consumes with Subscriber, forwarding each message
// to its topic with Publisher once due.
type Relays struct {
	// Subscriber consumes the retry topics.
	Subscriber message.Subscriber
	// Publisher forwards a due message to its topic.
	Publisher message.Publisher
	// Topic names the retry topic of topic for one delay.
	Topic func(topic string, after time.Duration) string
}

// Relayer is implemented by Schedulers whose delayed messages need relays
// (router.AddRetryRelays registers them); ok is false when the broker
// delays messages itself. Wrappers (telemetry.NewScheduler) forward it.
type Relayer interface {
	Relays() (r Relays, ok bool)
}
