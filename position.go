package antidote

import "context"

type positionKey struct{}

type position struct {
	partition int32
	offset    int64
}

// WithPosition returns ctx carrying a message's partition and offset. The
// Kafka adapter sets it on every message it delivers, so the policy
// packages (the envelope's origin, the crash-loop guard's key) know where a
// message is without importing a Kafka client.
func WithPosition(ctx context.Context, partition int32, offset int64) context.Context {
	return context.WithValue(ctx, positionKey{}, position{partition, offset})
}

// PositionFromCtx returns the partition and offset WithPosition set; ok is
// false for messages of brokers without offsets.
func PositionFromCtx(ctx context.Context) (partition int32, offset int64, ok bool) {
	p, ok := ctx.Value(positionKey{}).(position)
	return p.partition, p.offset, ok
}
