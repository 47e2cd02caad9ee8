package poison

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/url"
	"strconv"
	"strings"

	"github.com/ThreeDotsLabs/watermill/message"
)

// ErrDeliveryTrackerClosed is returned by a DeliveryTracker's Incr and Forget
// after Close.
var ErrDeliveryTrackerClosed = errors.New("poison: delivery tracker is closed")

// DeliveryKey identifies one delivery target, the thing whose deliveries a
// DeliveryTracker counts.
//
// For a Kafka message (OriginOf reports an offset) the key is the record's
// coordinates, "kafka/<topic>/<partition>/<offset>/<consumer group>/<handler>":
// a Kafka record keeps its topic/partition/offset across every redelivery, even
// when the producer did not set a stable message UUID. The consumer group and
// handler name are part of the key because the same record is delivered
// independently to every group (and every router handler) that subscribes to
// the topic; two handlers sharing one tracker must not add up each other's
// deliveries.
//
// Otherwise (AMQP, PostgreSQL queue, gochannel) the key is
// "uuid/<topic>/<consumer group>/<handler>/<Watermill message UUID>": those
// brokers redeliver the same message with the same UUID. (Like any
// UUID-keyed scheme this relies on producers not reusing UUIDs for
// different messages.)
//
// Every component is path-escaped, so a '/' inside a topic, handler or UUID
// cannot make two targets share a key. A UUID longer than 128 bytes (a
// foreign producer's) is replaced by "sha256:" and its hex SHA-256, so a
// key always fits a store's index (PostgreSQL's B-tree entries are limited
// to about 2.7 KB).
//
// OriginOf cannot know the consumer group (it is configuration, not message
// context), so DeliveryKey leaves it empty; DeliveryKeyOf takes an Origin
// whose ConsumerGroup the caller filled in.
func DeliveryKey(msg *message.Message) string {
	return DeliveryKeyOf(OriginOf(msg), msg.UUID)
}

// maxKeyUUIDLen bounds the UUID part of a delivery key; longer ones are
// hashed.
const maxKeyUUIDLen = 128

// DeliveryKeyOf is DeliveryKey for an Origin the caller completed (typically
// with its ConsumerGroup) and the message's UUID.
func DeliveryKeyOf(o Origin, msgUUID string) string {
	var b strings.Builder
	if o.HasOffset {
		b.Grow(len(o.Topic) + len(o.ConsumerGroup) + len(o.Handler) + 40)
		b.WriteString("kafka/")
		b.WriteString(url.PathEscape(o.Topic))
		b.WriteByte('/')
		b.WriteString(strconv.FormatInt(int64(o.Partition), 10))
		b.WriteByte('/')
		b.WriteString(strconv.FormatInt(o.Offset, 10))
		b.WriteByte('/')
		b.WriteString(url.PathEscape(o.ConsumerGroup))
		b.WriteByte('/')
		b.WriteString(url.PathEscape(o.Handler))
		return b.String()
	}
	if len(msgUUID) > maxKeyUUIDLen {
		sum := sha256.Sum256([]byte(msgUUID))
		msgUUID = "sha256:" + hex.EncodeToString(sum[:])
	}
	b.Grow(len(o.Topic) + len(o.ConsumerGroup) + len(o.Handler) + len(msgUUID) + 9)
	b.WriteString("uuid/")
	b.WriteString(url.PathEscape(o.Topic))
	b.WriteByte('/')
	b.WriteString(url.PathEscape(o.ConsumerGroup))
	b.WriteByte('/')
	b.WriteString(url.PathEscape(o.Handler))
	b.WriteByte('/')
	b.WriteString(url.PathEscape(msgUUID))
	return b.String()
}

// DeliveryTracker durably counts deliveries of messages that have not been
// settled yet. It is the memory of the crash-loop guard
// (middleware.CrashLoopGuard): when a handler kills the process (panic outside the
// router, os.Exit, OOM kill), every in-memory retry counter dies with it, so
// only a count kept outside the process can tell that the same message has
// already taken the consumer down N times.
//
// Implementations: pgstore.NewDeliveryTracker and
// redisstore.NewDeliveryTracker are durable across consumer restarts;
// NewMemoryDeliveryTracker is not (tests, demos, in-process redeliveries
// only).
//
// Every implementation expires a count TTL after its last Incr, so keys of
// messages that were never settled (the process died and the message was
// later consumed elsewhere, or skipped) do not pile up forever.
// Implementations are safe for concurrent use.
type DeliveryTracker interface {
	// Incr durably counts one more delivery of key and returns the new count
	// (1 for the first delivery, or for the first delivery after the previous
	// count expired). When Incr returns nil the increment is stored: a crash
	// right after it cannot lose it.
	Incr(ctx context.Context, key string) (int, error)
	// Forget drops the count once the message is settled (acked or
	// dead-lettered). Forgetting an unknown key is not an error.
	Forget(ctx context.Context, key string) error
	// Close releases what the tracker owns (a pool or client it created
	// itself, never one passed in the config) and waits for its background
	// work. Close is idempotent; Incr and Forget return
	// ErrDeliveryTrackerClosed afterwards.
	Close() error
}

// DeliveryDecrementer is implemented by trackers that can take one count
// back (every tracker in this package, pgstore and redisstore): the crash-loop guard takes back the
// count of a delivery whose handler returned while the message waits (for
// its next retry attempt, or while the breaker holds it), so a process that
// dies meanwhile, killed from outside or by another message, does not count
// against it.
type DeliveryDecrementer interface {
	// Decr takes one count of key back and returns the new count (never
	// below 0). An unknown key is 0, not an error.
	Decr(ctx context.Context, key string) (int, error)
}

// DeliveryPeeker is implemented by trackers that can read a count without
// changing it (every tracker in this package, pgstore and redisstore).
// With one, the crash-loop guard reads a delivery's count first and counts
// a delivery counted before (a suspect: it was in flight when a process
// died) only once it runs alone, so a process that dies while it waits,
// killed by the message running then, never counts against it; without
// one it counts first and takes the count back while it waits, which
// leaves a round trip's window.
type DeliveryPeeker interface {
	// Count returns key's count: 0 for an unknown key or one whose TTL
	// has passed.
	Count(ctx context.Context, key string) (int, error)
}
