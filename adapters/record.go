package adapters

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote"
)

// Where a message's broker record is (antidote.RecordFromCtx), for the
// hospital, which tells letters apart by it.

func init() {
	antidote.RegisterRecordTimeReader(func(ctx context.Context) (time.Time, bool) {
		return kafka.MessageTimestampFromCtx(ctx)
	})
}

// postgresRecordKey carries a row's offset and created_at from the schema's
// decoding, which sees the row, to the subscriber's forwarding, which may set
// the message's context (watermill-sql sets it after decoding). A NUL byte
// starts it, so no JSON metadata a producer wrote can hold it after the
// decoder overwrote it, and the forwarding always takes it out.
const postgresRecordKey = "\x00antidote.postgres_record"

func stashPostgresRecord(msg *message.Message, offset int64, created time.Time) {
	msg.Metadata.Set(postgresRecordKey, strconv.FormatInt(offset, 10)+" "+created.UTC().Format(time.RFC3339Nano))
}

// takePostgresRecord returns what moves the stashed row out of each
// message's metadata into its context, for one subscription. watermill-sql
// hands out one row at a time and resends a nacked one as a copy with a
// fresh context and without the stash (taken out the first time): a message
// without a stash and with the last one's UUID is that resend.
func takePostgresRecord() func(*message.Message) {
	var last antidote.Record
	var lastUUID string
	return func(msg *message.Message) {
		v, ok := msg.Metadata[postgresRecordKey]
		if !ok {
			if lastUUID != "" && msg.UUID == lastUUID {
				msg.SetContext(antidote.WithRecord(msg.Context(), last))
			}
			return
		}
		delete(msg.Metadata, postgresRecordKey)
		offset, at, _ := strings.Cut(v, " ")
		last = antidote.Record{Place: offset}
		last.Time, _ = time.Parse(time.RFC3339Nano, at)
		lastUUID = msg.UUID
		msg.SetContext(antidote.WithRecord(msg.Context(), last))
	}
}
