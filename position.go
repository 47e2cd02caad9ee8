package antidote

import (
	"context"
	"sync/atomic"
)

type positionKey struct{}

type position struct {
	partition int32
	offset    int64
}

// WithPosition returns ctx carrying a message's partition and offset, for
// a subscriber that knows them and is not one whose reader is registered
// (RegisterPositionReader).
func WithPosition(ctx context.Context, partition int32, offset int64) context.Context {
	return context.WithValue(ctx, positionKey{}, position{partition, offset})
}

// PositionReader reads a message's partition and offset from the context
// its broker client gave it; ok is false when the context has none.
type PositionReader func(ctx context.Context) (partition int32, offset int64, ok bool)

var positionReader atomic.Pointer[PositionReader]

// RegisterPositionReader makes PositionFromCtx consult r. Package adapters
// registers watermill-kafka's when it is imported, so the policy packages
// (the envelope's origin, the crash-loop guard's offsets) know where a
// Kafka message is without importing a Kafka client, and without a
// goroutine between the subscriber and the router to copy it over.
func RegisterPositionReader(r PositionReader) { positionReader.Store(&r) }

// PositionFromCtx returns the partition and offset of the message whose
// context ctx is: WithPosition's, else the registered reader's; ok is false
// for messages of brokers without offsets.
func PositionFromCtx(ctx context.Context) (partition int32, offset int64, ok bool) {
	if p, ok := ctx.Value(positionKey{}).(position); ok {
		return p.partition, p.offset, true
	}
	if r := positionReader.Load(); r != nil {
		return (*r)(ctx)
	}
	return 0, 0, false
}
