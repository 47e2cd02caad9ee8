package poison

import (
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/internal/textcut"
)

// Metadata keys of the DLQ envelope. The set is a superset of what Spring
// Kafka's DeadLetterPublishingRecoverer and Kafka Connect record, so a letter
// says where it came from, why it died and after how many attempts.
const (
	// KeyOriginalTopic is the topic the message was consumed from.
	KeyOriginalTopic = "antidote.original_topic"
	// KeyOriginalPartition is the Kafka partition (decimal int32); Kafka only.
	KeyOriginalPartition = "antidote.original_partition"
	// KeyOriginalOffset is the Kafka offset (decimal int64); Kafka only.
	KeyOriginalOffset = "antidote.original_offset"
	// KeyHandler is the Watermill handler name that failed.
	KeyHandler = "antidote.handler"
	// KeyConsumerGroup is the consumer group, when configured.
	KeyConsumerGroup = "antidote.consumer_group"
	// KeyConsumerVersion is the version of the service that gave up on the
	// message (its build's module version or VCS revision, or configured):
	// the hospital replays canaries once a newer version runs.
	KeyConsumerVersion = "antidote.consumer_version"
	// KeyReason is one of the Reason constants.
	KeyReason = "antidote.reason"
	// KeyError is the final error text, truncated to MaxErrorBytes.
	KeyError = "antidote.error"
	// KeyErrorType is the Go type (%T) of the innermost meaningful error.
	KeyErrorType = "antidote.error_type"
	// KeyStack is the panic stack, truncated to MaxStackBytes (panics only).
	KeyStack = "antidote.stack"
	// KeyAttempts is how many times the handler ran for this delivery
	// (decimal). The Retry middleware also keeps it up to date on the live
	// message, so handlers can read their attempt number.
	KeyAttempts = "antidote.attempts"
	// KeyFirstFailedAt is when the first attempt failed (RFC 3339, UTC).
	KeyFirstFailedAt = "antidote.first_failed_at"
	// KeyLastFailedAt is when the last attempt failed (RFC 3339, UTC).
	KeyLastFailedAt = "antidote.last_failed_at"
	// KeyProducer names the publishing service when the producer stamped
	// it; the envelope keeps it so a flood can be traced to its source.
	KeyProducer = "antidote.producer"
	// KeyReplayedAt is set by DLQ replay (RFC 3339, UTC).
	KeyReplayedAt = "antidote.replayed_at"
	// KeyReplayCount is how many times the message was replayed (decimal).
	KeyReplayCount = "antidote.replay_count"
	// KeyTraceparent is the W3C trace context of the original message.
	KeyTraceparent = antidote.MetadataTraceparent
)

// Size limits for free-text envelope values. Broker headers are not meant
// for megabytes: Kafka counts them against message.max.bytes, and an
// oversized letter would fail to publish, keeping the original undeliverable.
const (
	// MaxStackBytes bounds KeyStack (8 KiB keeps the panicking frames and
	// the handler's callers, which is what a post-mortem needs).
	MaxStackBytes = 8 << 10
	// MaxErrorBytes bounds KeyError; error texts that embed whole payloads
	// are cut here.
	MaxErrorBytes = 4 << 10
)

// truncatedMarker is appended to cut values so readers know text is missing.
const truncatedMarker = "\n...[truncated]"

// KeyUndecodableMetadata is, on the letter of a record the adapter could
// not decode, the record's metadata as received (the adapter's
// antidote.MetadataRawMetadata). A letter key of its own: the decoder's keys
// are foreign wherever a record is read, the hospital's DLQ reads included.
const KeyUndecodableMetadata = "antidote.undecodable_metadata"

// Origin is where a message was consumed from.
type Origin struct {
	Topic         string
	Handler       string
	ConsumerGroup string
	// ConsumerVersion is the consuming service's version, when known.
	ConsumerVersion string
	// Partition and Offset are only meaningful when HasOffset is true
	// (Kafka); other brokers identify a message by its UUID.
	Partition int32
	Offset    int64
	HasOffset bool
}

// OriginOf reads the origin from msg.Context(): topic and handler as set by
// message.Router, partition and offset as the Kafka adapter sets them
// (antidote.WithPosition). ConsumerGroup is not in the context; callers fill it in from
// configuration. Outside a router Topic and Handler are empty.
func OriginOf(msg *message.Message) Origin {
	ctx := msg.Context()
	o := Origin{
		Topic:   message.SubscribeTopicFromCtx(ctx),
		Handler: message.HandlerNameFromCtx(ctx),
	}
	if partition, offset, ok := antidote.PositionFromCtx(ctx); ok {
		o.Partition, o.Offset, o.HasOffset = partition, offset, true
	}
	return o
}

// Failure is why a message is dead-lettered.
type Failure struct {
	// Reason defaults to ReasonOf(Err), then ReasonPanic for a *PanicError,
	// then ReasonPermanent.
	Reason Reason
	// Err is the final error; it may be nil (e.g. a crash loop has none).
	Err error
	// Attempts is how many times the handler ran; 0 leaves whatever
	// KeyAttempts the message already carries.
	Attempts int
	// Zero times are left out of the envelope.
	FirstFailedAt, LastFailedAt time.Time
}

// Envelope builds the DLQ message for msg: the same UUID, a copy of the
// payload byte for byte, all of msg's metadata (so traceparent, the producer
// and idempotency keys travel with it), plus the antidote.* keys describing
// o and f. msg is not modified. The result has a fresh context; publishers
// that honour msg.Context() need it set by the caller.
//
// Only this envelope describes the letter: letter keys (LetterKeys) msg
// already carries, which a subscriber that skipped the adapters' rule let
// through, are kept under antidote.MetadataForeignPrefix. The decoder's
// keys are not copied as they are: antidote.MetadataUndecodable is said by
// the reason and the error, antidote.MetadataRawMetadata moves to
// KeyUndecodableMetadata.
func Envelope(msg *message.Message, o Origin, f Failure) *message.Message {
	payload := make([]byte, len(msg.Payload))
	copy(payload, msg.Payload)
	out := message.NewMessage(msg.UUID, payload)
	for k, v := range msg.Metadata {
		out.Metadata.Set(k, v)
	}
	for _, k := range letterKeys {
		antidote.MoveForeign(out.Metadata, k)
	}
	if raw, ok := out.Metadata[antidote.MetadataRawMetadata]; ok {
		delete(out.Metadata, antidote.MetadataRawMetadata)
		out.Metadata.Set(KeyUndecodableMetadata, raw)
	}
	delete(out.Metadata, antidote.MetadataUndecodable)

	setIf := func(key, value string) {
		if value != "" {
			out.Metadata.Set(key, value)
		}
	}
	setIf(KeyOriginalTopic, o.Topic)
	setIf(KeyHandler, o.Handler)
	setIf(KeyConsumerGroup, o.ConsumerGroup)
	setIf(KeyConsumerVersion, o.ConsumerVersion)
	if o.HasOffset {
		out.Metadata.Set(KeyOriginalPartition, strconv.FormatInt(int64(o.Partition), 10))
		out.Metadata.Set(KeyOriginalOffset, strconv.FormatInt(o.Offset, 10))
	}

	out.Metadata.Set(KeyReason, string(reasonFor(f)))
	if f.Err != nil {
		out.Metadata.Set(KeyError, truncate(f.Err.Error(), MaxErrorBytes))
		out.Metadata.Set(KeyErrorType, ErrorType(f.Err))
		var p *PanicError
		if errors.As(f.Err, &p) && len(p.Stack) > 0 {
			out.Metadata.Set(KeyStack, truncate(string(p.Stack), MaxStackBytes))
		}
	}
	if f.Attempts > 0 {
		out.Metadata.Set(KeyAttempts, strconv.Itoa(f.Attempts))
	}
	if !f.FirstFailedAt.IsZero() {
		out.Metadata.Set(KeyFirstFailedAt, formatTime(f.FirstFailedAt))
	}
	if !f.LastFailedAt.IsZero() {
		out.Metadata.Set(KeyLastFailedAt, formatTime(f.LastFailedAt))
	}
	dropMalformed(out.Metadata)
	return out
}

// KeyMalformed lists, on a letter, the envelope keys the original message
// carried with values ReadEnvelope could not parse ("key=value; ..."): they
// are taken out of the letter, so every letter reads back, and kept here
// for the post-mortem.
const KeyMalformed = "antidote.malformed"

// dropMalformed moves the values a foreign producer (or an old replay) left
// in keys Antidote reads, and that their readers would refuse, to
// KeyMalformed: those ReadEnvelope parses (so every letter reads back), the
// scheduler's and the replay's trace link (ignored when malformed anyway).
func dropMalformed(md message.Metadata) {
	var dropped []string
	drop := func(k string) {
		dropped = append(dropped, k+"="+md[k])
		delete(md, k)
	}
	for _, k := range []string{KeyAttempts, KeyReplayCount, antidote.MetadataRetryStage} {
		if _, ok := md[k]; ok {
			if _, _, err := parseInt(md, k, strconv.IntSize); err != nil {
				drop(k)
			}
		}
	}
	for _, k := range []string{KeyReplayedAt, antidote.MetadataRetryDue} {
		if _, ok := md[k]; ok {
			if _, err := parseTime(md, k); err != nil {
				drop(k)
			}
		}
	}
	if _, ok := md[antidote.MetadataOriginalTraceparent]; ok {
		if _, valid := antidote.OriginalTraceLink(md); !valid {
			drop(antidote.MetadataOriginalTraceparent)
		}
	}
	if len(dropped) > 0 {
		md.Set(KeyMalformed, truncate(strings.Join(dropped, "; "), MaxErrorBytes))
	}
}

func reasonFor(f Failure) Reason {
	if f.Reason != "" {
		return f.Reason
	}
	if r := InferReason(f.Err); r != "" {
		return r
	}
	return ReasonPermanent
}

func formatTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// truncate cuts s to at most limit bytes on a rune boundary and appends a
// marker, so a cut value is still valid UTF-8 and visibly incomplete.
func truncate(s string, limit int) string {
	return textcut.Truncate(s, limit, truncatedMarker)
}

// ErrorType returns the Go type name (%T) of the innermost meaningful error
// in err: wrappers that add no information of their own — Permanent,
// Transient, WithReason and fmt.Errorf's %w wrappers — are looked through,
// so `fmt.Errorf("decode: %w", poison.Permanent(syntaxErr))` reports
// "*json.SyntaxError", which is what DLQ tooling groups by. Typed wrappers
// (*PanicError, *ValidationError, *net.OpError, ...) are kept, since their
// type is the information. For a multi-%w wrapper the first error is used.
// ErrorType(nil) is "".
func ErrorType(err error) string {
	for err != nil {
		var next error
		switch e := err.(type) {
		case *classified:
			next = e.err
		case *reasoned:
			next = e.err
		default:
			if !isFmtWrapper(err) {
				return fmt.Sprintf("%T", err)
			}
			switch u := err.(type) {
			case interface{ Unwrap() error }:
				next = u.Unwrap()
			case interface{ Unwrap() []error }:
				if errs := u.Unwrap(); len(errs) > 0 {
					next = errs[0]
				}
			}
			if next == nil {
				return fmt.Sprintf("%T", err)
			}
		}
		err = next
	}
	return ""
}

// isFmtWrapper reports whether err was made by fmt.Errorf with %w. Those
// types are unexported, so match them by name.
func isFmtWrapper(err error) bool {
	t := reflect.TypeOf(err)
	if t.Kind() != reflect.Pointer {
		return false
	}
	t = t.Elem()
	return t.PkgPath() == "fmt" && (t.Name() == "wrapError" || t.Name() == "wrapErrors")
}

// Letter is a parsed DLQ envelope: every antidote key, typed.
type Letter struct {
	UUID     string
	Payload  []byte
	Metadata message.Metadata // all metadata, including the keys below

	OriginalTopic     string
	OriginalPartition int32
	OriginalOffset    int64
	HasOffset         bool // partition and offset were present
	Handler           string
	ConsumerGroup     string

	Reason    Reason
	Error     string
	ErrorType string
	Stack     string
	Attempts  int // 0 when absent

	FirstFailedAt time.Time // zero when absent
	LastFailedAt  time.Time // zero when absent

	Producer    string
	Traceparent string

	ReplayedAt  time.Time // zero when never replayed
	ReplayCount int
}

// Origin returns the letter's origin.
func (l Letter) Origin() Origin {
	return Origin{
		Topic:         l.OriginalTopic,
		Handler:       l.Handler,
		ConsumerGroup: l.ConsumerGroup,
		Partition:     l.OriginalPartition,
		Offset:        l.OriginalOffset,
		HasOffset:     l.HasOffset,
	}
}

// ErrNotEnvelope is returned by ReadEnvelope for a message without
// KeyReason, i.e. one that was not written by Envelope.
var ErrNotEnvelope = errors.New("poison: message is not a DLQ envelope (no " + KeyReason + " metadata)")

// EnvelopeError reports one malformed envelope value.
type EnvelopeError struct {
	Key   string
	Value string
	Want  string // what the value should look like
	Err   error  // the parse error
}

// Error names the key, the bad value and the expected form.
func (e *EnvelopeError) Error() string {
	return fmt.Sprintf("poison: envelope metadata %s=%q is not %s: %v", e.Key, e.Value, e.Want, e.Err)
}

// Unwrap returns the parse error.
func (e *EnvelopeError) Unwrap() error { return e.Err }

// ReadEnvelope parses the envelope keys of a DLQ message. It returns
// ErrNotEnvelope when KeyReason is missing and an *EnvelopeError naming the
// key and value when a number or time is malformed (times must be RFC 3339;
// partition, offset, attempts and replay count decimal integers, none
// negative). Unknown reasons are accepted, so older tooling can read letters
// from newer versions. The returned Payload and Metadata are copies.
func ReadEnvelope(msg *message.Message) (Letter, error) {
	md := msg.Metadata
	if md.Get(KeyReason) == "" {
		return Letter{}, ErrNotEnvelope
	}
	l := Letter{
		UUID:          msg.UUID,
		Payload:       append([]byte(nil), msg.Payload...),
		Metadata:      make(message.Metadata, len(md)),
		OriginalTopic: md.Get(KeyOriginalTopic),
		Handler:       md.Get(KeyHandler),
		ConsumerGroup: md.Get(KeyConsumerGroup),
		Reason:        Reason(md.Get(KeyReason)),
		Error:         md.Get(KeyError),
		ErrorType:     md.Get(KeyErrorType),
		Stack:         md.Get(KeyStack),
		Producer:      md.Get(KeyProducer),
		Traceparent:   md.Get(KeyTraceparent),
	}
	for k, v := range md {
		l.Metadata[k] = v
	}

	partition, hasPartition, err := parseInt(md, KeyOriginalPartition, 32)
	if err != nil {
		return Letter{}, err
	}
	offset, hasOffset, err := parseInt(md, KeyOriginalOffset, 64)
	if err != nil {
		return Letter{}, err
	}
	if hasPartition != hasOffset {
		present, missing := KeyOriginalPartition, KeyOriginalOffset
		if hasOffset {
			present, missing = missing, present
		}
		return Letter{}, &EnvelopeError{Key: missing, Want: "present", Err: fmt.Errorf("%s is set but %s is missing; they come in pairs", present, missing)}
	}
	l.OriginalPartition, l.OriginalOffset, l.HasOffset = int32(partition), offset, hasOffset

	attempts, _, err := parseInt(md, KeyAttempts, strconv.IntSize)
	if err != nil {
		return Letter{}, err
	}
	l.Attempts = int(attempts)
	replays, _, err := parseInt(md, KeyReplayCount, strconv.IntSize)
	if err != nil {
		return Letter{}, err
	}
	l.ReplayCount = int(replays)

	for _, t := range []struct {
		key string
		dst *time.Time
	}{
		{KeyFirstFailedAt, &l.FirstFailedAt},
		{KeyLastFailedAt, &l.LastFailedAt},
		{KeyReplayedAt, &l.ReplayedAt},
	} {
		if *t.dst, err = parseTime(md, t.key); err != nil {
			return Letter{}, err
		}
	}
	return l, nil
}

// parseInt reads a non-negative decimal of the given bit size; an absent
// key is (0, false, nil).
func parseInt(md message.Metadata, key string, bits int) (int64, bool, error) {
	v, ok := md[key]
	if !ok {
		return 0, false, nil
	}
	n, err := strconv.ParseInt(v, 10, bits)
	if err == nil && n < 0 {
		err = errors.New("negative")
	}
	if err != nil {
		return 0, false, &EnvelopeError{Key: key, Value: v, Want: fmt.Sprintf("a non-negative decimal int%d", bits), Err: err}
	}
	return n, true, nil
}

// parseTime reads an RFC 3339 time (any precision) as UTC; an absent key is
// the zero time.
func parseTime(md message.Metadata, key string) (time.Time, error) {
	v, ok := md[key]
	if !ok {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, &EnvelopeError{Key: key, Value: v, Want: "an RFC 3339 time", Err: err}
	}
	return t.UTC(), nil
}
