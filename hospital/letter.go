package hospital

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/fingerprint"
	"github.com/antidote-mq/antidote/poison"
)

// State is where a stored letter is in its treatment.
type State string

// The states of a letter. A letter is replayed or purged, never both.
const (
	StateDead     State = "dead"     // waiting for treatment
	StateReplayed State = "replayed" // sent back to its topic
	StatePurged   State = "purged"   // thrown away by an operator
)

// Format says who wrote a letter, and so which metadata it carries.
type Format string

// The formats Ingest recognises.
const (
	// FormatAntidote: Antidote's DeadLetter envelope (antidote.reason, ...).
	FormatAntidote Format = "antidote"
	// FormatWatermill: Watermill's PoisonQueue middleware (reason_poisoned,
	// topic_poisoned, handler_poisoned, subscriber_poisoned).
	FormatWatermill Format = "watermill"
	// FormatForeign: anything else found on a DLQ; stored with what it has.
	FormatForeign Format = "foreign"
)

// Watermill's PoisonQueue metadata keys (message/router/middleware).
const (
	watermillReason     = "reason_poisoned"
	watermillTopic      = "topic_poisoned"
	watermillHandler    = "handler_poisoned"
	watermillSubscriber = "subscriber_poisoned"
)

// ReasonWatermill is the reason given to letters of Watermill's
// PoisonQueue, which records an error but no classification.
const ReasonWatermill = "watermill_poisoned"

// ReasonUnknown is the reason given to letters without any.
const ReasonUnknown = "unknown"

// Letter is a dead letter as the hospital stores it.
type Letter struct {
	// ID is assigned by the Ward: ingest order in the store; on a broker's
	// DLQ read directly, the letter's place there.
	ID int64 `json:"id"`
	// Identity is unique per letter (see FromMessage): a letter delivered
	// twice has one identity and is stored once; two letters never share
	// one.
	Identity string `json:"identity"`
	// Digest is a hash of what the letter holds (its UUID, payload and
	// metadata, and the broker's record of it): a letter redelivered by a
	// broker without positions has the same Digest as before.
	Digest string `json:"digest"`
	// Redelivered is true when the broker says it delivered this letter
	// before (RabbitMQ's redelivered flag) and it has no position: it may
	// be stored already, under its Digest. A letter the broker delivers
	// for the first time is always new, even when another letter holds
	// the same bytes.
	Redelivered bool   `json:"redelivered,omitempty"`
	Broker      string `json:"broker"`
	DLQTopic    string `json:"dlq_topic"`
	Format      Format `json:"format"`
	UUID        string `json:"uuid"`

	OriginalTopic   string `json:"original_topic"`
	Handler         string `json:"handler"`
	ConsumerGroup   string `json:"consumer_group"`
	Reason          string `json:"reason"`
	Error           string `json:"error"`
	ErrorType       string `json:"error_type"`
	Stack           string `json:"stack,omitempty"`
	Producer        string `json:"producer,omitempty"`
	ConsumerVersion string `json:"consumer_version,omitempty"`
	Attempts        int    `json:"attempts"`
	// FirstFailedAt and LastFailedAt are zero when the letter does not say.
	FirstFailedAt time.Time `json:"first_failed_at"`
	LastFailedAt  time.Time `json:"last_failed_at"`

	Fingerprint fingerprint.Fingerprint `json:"fingerprint"`

	Payload  []byte            `json:"payload"`
	Metadata map[string]string `json:"metadata"`
	// Problem says what was wrong with the letter itself (malformed
	// envelope fields, a claim check that could not be read), or "".
	Problem string `json:"problem,omitempty"`

	State      State     `json:"state"`
	IngestedAt time.Time `json:"ingested_at"`
}

// MetadataConsumerVersion is the metadata key of the consuming service's
// version on a letter, when the service stamps it.
const MetadataConsumerVersion = "antidote.consumer_version"

// FromMessage turns a message read from dlqTopic of broker into a Letter.
// It never fails: a letter whose envelope is malformed is stored with what
// could be read and the problem noted, so one bad letter never stops
// ingest. A claim-checked letter is resolved through cc when cc is set;
// when it cannot be, the letter is stored as it is with the problem noted.
func FromMessage(ctx context.Context, msg *message.Message, broker, dlqTopic string, cc poison.ClaimCheck, fp fingerprint.Options) Letter {
	// The letter as it is in the DLQ names it, whether or not its claim
	// can be read today.
	id, digest, redelivered := identity(msg, broker, dlqTopic)
	var problems []error
	if msg.Metadata.Get(poison.KeyClaimCheck) != "" {
		if cc == nil {
			problems = append(problems, fmt.Errorf("its payload is in the claim check %s, and no claim-check store is configured", msg.Metadata.Get(poison.KeyClaimCheck)))
		} else if whole, err := poison.ResolveClaim(ctx, cc, msg); err != nil {
			problems = append(problems, fmt.Errorf("claim check: %w", err))
		} else {
			msg = whole
		}
	}
	l := Letter{
		Broker:   broker,
		DLQTopic: dlqTopic,
		UUID:     msg.UUID,
		Payload:  msg.Payload,
		Metadata: make(map[string]string, len(msg.Metadata)),
		State:    StateDead,
	}
	for k, v := range msg.Metadata {
		// The DLQ's delivery state is not the letter's: replayed, it would
		// tell the consumer's crash-loop guard the replay was delivered
		// before.
		if k != amqpRedelivered && k != amqpDeliveryCount {
			l.Metadata[k] = v
		}
	}
	md := msg.Metadata
	switch {
	case md.Get(poison.KeyReason) != "":
		l.Format = FormatAntidote
		env, err := poison.ReadEnvelope(msg)
		if err != nil {
			problems = append(problems, err)
		}
		// On an error ReadEnvelope returns nothing: read the plain fields
		// directly, the malformed one stays in Metadata.
		l.OriginalTopic = md.Get(poison.KeyOriginalTopic)
		l.Handler = md.Get(poison.KeyHandler)
		l.ConsumerGroup = md.Get(poison.KeyConsumerGroup)
		l.Reason = md.Get(poison.KeyReason)
		l.Error = md.Get(poison.KeyError)
		l.ErrorType = md.Get(poison.KeyErrorType)
		l.Stack = md.Get(poison.KeyStack)
		l.Producer = md.Get(poison.KeyProducer)
		if err == nil {
			l.Attempts = env.Attempts
			l.FirstFailedAt, l.LastFailedAt = env.FirstFailedAt, env.LastFailedAt
		}
	case md.Get(watermillReason) != "":
		l.Format = FormatWatermill
		l.Reason = ReasonWatermill
		l.Error = md.Get(watermillReason)
		l.OriginalTopic = md.Get(watermillTopic)
		l.Handler = md.Get(watermillHandler)
		l.ConsumerGroup = md.Get(watermillSubscriber)
		l.Producer = md.Get(poison.KeyProducer)
	default:
		l.Format = FormatForeign
		l.Reason = ReasonUnknown
		l.Producer = md.Get(poison.KeyProducer)
	}
	l.ConsumerVersion = md.Get(MetadataConsumerVersion)
	l.Identity, l.Digest, l.Redelivered = id, digest, redelivered
	l.Fingerprint = fp.Of(fingerprint.Input{
		Handler: l.Handler, Reason: l.Reason, ErrorType: l.ErrorType, Error: l.Error, Stack: l.Stack,
		Payload: l.Payload, ContentType: contentType(md), Producer: l.Producer,
	})
	if err := errors.Join(problems...); err != nil {
		l.Problem = err.Error()
	}
	return l
}

// What names a letter, from what each broker guarantees:
//
//   - Kafka: its partition and offset, unique within one life of the topic.
//     A topic deleted and made again (the usual way to empty one) reuses
//     its offsets, so the record's timestamp and content go in too.
//   - PostgreSQL: its row's offset and created_at, unique within one life
//     of the table, with its content: a row requeued and dead-lettered
//     again with another error is another letter.
//   - RabbitMQ: no position, and no message-id it requires. A delivery the
//     broker makes for the first time (redelivered false: RabbitMQ
//     guarantees it was never delivered before) is a new letter whatever
//     its bytes; a redelivery (after an ingester died before its ack) is
//     the letter stored before with the same content, if there is one.
//
// The content is the UUID, the payload and the metadata, less what a
// broker changes between two deliveries of one message.
func identity(msg *message.Message, broker, dlqTopic string) (id, digest string, redelivered bool) {
	rec, hasRecord := antidote.RecordFromCtx(msg.Context())
	digest = contentDigest(msg, rec)
	base := broker + ":" + dlqTopic
	if hasRecord {
		return base + "@" + rec.Place + "#" + digest, digest, false
	}
	// A first delivery gets an identity of its own; Put finds a
	// redelivery's twin by its digest.
	return base + "#" + digest + "/" + watermill.NewUUID(), digest, msg.Metadata.Get(amqpRedelivered) == "true"
}

// Metadata a broker changes between two deliveries of one message:
// watermill-amqp's redelivered flag and quorum queues' delivery count.
const (
	amqpRedelivered    = "_watermill_amqp_redelivered"
	amqpDeliveryCount  = "x-delivery-count"
	digestLengthPrefix = 8
)

// contentDigest hashes the letter's UUID, payload, metadata (sorted, each
// length-prefixed) and the broker's record of it: 32 hex digits.
func contentDigest(msg *message.Message, rec antidote.Record) string {
	h := sha256.New()
	var n [digestLengthPrefix]byte
	write := func(b []byte) {
		binary.LittleEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	write([]byte(msg.UUID))
	write(msg.Payload)
	keys := make([]string, 0, len(msg.Metadata))
	for k := range msg.Metadata {
		if k != amqpRedelivered && k != amqpDeliveryCount {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		write([]byte(k))
		write([]byte(msg.Metadata[k]))
	}
	write([]byte(rec.Place))
	if !rec.Time.IsZero() {
		write([]byte(rec.Time.UTC().Format(time.RFC3339Nano)))
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// FailedAt is when the letter last failed: LastFailedAt, or, when the
// letter gives none or one after it was ingested (a clock running ahead, a
// forged envelope), its ingest time. Groups' first and last seen and
// their hourly rates count by it.
func (l Letter) FailedAt() time.Time { return failedAt(l.LastFailedAt, l.IngestedAt) }

// FirstFailed is when the letter first failed, by the same rule.
func (l Letter) FirstFailed() time.Time {
	return failedAt(cmp.Or(l.FirstFailedAt, l.LastFailedAt), l.IngestedAt)
}

func failedAt(t, ingested time.Time) time.Time {
	if t.IsZero() || (!ingested.IsZero() && t.After(ingested)) {
		return ingested
	}
	return t
}

func contentType(md message.Metadata) string {
	for _, k := range []string{"content-type", "content_type", "Content-Type"} {
		if v := md.Get(k); v != "" {
			return v
		}
	}
	return ""
}
