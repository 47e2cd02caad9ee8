package hospital

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

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
	// ID is assigned by the Store: ingest order.
	ID int64 `json:"id"`
	// Identity is unique per letter: the broker, the DLQ and the letter's
	// position there (Kafka) or its UUID and failure (others). A letter
	// ingested twice has one identity and is stored once.
	Identity string `json:"identity"`
	Broker   string `json:"broker"`
	DLQTopic string `json:"dlq_topic"`
	Format   Format `json:"format"`
	UUID     string `json:"uuid"`

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
		l.Metadata[k] = v
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
	l.Identity = identity(msg, broker, dlqTopic, l)
	l.Fingerprint = fp.Of(fingerprint.Input{
		Handler: l.Handler, Reason: l.Reason, ErrorType: l.ErrorType, Error: l.Error, Stack: l.Stack,
		Payload: l.Payload, ContentType: contentType(md), Producer: l.Producer,
	})
	if err := errors.Join(problems...); err != nil {
		l.Problem = err.Error()
	}
	return l
}

// identity: on Kafka a letter's position in its DLQ names it exactly. On
// the other brokers a letter has no position that survives its redelivery;
// its UUID (the original message's), its DLQ and its last failure and
// attempts name it: redelivered, it is the same letter; dead-lettered again
// after a replay, it is a new one.
func identity(msg *message.Message, broker, dlqTopic string, l Letter) string {
	if partition, offset, ok := antidote.PositionFromCtx(msg.Context()); ok {
		return fmt.Sprintf("%s:%s/%d/%d", broker, dlqTopic, partition, offset)
	}
	last := msg.Metadata.Get(poison.KeyLastFailedAt)
	if last == "" {
		last = msg.Metadata.Get(poison.KeyReplayedAt)
	}
	return broker + ":" + dlqTopic + ":" + msg.UUID + ":" + last + ":" + strconv.Itoa(l.Attempts)
}

func contentType(md message.Metadata) string {
	for _, k := range []string{"content-type", "content_type", "Content-Type"} {
		if v := md.Get(k); v != "" {
			return v
		}
	}
	return ""
}
