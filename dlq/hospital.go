package dlq

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/fingerprint"
	"github.com/antidote-mq/antidote/hospital"
	"github.com/antidote-mq/antidote/poison"
)

// Config configures Open.
type Config struct {
	// Adapters finds the broker, as for the services. Required; memory is
	// not supported (its dead letters live in another process).
	Adapters adapters.Config
	// DLQTopic maps an original topic to its DLQ topic. Default
	// antidote.DLQTopic ("<topic>.dlq"), as DeadLetter uses.
	DLQTopic func(topic string) string
	// AllowReplayTo lists the topics a replay may send to other than each
	// letter's original topic. Default none: a typo cannot route letters
	// into an unrelated service.
	AllowReplayTo []string
	// ReplayRate caps replays per second. Default 100. Replaying a large
	// DLQ at full speed would be a flood of its own.
	ReplayRate float64
	// KafkaGroup is the hospital's consumer group on Kafka DLQ topics; the
	// transactional id of its treatments is derived from it and the DLQ
	// topic. Default "antidote-hospital".
	KafkaGroup string
	// KafkaAuditTopic is where a Kafka DLQ's treatments are recorded, one
	// JSON record each (who, what, which letter), in the treatment's
	// transaction: a Kafka DLQ's audit. Created with one partition when
	// missing. Default "antidote-hospital.audit".
	KafkaAuditTopic string
	// WrapPublisher, when set, decorates the publisher replays go through,
	// e.g. telemetry.NewPublisher, so each replay is a producer span: the
	// root of a new trace that links to the trace the letter died in
	// (poison.Replay keeps it under poison.KeyOriginalTraceparent). Default
	// none: replays are published as they are, and the consumer span of a
	// replay still links to the original trace.
	WrapPublisher func(message.Publisher) (message.Publisher, error)
	// ClaimCheck is the claim-check store DeadLetter moved too-large
	// letters' payloads to (DeadLetterConfig.ClaimCheck). Letters are read
	// back whole through it. If nil, such a letter is listed with the
	// problem noted, and Replay skips it with the reason (replaying its
	// empty payload would lose the message). Claims are kept when letters
	// are purged.
	ClaimCheck poison.ClaimCheck
	// Store, when set, is the hospital store the letters were ingested into
	// (hospital.Ingest, `antidote hospital ingest`): the hospital then
	// reads and treats its rows instead of the broker's DLQ, which it never
	// touches (replays still go to the broker), and the store's audit
	// records every treatment. If Store is nil, the hospital reads the DLQ
	// on the broker.
	Store hospital.Store
	// Actor names who treats letters in the store's audit (and in the log
	// of a broker's DLQ). Default "antidote dlq".
	Actor string
	// Fingerprint tunes grouping, as for ingest. Its zero value is ready.
	Fingerprint fingerprint.Options
	// Logger. Default none.
	Logger watermill.LoggerAdapter
	// Now stamps replays. Default time.Now.
	Now func() time.Time
}

func (c *Config) setDefaults() {
	c.Adapters.SetDefaults()
	if c.DLQTopic == nil {
		c.DLQTopic = antidote.DLQTopic
	}
	if c.ReplayRate == 0 {
		c.ReplayRate = 100
	}
	if c.KafkaGroup == "" {
		c.KafkaGroup = "antidote-hospital"
	}
	if c.KafkaAuditTopic == "" {
		c.KafkaAuditTopic = "antidote-hospital.audit"
	}
	if c.Actor == "" {
		c.Actor = "antidote dlq"
	}
	if c.Logger == nil {
		c.Logger = watermill.NopLogger{}
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Validate names what cannot work and the fix.
func (c Config) Validate() error {
	var errs []error
	if err := c.Adapters.Validate(); err != nil {
		errs = append(errs, err)
	}
	switch c.Adapters.Broker {
	case adapters.KindMemory:
		errs = append(errs, errors.New("dlq: broker memory has no dead letters outside its own process; set ANTIDOTE_BROKER to kafka, amqp or postgres"))
	case adapters.KindKafka:
		if len(c.Adapters.Kafka.Brokers) == 0 {
			errs = append(errs, errors.New("dlq: kafka.brokers is empty: an embedded broker would hold no dead letters; set ANTIDOTE_KAFKA_BROKERS to the brokers your services use"))
		}
	}
	if c.ReplayRate < 0 {
		errs = append(errs, fmt.Errorf("dlq: ReplayRate %v is negative; use a positive rate such as 100", c.ReplayRate))
	}
	return errors.Join(errs...)
}

// Hospital inspects and treats dead letters. Build it with Open; Close it.
// Its wards (one per DLQ read directly) live until Close: on RabbitMQ the
// letters a ward read stay held until then.
type Hospital struct {
	cfg    Config
	broker *adapters.Broker
	pub    message.Publisher // replays of a store's letters: broker.Publisher, wrapped

	mu    sync.Mutex
	wards map[string]ward // by DLQ topic
}

// ward is a broker's DLQ read directly.
type ward interface {
	hospital.Ward
	// publisher is what replays of its letters go through: its own
	// transaction's, where it has one.
	publisher() message.Publisher
	// refresh makes the next use read the DLQ again; release gives back
	// what the ward holds (RabbitMQ's letters), keeping what it read.
	refresh()
	release()
	close() error
}

// Open connects to the broker of cfg.Adapters.
func Open(ctx context.Context, cfg Config) (*Hospital, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	b, err := adapters.Open(ctx, cfg.Adapters, cfg.Logger)
	if err != nil {
		return nil, err
	}
	h := &Hospital{cfg: cfg, broker: b, wards: map[string]ward{}}
	if h.pub, err = h.wrap(b.Publisher); err != nil {
		_ = b.Close()
		return nil, err
	}
	return h, nil
}

func (h *Hospital) wrap(p message.Publisher) (message.Publisher, error) {
	if h.cfg.WrapPublisher == nil {
		return p, nil
	}
	w, err := h.cfg.WrapPublisher(p)
	if err != nil {
		return nil, fmt.Errorf("dlq: WrapPublisher: %w", err)
	}
	return w, nil
}

// Close releases the wards (RabbitMQ letters not treated go back to their
// queue) and the broker connections.
func (h *Hospital) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	var errs []error
	for _, w := range h.wards {
		errs = append(errs, w.close())
	}
	h.wards = map[string]ward{}
	return errors.Join(append(errs, h.broker.Close())...)
}

// DLQTopic is the DLQ topic inspected for topic.
func (h *Hospital) DLQTopic(topic string) string { return h.cfg.DLQTopic(topic) }

// Ward is where topic's dead letters are: the store (Config.Store), or
// topic's DLQ on the broker, opened on first use and kept until Close.
func (h *Hospital) Ward(ctx context.Context, topic string) (hospital.Ward, error) {
	if h.cfg.Store != nil {
		return h.cfg.Store, nil
	}
	w, err := h.ward(ctx, h.DLQTopic(topic))
	if err != nil {
		return nil, err
	}
	return w, nil
}

func (h *Hospital) ward(ctx context.Context, dlqTopic string) (ward, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if w, ok := h.wards[dlqTopic]; ok {
		return w, nil
	}
	var w ward
	var err error
	switch h.cfg.Adapters.Broker {
	case adapters.KindKafka:
		w, err = newKafkaWard(h, dlqTopic)
	case adapters.KindAMQP:
		w, err = newAMQPWard(h, dlqTopic)
	case adapters.KindPostgres:
		w, err = newPostgresWard(ctx, h, dlqTopic)
	default:
		err = fmt.Errorf("dlq: broker %q has no DLQ to read", h.cfg.Adapters.Broker)
	}
	if err != nil {
		return nil, err
	}
	h.wards[dlqTopic] = w
	return w, nil
}

// letter is m, read from dlqTopic, as the hospital's letter: the same
// conversion ingest makes, so it is named and grouped the same way.
func (h *Hospital) letter(ctx context.Context, m *message.Message, dlqTopic string) hospital.Letter {
	return hospital.FromMessage(ctx, m, string(h.cfg.Adapters.Broker), dlqTopic, h.cfg.ClaimCheck, h.cfg.Fingerprint)
}

// deadQuery is q narrowed to topic's dead letters.
func (h *Hospital) deadQuery(topic string, q hospital.LetterQuery) hospital.LetterQuery {
	q.State, q.DLQTopic = hospital.StateDead, h.DLQTopic(topic)
	return q
}

// List returns the dead letters of topic's DLQ that q selects (its State,
// DLQTopic and cursor fields are set here), oldest first, whole. It
// changes nothing.
func (h *Hospital) List(ctx context.Context, topic string, q hospital.LetterQuery) ([]hospital.Letter, error) {
	letters, w, err := h.read(ctx, topic, q)
	if bw, ok := w.(ward); ok {
		bw.release()
	}
	return letters, err
}

// read is List holding what it read (RabbitMQ's letters) for a treatment.
func (h *Hospital) read(ctx context.Context, topic string, q hospital.LetterQuery) ([]hospital.Letter, hospital.Ward, error) {
	w, err := h.Ward(ctx, topic)
	if err != nil {
		return nil, nil, err
	}
	if bw, ok := w.(ward); ok {
		bw.refresh()
	}
	q = h.deadQuery(topic, q)
	q.Whole, q.Newest, q.After, q.Limit = true, false, 0, 1000
	var out []hospital.Letter
	for {
		page, err := w.Letters(ctx, q)
		if err != nil {
			return out, w, err
		}
		out = append(out, page.Letters...)
		if page.Next == 0 {
			return out, w, nil
		}
		q.After = page.Next
	}
}

// Groups groups the letters List returns by fingerprint
// (hospital.GroupLetters), most waiting first: the web UI's groups for the
// same letters.
func (h *Hospital) Groups(ctx context.Context, topic string, q hospital.LetterQuery) ([]hospital.Group, error) {
	letters, err := h.List(ctx, topic, q)
	if err != nil {
		return nil, err
	}
	page, err := hospital.PageGroups(hospital.GroupLetters(letters, h.cfg.Now()), hospital.GroupQuery{Order: hospital.ByCount, Limit: 1000})
	return page.Groups, err
}

// ErrNotFound is wrapped by Show when the letter is not there.
var ErrNotFound = errors.New("dlq: letter not found")

// Show returns the dead letter of topic's DLQ with uuid, whole (its claim
// read back when it has one and Config.ClaimCheck is set; when the claim
// cannot be read, the letter says why in Problem), or an error wrapping
// ErrNotFound.
func (h *Hospital) Show(ctx context.Context, topic, uuid string) (hospital.Letter, error) {
	found, err := h.List(ctx, topic, hospital.LetterQuery{UUID: uuid})
	if err != nil {
		return hospital.Letter{}, err
	}
	if len(found) == 0 {
		return hospital.Letter{}, fmt.Errorf("%w: no dead letter %s in %s", ErrNotFound, uuid, h.DLQTopic(topic))
	}
	l := found[0]
	if l.Metadata[poison.KeyClaimCheck] != "" && h.cfg.ClaimCheck != nil {
		// Stored before the claim-check store was configured: read it back.
		whole := hospital.FromMessage(ctx, hospital.LetterMessage(l), l.Broker, l.DLQTopic, h.cfg.ClaimCheck, h.cfg.Fingerprint)
		l.Payload, l.Metadata, l.Problem = whole.Payload, whole.Metadata, whole.Problem
	}
	return l, nil
}

// ReplayOptions tune Replay.
type ReplayOptions struct {
	// To sends every replay to this topic instead of each letter's original
	// topic; it must be in Config.AllowReplayTo.
	To string
	// DryRun counts what would be replayed and changes nothing.
	DryRun bool
	// Rate overrides Config.ReplayRate (replays per second) when > 0.
	Rate float64
	// Progress, when set, is called after each replayed letter.
	Progress func(done int)
}

// Result counts what Replay or Purge did (or would do, in a dry run).
type Result struct {
	Matched  int `json:"matched"`
	Replayed int `json:"replayed"`
	Purged   int `json:"purged"`
	// Skipped letters another treatment got first (or holds).
	Skipped int `json:"skipped"`
	// Failed letters could not be treated, each with why; they stay dead.
	Failed []Failure `json:"failed,omitempty"`
}

// Failure is one letter that could not be treated.
type Failure struct {
	UUID   string `json:"uuid"`
	ID     int64  `json:"id"`
	Reason string `json:"reason"`
}

// Err is nil when every selected letter was treated or skipped, else an
// error naming how many failed and the first reasons.
func (r Result) Err() error {
	if len(r.Failed) == 0 {
		return nil
	}
	var errs []error
	for i, f := range r.Failed {
		if i == 5 {
			errs = append(errs, fmt.Errorf("... and %d more", len(r.Failed)-i))
			break
		}
		errs = append(errs, fmt.Errorf("letter %s: %s", f.UUID, f.Reason))
	}
	return fmt.Errorf("%w: %d of %d could not be treated and stay dead: %w", ErrSomeFailed, len(r.Failed), r.Matched, errors.Join(errs...))
}

// ErrSomeFailed is wrapped by Result.Err.
var ErrSomeFailed = errors.New("dlq: some letters were skipped")

// Replay publishes each selected dead letter back to its original topic (or
// opts.To) with poison.Replay (same UUID and idempotency key, replay_count+1,
// replayed_at), then resolves it, each in a treatment of its own
// (hospital.Replay). A letter that cannot be replayed is in Result.Failed;
// the error is for what stopped the whole treatment (the broker gone,
// another treatment took the DLQ over).
func (h *Hospital) Replay(ctx context.Context, topic string, q hospital.LetterQuery, opts ReplayOptions) (Result, error) {
	if opts.To != "" && !slices.Contains(h.cfg.AllowReplayTo, opts.To) {
		return Result{}, fmt.Errorf("dlq: replay to %q is not allowed; add it to the hospital's AllowReplayTo (or replay to the original topic)", opts.To)
	}
	r := opts.Rate
	if r <= 0 {
		r = h.cfg.ReplayRate
	}
	return h.treat(ctx, topic, q, opts.DryRun, hospital.StateReplayed, func(w hospital.Ward, pub message.Publisher, ids []int64) (hospital.Result, error) {
		return hospital.Replay(ctx, hospital.TreatConfig{Store: w, Publisher: pub, Actor: h.cfg.Actor, Rate: r, Now: h.cfg.Now,
			To: opts.To, Progress: opts.Progress, ClaimCheck: h.cfg.ClaimCheck}, ids)
	})
}

// Purge resolves (removes) the selected dead letters without replaying
// them, each in a treatment of its own (hospital.Purge).
func (h *Hospital) Purge(ctx context.Context, topic string, q hospital.LetterQuery, dryRun bool) (Result, error) {
	return h.treat(ctx, topic, q, dryRun, hospital.StatePurged, func(w hospital.Ward, _ message.Publisher, ids []int64) (hospital.Result, error) {
		return hospital.Purge(ctx, hospital.TreatConfig{Store: w, Actor: h.cfg.Actor}, ids)
	})
}

func (h *Hospital) treat(ctx context.Context, topic string, q hospital.LetterQuery, dryRun bool, to hospital.State,
	run func(hospital.Ward, message.Publisher, []int64) (hospital.Result, error)) (Result, error) {
	letters, w, err := h.read(ctx, topic, q)
	pub := h.pub
	if bw, ok := w.(ward); ok {
		defer bw.release()
		if err == nil {
			pub, err = h.wrap(bw.publisher())
		}
	}
	res := Result{Matched: len(letters)}
	if err != nil || dryRun || len(letters) == 0 {
		return res, err
	}
	ids := make([]int64, len(letters))
	uuids := make(map[int64]string, len(letters))
	for i, l := range letters {
		ids[i], uuids[l.ID] = l.ID, l.UUID
	}
	out, err := run(w, pub, ids)
	res.Skipped = out.Skipped
	if to == hospital.StateReplayed {
		res.Replayed = out.Treated
	} else {
		res.Purged = out.Treated
	}
	for _, f := range out.Failed {
		res.Failed = append(res.Failed, Failure{UUID: uuids[f.ID], ID: f.ID, Reason: f.Err.Error()})
	}
	return res, err
}
