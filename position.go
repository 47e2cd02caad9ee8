package antidote

import (
	"context"
	"strconv"
	"sync/atomic"
	"time"
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

// Record names the broker record a message was read from, as far as its
// broker says: the hospital tells letters apart by it (with their content),
// since a position alone is reused when a topic or table is made again.
type Record struct {
	// Place is where the record sits in its topic: "partition/offset" on
	// Kafka, the row's offset in a PostgreSQL queue table. Unique within
	// one life of the topic.
	Place string
	// Time is the broker's time of the record (Kafka's record timestamp,
	// the row's created_at), or zero when it gives none.
	Time time.Time
}

type recordKey struct{}

// WithRecord returns ctx carrying the record a message was read from, for
// a subscriber that knows it.
func WithRecord(ctx context.Context, r Record) context.Context {
	return context.WithValue(ctx, recordKey{}, r)
}

// RecordTimeReader reads the broker's time of a message's record from the
// context its broker client gave it.
type RecordTimeReader func(ctx context.Context) (time.Time, bool)

var recordTimeReader atomic.Pointer[RecordTimeReader]

// RegisterRecordTimeReader makes RecordFromCtx consult r for the time of a
// record whose position PositionFromCtx knows (package adapters registers
// watermill-kafka's).
func RegisterRecordTimeReader(r RecordTimeReader) { recordTimeReader.Store(&r) }

// RecordFromCtx returns the record of the message whose context ctx is:
// WithRecord's, else its position (PositionFromCtx) with the registered
// reader's time; ok is false when its subscriber says nothing (RabbitMQ,
// which has no positions).
func RecordFromCtx(ctx context.Context) (Record, bool) {
	if r, ok := ctx.Value(recordKey{}).(Record); ok {
		return r, true
	}
	partition, offset, ok := PositionFromCtx(ctx)
	if !ok {
		return Record{}, false
	}
	r := Record{Place: strconv.FormatInt(int64(partition), 10) + "/" + strconv.FormatInt(offset, 10)}
	if tr := recordTimeReader.Load(); tr != nil {
		r.Time, _ = (*tr)(ctx)
	}
	return r, true
}
