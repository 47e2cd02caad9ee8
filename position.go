package antidote

import (
	"context"
	"sync/atomic"
)

type positionKey struct{}

type position struct {
	partition   int32
	offset      int64
	claim       uint64 // 0: unknown
	redelivered bool
}

// WithPosition returns ctx carrying a message's partition and offset, for
// a subscriber that knows them and is not one whose reader is registered
// (RegisterPositionReader).
func WithPosition(ctx context.Context, partition int32, offset int64) context.Context {
	return context.WithValue(ctx, positionKey{}, position{partition: partition, offset: offset})
}

// WithClaimPosition is WithPosition for a subscriber that may hand out
// several messages of one partition at once (adapters' kafka.concurrency),
// so their handlers may start out of offset order. claim (not 0) names the
// partition claim the message belongs to, unique in the process: between
// two claims of a partition another consumer may have had it, within one
// claim nobody else has. redelivered is true when this claim delivered the
// message before (a nack's resend). The crash-loop guard reads it
// (ClaimFromCtx) to keep its cheap path for out-of-order deliveries.
func WithClaimPosition(ctx context.Context, partition int32, offset int64, claim uint64, redelivered bool) context.Context {
	return context.WithValue(ctx, positionKey{}, position{partition: partition, offset: offset, claim: claim, redelivered: redelivered})
}

// ClaimFromCtx returns what WithClaimPosition put in ctx; ok is false when
// the message's subscriber did not set it.
func ClaimFromCtx(ctx context.Context) (claim uint64, redelivered bool, ok bool) {
	p, ok := ctx.Value(positionKey{}).(position)
	if !ok || p.claim == 0 {
		return 0, false, false
	}
	return p.claim, p.redelivered, true
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
