// Package dlq is the message hospital: list, group, show, replay and purge
// the dead letters of a topic, on Kafka, RabbitMQ or PostgreSQL, through the
// same adapters.Config the services use.
//
// What "resolved" means per broker: on RabbitMQ and PostgreSQL a replayed or
// purged letter is acked (removed). On Kafka nothing can be removed from a
// topic, so the hospital keeps its own consumer-group offset on the DLQ topic
// (Config.KafkaGroup): letters before it are resolved; letters resolved out
// of order (a filtered replay) are listed in that offset's commit metadata.
// Listing never changes anything.
package dlq

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"golang.org/x/time/rate"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/adapters"
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
	// KafkaGroup is the hospital's consumer group on Kafka DLQ topics.
	// Default "antidote-hospital".
	KafkaGroup string
	// WrapPublisher, when set, decorates the publisher replays go through,
	// e.g. telemetry.NewPublisher, so each replay is a producer span: the
	// root of a new trace that links to the trace the letter died in
	// (poison.Replay keeps it under poison.KeyOriginalTraceparent). Default
	// none: replays are published as they are, and the consumer span of a
	// replay still links to the original trace.
	WrapPublisher func(message.Publisher) (message.Publisher, error)
	// ClaimCheck is the claim-check store DeadLetter moved too-large
	// letters' payloads to (DeadLetterConfig.ClaimCheck). Show and Replay
	// read the claim back, so a claim-checked letter is shown and replayed
	// whole. If nil, such a letter is listed as it is, Show says where its
	// payload is, and Replay refuses it (replaying its empty payload would
	// lose the message). Claims are kept when letters are purged.
	ClaimCheck poison.ClaimCheck
	// Store, when set, is the hospital store the letters were ingested into
	// (hospital.Ingest, `antidote hospital ingest`): List, Show, Replay and
	// Purge then read and treat its rows instead of the broker's DLQ,
	// which they never touch (replays still go to the broker). Each letter
	// is replayed or purged exactly once, even with a web UI or another
	// CLI treating the same letters, and the audit table records it. If
	// Store is nil, the hospital reads the DLQ on the broker.
	Store hospital.Store
	// Actor names who treats letters in the store's audit. Default
	// "antidote dlq".
	Actor string
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

// store is one broker's way to walk and resolve the letters of a DLQ topic.
type store interface {
	// visit calls fn for every unresolved letter of dlqTopic, oldest first,
	// and resolves (removes) those for which fn returns true. It stops early
	// when fn returns errStop.
	visit(ctx context.Context, dlqTopic string, fn func(*message.Message) (bool, error)) error
	close() error
}

var errStop = errors.New("stop")

// Hospital inspects and treats dead letters. Build it with Open; Close it.
type Hospital struct {
	cfg       Config
	store     store
	hstore    *hospitalStore // with Config.Store
	broker    *adapters.Broker
	replayPub message.Publisher // broker.Publisher, decorated by WrapPublisher
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
	h := &Hospital{cfg: cfg, broker: b, replayPub: b.Publisher}
	if cfg.WrapPublisher != nil {
		if h.replayPub, err = cfg.WrapPublisher(b.Publisher); err != nil {
			_ = b.Close()
			return nil, fmt.Errorf("dlq: WrapPublisher: %w", err)
		}
	}
	switch {
	case cfg.Store != nil:
		h.store, h.hstore = hospitalStore{cfg.Store}, &hospitalStore{cfg.Store}
	case cfg.Adapters.Broker == adapters.KindKafka:
		h.store, err = newKafkaStore(cfg)
	case cfg.Adapters.Broker == adapters.KindAMQP:
		h.store, err = newAMQPStore(ctx, cfg)
	case cfg.Adapters.Broker == adapters.KindPostgres:
		h.store, err = newPostgresStore(ctx, cfg)
	}
	if err != nil {
		_ = b.Close()
		return nil, err
	}
	return h, nil
}

// Close releases the broker connections.
func (h *Hospital) Close() error { return errors.Join(h.store.close(), h.broker.Close()) }

// DLQTopic is the DLQ topic inspected for topic.
func (h *Hospital) DLQTopic(topic string) string { return h.cfg.DLQTopic(topic) }

// List returns the unresolved letters of topic's DLQ that f selects, oldest
// first. It changes nothing.
func (h *Hospital) List(ctx context.Context, topic string, f Filter) ([]poison.Letter, error) {
	var out []poison.Letter
	err := h.store.visit(ctx, h.DLQTopic(topic), func(m *message.Message) (bool, error) {
		if l := read(m); f.Match(l) {
			out = append(out, l)
		}
		return false, nil
	})
	return out, err
}

// Show returns the letter with uuid, or an error wrapping ErrNotFound.
func (h *Hospital) Show(ctx context.Context, topic, uuid string) (poison.Letter, error) {
	var found *message.Message
	err := h.store.visit(ctx, h.DLQTopic(topic), func(m *message.Message) (bool, error) {
		if m.UUID == uuid {
			found = m
			return false, errStop
		}
		return false, nil
	})
	if err != nil {
		return poison.Letter{}, err
	}
	if found == nil {
		return poison.Letter{}, fmt.Errorf("%w: no unresolved letter %s in %s", ErrNotFound, uuid, h.DLQTopic(topic))
	}
	if key := found.Metadata.Get(poison.KeyClaimCheck); key != "" {
		if h.cfg.ClaimCheck == nil {
			l := read(found)
			l.Error = fmt.Sprintf("%s [its payload (%s bytes) and metadata are in the claim check %s: configure the claim-check store to see them]",
				l.Error, found.Metadata.Get(poison.KeyClaimCheckBytes), key)
			return l, nil
		}
		whole, err := poison.ResolveClaim(ctx, h.cfg.ClaimCheck, found)
		if err != nil {
			return poison.Letter{}, fmt.Errorf("dlq: %w", err)
		}
		found = whole
	}
	return read(found), nil
}

// ErrNotFound is wrapped by Show when the letter is not there.
var ErrNotFound = errors.New("dlq: letter not found")

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
}

// Replay publishes each selected letter back to its original topic (or
// opts.To) with poison.Replay (same UUID and idempotency key, replay_count+1,
// replayed_at), then resolves it. A letter is resolved only after its replay
// was published: a crash in between replays it twice, never loses it.
func (h *Hospital) Replay(ctx context.Context, topic string, f Filter, opts ReplayOptions) (Result, error) {
	if opts.To != "" && !slices.Contains(h.cfg.AllowReplayTo, opts.To) {
		return Result{}, fmt.Errorf("dlq: replay to %q is not allowed; add it to the hospital's AllowReplayTo (or replay to the original topic)", opts.To)
	}
	r := opts.Rate
	if r <= 0 {
		r = h.cfg.ReplayRate
	}
	if h.hstore != nil {
		return h.replayStored(ctx, topic, f, opts, r)
	}
	limiter := rate.NewLimiter(rate.Limit(r), 1)
	var res Result
	err := h.store.visit(ctx, h.DLQTopic(topic), func(m *message.Message) (bool, error) {
		l := read(m)
		if !f.Match(l) {
			return false, nil
		}
		res.Matched++
		if opts.DryRun {
			return false, nil
		}
		target := opts.To
		if target == "" {
			target = l.OriginalTopic
		}
		if target == "" {
			return false, fmt.Errorf("dlq: letter %s has no %s; replay it with To", l.UUID, poison.KeyOriginalTopic)
		}
		if target == h.DLQTopic(topic) {
			return false, fmt.Errorf("dlq: letter %s would be replayed into the DLQ it is in", l.UUID)
		}
		if err := limiter.Wait(ctx); err != nil {
			return false, err
		}
		// A claim-checked letter is replayed whole or not at all.
		whole, err := poison.ResolveClaim(ctx, h.cfg.ClaimCheck, m)
		if err != nil {
			return false, fmt.Errorf("dlq: cannot replay %s: %w", l.UUID, err)
		}
		// poison.Replay gives the replay a fresh context: a new trace,
		// linked (not parented) to the one the letter died in.
		if err := h.replayPub.Publish(target, poison.Replay(whole, h.cfg.Now())); err != nil {
			return false, fmt.Errorf("dlq: replay %s to %q: %w", l.UUID, target, err)
		}
		res.Replayed++
		if opts.Progress != nil {
			opts.Progress(res.Replayed)
		}
		return true, nil
	})
	return res, err
}

// Purge resolves (removes) the selected letters without replaying them.
func (h *Hospital) Purge(ctx context.Context, topic string, f Filter, dryRun bool) (Result, error) {
	if h.hstore != nil {
		return h.purgeStored(ctx, topic, f, dryRun)
	}
	var res Result
	err := h.store.visit(ctx, h.DLQTopic(topic), func(m *message.Message) (bool, error) {
		l := read(m)
		if !f.Match(l) {
			return false, nil
		}
		res.Matched++
		if dryRun {
			return false, nil
		}
		res.Purged++
		return true, nil
	})
	return res, err
}

// read parses a letter. A message that is not a well-formed envelope
// (published to the DLQ by hand, or by a newer version) is still listed with
// what it has, never hidden.
func read(m *message.Message) poison.Letter {
	l, err := poison.ReadEnvelope(m)
	if err != nil {
		l = poison.Letter{UUID: m.UUID, Payload: m.Payload, Metadata: m.Metadata}
		if !errors.Is(err, poison.ErrNotEnvelope) {
			l.Error = err.Error()
		}
	}
	return l
}

// replayStored replays through the store: hospital.Replay, each letter
// locked, published and marked in one transaction. A letter that cannot be
// replayed is reported in the error and stays dead; the others go on.
func (h *Hospital) replayStored(ctx context.Context, topic string, f Filter, opts ReplayOptions, r float64) (Result, error) {
	ids, err := h.hstore.ids(ctx, h.DLQTopic(topic), f)
	res := Result{Matched: len(ids)}
	if err != nil || opts.DryRun {
		return res, err
	}
	out, err := hospital.Replay(ctx, hospital.TreatConfig{Store: h.hstore.s, Publisher: h.replayPub, Actor: h.cfg.Actor,
		Rate: r, Now: h.cfg.Now, To: opts.To, Progress: opts.Progress}, ids)
	res.Replayed = out.Treated
	if err == nil {
		err = out.Err()
	}
	return res, err
}

// purgeStored marks the selected letters purged in the store.
func (h *Hospital) purgeStored(ctx context.Context, topic string, f Filter, dryRun bool) (Result, error) {
	ids, err := h.hstore.ids(ctx, h.DLQTopic(topic), f)
	res := Result{Matched: len(ids)}
	if err != nil || dryRun {
		return res, err
	}
	out, err := hospital.Purge(ctx, hospital.TreatConfig{Store: h.hstore.s, Actor: h.cfg.Actor}, ids)
	res.Purged = out.Treated
	if err == nil {
		err = out.Err()
	}
	return res, err
}
