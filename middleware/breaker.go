package middleware

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/sony/gobreaker/v2"

	"github.com/antidote-mq/antidote/internal/clock"
	"github.com/antidote-mq/antidote/internal/textcut"
	"github.com/antidote-mq/antidote/poison"
)

// ErrCircuitOpen is matched (errors.Is) by the error the breaker returns for
// a message it refused to run; the message is nacked, not dead-lettered.
var ErrCircuitOpen = errors.New("antidote: circuit open, handler's dependencies are failing")

// DefaultMaxHoldTime is BreakerConfig.MaxHoldTime when zero.
const DefaultMaxHoldTime = time.Minute

// BreakerConfig configures Breaker. Every zero field takes its default.
type BreakerConfig struct {
	// Window is the rolling window over which outcomes are counted.
	// Default 30s. Shorter reacts faster and forgets an outage sooner.
	Window time.Duration
	// MinRequests is how many outcomes the window needs before the breaker
	// may open. Default 10. Lower trips on less evidence.
	MinRequests uint32
	// FailureRatio is the share of transient failures in the window that
	// opens the breaker. Default 0.5.
	FailureRatio float64
	// OpenTimeout is how long the breaker stays open before letting probe
	// messages through (half-open). Default 5s.
	OpenTimeout time.Duration
	// HalfOpenProbes is how many messages may run while half-open; all must
	// succeed to close the breaker. Default 1.
	HalfOpenProbes uint32
	// Backoff is the pause before a refused or held message is nacked, so
	// the broker does not hand it back in a hot loop. Default 1s. It honours
	// the message context: shutdown never waits for it.
	Backoff time.Duration
	// MaxHoldTime bounds how long one message failing transiently is held
	// back (nacked instead of dead-lettered), counted from its first hold.
	// Default 1m. A head-of-line consumer sees only the message at the head
	// while it is held, so without a HealthCheck it cannot tell a dead
	// database from a message that always times out; after MaxHoldTime the
	// message goes to the DLQ as retries_exhausted and the queue moves on.
	// In an outage longer than this, at most one message per partition per
	// MaxHoldTime reaches the DLQ: a trickle, not a storm. Longer tolerates
	// longer outages and lets a truly bad message hold its partition longer.
	MaxHoldTime time.Duration
	// HealthCheck, when set, answers what the breaker cannot see: whether
	// the handler's dependencies are up (e.g. a pgxpool.Pool's Ping). It is
	// called, within Backoff, before a held message runs again (failing:
	// held again without running) and after it fails transiently again:
	// nil both times means they are up, so the failure is the message's own
	// and it goes to the DLQ (retries_exhausted) at once; an error means an
	// outage and the message is held. Default nil: the breaker
	// judges by other messages' successes alone, and on an ordered queue
	// with nothing else flowing holds the message up to MaxHoldTime. It
	// must not depend on the message.
	HealthCheck func(ctx context.Context) error
	// Classifier tells transient from permanent failures. Permanent ones are
	// the message's fault and count as healthy outcomes. Default
	// poison.DefaultClassifier().
	Classifier poison.Classifier
	// OnStateChange, when set, is called on every state change ("closed",
	// "open", "half-open"), for metrics. It must not block. If nil, nothing
	// is called.
	OnStateChange func(from, to string)
	// OnHold, when set, is called with held true when a message starts being
	// held and with held false exactly once when that hold ends, however it
	// ends (released, dead-lettered, or no longer counted: see Breaker), with
	// the handler's name, for the gauge antidote.breaker.held
	// (Metrics.RecordBreakerHold). It is called under the breaker's lock, so
	// that calls for one message never cross: it must not block nor call the
	// Breaker. Default nil: nothing is called.
	OnHold func(handler string, held bool)
	// Logger gets one line per state change, one when a message starts being
	// held and one when its hold ends (not one per redelivery). Default
	// watermill.NopLogger.
	Logger watermill.LoggerAdapter
}

func (c *BreakerConfig) setDefaults() {
	if c.Window == 0 {
		c.Window = 30 * time.Second
	}
	if c.MinRequests == 0 {
		c.MinRequests = 10
	}
	if c.FailureRatio == 0 {
		c.FailureRatio = 0.5
	}
	if c.OpenTimeout == 0 {
		c.OpenTimeout = 5 * time.Second
	}
	if c.HalfOpenProbes == 0 {
		c.HalfOpenProbes = 1
	}
	if c.Backoff == 0 {
		c.Backoff = time.Second
	}
	if c.MaxHoldTime == 0 {
		c.MaxHoldTime = DefaultMaxHoldTime
	}
	if c.Classifier == nil {
		c.Classifier = poison.DefaultClassifier()
	}
	if c.Logger == nil {
		c.Logger = watermill.NopLogger{}
	}
}

// Validate reports every invalid field of c, after defaults are applied
// (NewBreaker applies them first), in field order, joined with errors.Join.
// A zero field is valid: it stands for its default.
func (c BreakerConfig) Validate() error {
	var errs []error
	negative := func(field string, d time.Duration) {
		if d < 0 {
			errs = append(errs, fmt.Errorf("antidote: BreakerConfig.%s is %v: it must not be negative; use 0 for the default", field, d))
		}
	}
	negative("Window", c.Window)
	if c.FailureRatio < 0 || c.FailureRatio > 1 {
		errs = append(errs, fmt.Errorf("antidote: BreakerConfig.FailureRatio %v is outside [0, 1]; use e.g. 0.5", c.FailureRatio))
	}
	negative("OpenTimeout", c.OpenTimeout)
	negative("Backoff", c.Backoff)
	negative("MaxHoldTime", c.MaxHoldTime)
	return errors.Join(errs...)
}

// Breaker guards against the DLQ storm: when most messages fail with
// transient errors (the database is down, not the messages), dead-lettering
// them all would empty the queue into the DLQ. Instead the breaker opens:
// messages are nacked after Backoff without running the handler (consumption
// pauses), after OpenTimeout a probe runs (half-open), and one success closes
// it. Place it between DeadLetter and Retry (router.New does); it counts the
// outcome after Retry's attempts, and its refusals are poison.Defer'd, which
// DeadLetter nacks instead of dead-lettering. Built on sony/gobreaker/v2
// with a rolling window.
//
// While closed, a message that still fails transiently after Retry is held
// too, not dead-lettered at once: a window full of earlier successes says
// nothing about whether the database died a second ago. It goes to the DLQ
// (retries_exhausted) once it has been held twice and other messages
// succeeded since its first hold (or, with DelayedRetry, once its stages
// are spent while most outcomes in the window are successes), which shows
// the failure is its own; with no other traffic it is held up to
// MaxHoldTime.
//
// A hold is remembered per handler, topic and message (its Kafka partition
// and offset, else its UUID, keyed by its SHA-256 when longer than 128
// bytes), from its first hold to its end, and logged twice, not once per
// redelivery: "Message held by the breaker" (held_since; decide_by, which
// is held_since + MaxHoldTime; and why it is held) and "Message no longer
// held by the breaker" (outcome released or dead_lettered, why, held_for,
// holds). Each held delivery adds the span event "antidote.held" (EventHeld)
// to the consumer span, and OnHold keeps a gauge of the messages held.
// A message not delivered again for a minute plus ten Backoffs (settled by
// another consumer, or above the breaker) stops counting as held, with one
// line for all such, and counts again, with its first hold kept, if it
// comes back. Past 10,000 holds at once all are forgotten (at worst
// restarting some messages' MaxHoldTime), with one line saying so.
//
// A verdict waits for a delivery that can still be acked: when the
// subscriber ended the delivery during the run (router closing, a
// PostgreSQL ack deadline shorter than the hold), the message is nacked
// and judged at its next delivery. A message sent to the DLQ is
// remembered for as long as it keeps coming back: a redelivery (its ack
// was lost, or the DLQ refused the letter) that fails transiently goes to
// the DLQ again at once, not after another MaxHoldTime.
//
// A message with neither a UUID nor a Kafka offset cannot be told from its
// redeliveries nor from others like it, so it is not tracked: refused while
// the circuit is open like any other, but a transient failure of its own is
// judged at once, by the HealthCheck (failing: held; passing: DLQ) or,
// without one, sent to the DLQ after its attempts; its failures feed the
// window, so holding it on the window's word could hold it forever.
type Breaker struct {
	cfg   BreakerConfig
	cb    *gobreaker.CircuitBreaker[struct{}]
	mu    sync.Mutex
	holds map[holdKey]holdRecord // bounded by maxHolds
	// successes counts successful runs, so a held message can tell whether
	// others got through since its first hold.
	successes atomic.Uint64
	// nholds is len(holds), written under mu: with none held (the normal
	// case) wasHeld and end skip the lock.
	nholds atomic.Int32

	// maxHolds is maxTrackedHolds, staleAfter heldStaleAfter plus ten
	// Backoffs (fields so that tests can shrink them).
	maxHolds   int
	staleAfter time.Duration
	// sweeper stops counting holds whose message was not seen for
	// staleAfter; armed (under mu) while any hold is counted.
	sweeper    *time.Timer
	sweepArmed bool

	originOf func(*message.Message) poison.Origin // poison.OriginOf; tests replace it
}

// maxTrackedHolds bounds the holds map; past it all are forgotten at once,
// which at worst restarts some messages' MaxHoldTime.
const maxTrackedHolds = 10_000

// heldStaleAfter (plus ten Backoffs) is how long a held message may go
// undelivered before it stops counting as held: a held message comes back
// after about one Backoff, unless another consumer or a middleware above
// the breaker settled it.
const heldStaleAfter = time.Minute

// maxKeyUUIDBytes is the longest UUID kept as it is in the holds map and
// the logs; a longer one is keyed by its SHA-256 and cut in the logs.
const maxKeyUUIDBytes = 128

// NewBreaker fills cfg's defaults, validates it (see BreakerConfig.Validate)
// and returns the breaker.
func NewBreaker(cfg BreakerConfig) (*Breaker, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	b := &Breaker{cfg: cfg, holds: map[holdKey]holdRecord{}, maxHolds: maxTrackedHolds, staleAfter: heldStaleAfter + 10*cfg.Backoff, originOf: poison.OriginOf}
	b.cb = gobreaker.NewCircuitBreaker[struct{}](gobreaker.Settings{
		Name:         "antidote",
		MaxRequests:  cfg.HalfOpenProbes,
		Interval:     cfg.Window,
		BucketPeriod: cfg.Window / 10,
		Timeout:      cfg.OpenTimeout,
		ReadyToTrip:  func(c gobreaker.Counts) bool { return cfg.failing(c) },
		OnStateChange: func(_ string, from, to gobreaker.State) {
			cfg.Logger.Info("DLQ-storm breaker changed state", watermill.LogFields{"from": from.String(), "to": to.String()})
			if cfg.OnStateChange != nil {
				cfg.OnStateChange(from.String(), to.String())
			}
		},
		// Only transient failures are the environment's; a permanent one is
		// the message's and says nothing about the database.
		IsSuccessful: func(err error) bool { return err == nil || cfg.Classifier.Classify(err) == poison.ClassPermanent },
		// err != nil first: errors.As's target would be allocated per call.
		IsExcluded: func(err error) bool { return err != nil && errors.As(err, new(excludedErr)) },
	})
	return b, nil
}

// State is "closed", "open" or "half-open".
func (b *Breaker) State() string { return b.cb.State().String() }

// Middleware returns the breaker as a Watermill middleware.
func (b *Breaker) Middleware(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		ctx := msg.Context()
		held := b.wasHeld(msg)
		if held && b.cfg.HealthCheck != nil {
			if again, err := b.holdWhileUnhealthy(msg); again {
				return nil, err
			}
		}
		var produced []*message.Message
		var herr error
		// A message held before counts once: its redeliveries say nothing
		// new about the environment, and counting them would let one bad
		// message in a quiet stream open the breaker for good. Probes
		// (half-open) always count.
		repeat := held && b.cb.State() == gobreaker.StateClosed
		_, err := b.cb.Execute(func() (struct{}, error) {
			produced, herr = h(msg)
			// Deferred (a key busy elsewhere, a failed schedule) says nothing
			// about the handler's dependencies.
			if herr != nil && (repeat || errors.Is(herr, poison.ErrDeferred)) {
				return struct{}{}, excludedErr{herr}
			}
			return struct{}{}, herr
		})
		if err == nil && herr == nil {
			b.successes.Add(1)
			b.release(msg)
			return produced, nil
		}
		msg.SetContext(ctx) // the delivery's, not one a middleware below left
		return b.settle(msg, produced, herr, err)
	}
}

// settle decides what a refused or failed run returns (out of
// Middleware's closure, so the frame kept on the stack while the handler
// runs is small). err is Execute's error, herr the handler's.
func (b *Breaker) settle(msg *message.Message, produced []*message.Message, herr, err error) ([]*message.Message, error) {
	switch {
	case errors.Is(err, gobreaker.ErrOpenState), errors.Is(err, gobreaker.ErrTooManyRequests):
		st := b.cb.State()
		return nil, b.hold(msg, fmt.Errorf("%w (%s)", ErrCircuitOpen, st), refusedWhy(st))
	case herr == nil:
		b.successes.Add(1)
		b.release(msg)
		return produced, nil
	case deliveryOver(msg) || errors.Is(herr, poison.ErrDeferred):
		// Delivered again: a hold goes on, and a verdict waits for the
		// next delivery, whose ack can still reach the broker.
		return nil, herr
	case b.cfg.Classifier.Classify(herr) == poison.ClassPermanent:
		b.end(msg, holdDeadLettered, "it failed permanently")
		return nil, herr
	}
	// A transient failure that outlived Retry.
	k, tracked := b.keyOf(msg)
	if !tracked {
		return b.settleUntracked(msg, herr)
	}
	if why, done := b.decided(k); done {
		b.letter(msg, k, why)
		return nil, herr // DeadLetter takes it: retries_exhausted
	}
	if st := b.cb.State(); st != gobreaker.StateClosed {
		return nil, b.hold(msg, fmt.Errorf("%w (%s): %w", ErrCircuitOpen, st, herr), "circuit "+st.String())
	}
	own, why := b.judged(msg, k)
	if own {
		b.letter(msg, k, why)
		return nil, herr // others succeed while it keeps failing: the message's own problem
	}
	return nil, b.hold(msg, herr, why)
}

// settleUntracked judges at once a transient failure of a message the
// breaker cannot tell from its redeliveries (no UUID, no Kafka offset).
// Holding it until a later verdict could hold it forever, and its own
// failures feed the window, so only the HealthCheck, which it cannot
// influence, may hold it; without one it goes to the DLQ after its attempts.
func (b *Breaker) settleUntracked(msg *message.Message, herr error) ([]*message.Message, error) {
	why := "it has no UUID to track its holds by, and there is no HealthCheck"
	if b.cfg.HealthCheck != nil {
		if err := b.healthCheck(msg); err != nil {
			return nil, b.hold(msg, herr, "health check failing: "+err.Error())
		}
		why = "it fails while the health check passes"
	}
	b.cfg.Logger.Info("Message without a UUID not held by the breaker: its holds cannot be tracked", traceFields(msg.Context(), watermill.LogFields{
		"topic":        message.SubscribeTopicFromCtx(msg.Context()),
		"handler_name": message.HandlerNameFromCtx(msg.Context()),
		"err":          traceErrorText(herr),
		"why":          why,
	}))
	return nil, herr
}

func refusedWhy(st gobreaker.State) string {
	if st == gobreaker.StateHalfOpen {
		return "circuit half-open, its probes are busy"
	}
	return "circuit " + st.String()
}

// outcomes counts finished, counted runs: gobreaker's Requests also holds
// runs still in flight and excluded ones.
func outcomes(c gobreaker.Counts) uint32 { return c.TotalSuccesses + c.TotalFailures }

// failing reports whether the window shows enough transient failures to open.
func (c BreakerConfig) failing(n gobreaker.Counts) bool {
	total := outcomes(n)
	return total >= c.MinRequests && float64(n.TotalFailures)/float64(total) >= c.FailureRatio
}

// excludedErr marks a failure gobreaker must not count.
type excludedErr struct{ error }

// holdKey identifies a held message: the same message delivered to two
// handlers (or topics) is held twice, independently.
type holdKey struct {
	handler, topic string
	kind           holdKeyKind
	id             string // the UUID, or its SHA-256 (kind keyHash)
	partition      int32  // kind keyOffset
	offset         int64
}

type holdKeyKind uint8

const (
	keyUUID holdKeyKind = iota
	keyHash             // so that no UUID can collide with a hash
	keyOffset
)

// keyOf returns msg's key: on Kafka its partition and offset, which
// identify it even when its producer gave it no UUID, or the same one as
// to other messages; elsewhere its UUID, hashed when longer than
// maxKeyUUIDBytes. ok is false for a message without either, which
// cannot be told from an unrelated one.
func (b *Breaker) keyOf(msg *message.Message) (k holdKey, ok bool) {
	o := b.originOf(msg)
	k = holdKey{handler: o.Handler, topic: o.Topic}
	switch {
	case o.HasOffset:
		k.kind, k.partition, k.offset = keyOffset, o.Partition, o.Offset
	case msg.UUID == "":
		return holdKey{}, false
	case len(msg.UUID) > maxKeyUUIDBytes:
		sum := sha256.Sum256([]byte(msg.UUID))
		k.kind, k.id = keyHash, string(sum[:])
	default:
		k.id = msg.UUID
	}
	return k, true
}

// logFields are the fields naming a held message in the breaker's lines.
func (k holdKey) logFields(msg *message.Message) watermill.LogFields {
	f := watermill.LogFields{"message_uuid": logUUID(msg.UUID), "topic": k.topic, "handler_name": k.handler}
	if k.kind == keyOffset {
		f["partition"], f["offset"] = k.partition, k.offset
	}
	return f
}

// logUUID is msg's UUID as logged: cut when it is longer than
// maxKeyUUIDBytes (a foreign producer's 100 KB "UUID").
func logUUID(uuid string) string {
	if len(uuid) <= maxKeyUUIDBytes {
		return uuid
	}
	return fmt.Sprintf("%s...[truncated, %d bytes]", textcut.Prefix(uuid, maxKeyUUIDBytes), len(uuid))
}

// logTime formats a time for the logs and span events.
func logTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// hold records a hold, pauses, then returns a Defer'd error so the message
// is nacked. why says why it is held.
func (b *Breaker) hold(msg *message.Message, err error, why string) error {
	k, tracked := b.keyOf(msg)
	if !tracked {
		b.cfg.Logger.Debug("Message without a UUID held by the breaker; its holds are not tracked", traceFields(msg.Context(), watermill.LogFields{
			"topic": message.SubscribeTopicFromCtx(msg.Context()), "handler_name": message.HandlerNameFromCtx(msg.Context()), "why": why,
		}))
		noteHeld(msg.Context(), time.Time{}, 0, time.Time{}, why)
		return b.pause(msg, err)
	}
	now := time.Now()
	b.mu.Lock()
	r, ok := b.holds[k]
	if r.lettered {
		ok = false // sent to the DLQ before, refused now: a new hold
	}
	forgot := 0
	if !ok {
		if len(b.holds) >= b.maxHolds {
			forgot = b.forgetAllLocked()
		}
		r = holdRecord{first: now, successes: b.successes.Load()}
	}
	r.holds++
	r.last = now
	resumed := ok && !r.counted
	if !r.counted {
		r.counted = true
		b.onHold(k.handler, true)
		b.armSweepLocked()
	}
	b.holds[k] = r
	b.nholds.Store(int32(len(b.holds)))
	b.mu.Unlock()

	if forgot > 0 {
		b.cfg.Logger.Info("Breaker forgot every held message: too many held at once", watermill.LogFields{
			"forgotten": forgot, "max_tracked": b.maxHolds,
		})
	}
	decideBy := r.first.Add(b.cfg.MaxHoldTime)
	if !ok || resumed {
		fields := k.logFields(msg).Add(watermill.LogFields{
			"err":           traceErrorText(err),
			"why":           traceText(why),
			"held_since":    logTime(r.first),
			"decide_by":     logTime(decideBy),
			"max_hold_time": b.cfg.MaxHoldTime.String(),
		})
		msgText := "Message held by the breaker: nacked after a backoff, not dead-lettered; a transient failure after decide_by sends it to the DLQ"
		if resumed {
			fields["holds"] = r.holds
			msgText = "Message held by the breaker again after it was not delivered for a while"
		}
		b.cfg.Logger.Info(msgText, traceFields(msg.Context(), fields))
	}
	noteHeld(msg.Context(), r.first, r.holds, decideBy, why)
	return b.pause(msg, err)
}

// pause waits Backoff (or until the message context ends) and returns err
// Defer'd, so DeadLetter nacks the message.
func (b *Breaker) pause(msg *message.Message, err error) error {
	clock.Sleep(msg.Context(), b.cfg.Backoff)
	return poison.Defer(err)
}

// holdRecord is what the breaker remembers of a held message.
type holdRecord struct {
	first     time.Time // its first hold
	last      time.Time // its latest hold
	successes uint64    // Breaker.successes at its first hold
	holds     int
	// counted: reported held through OnHold; false once it went stale.
	counted bool
	// lettered: the breaker sent it to the DLQ. Kept (uncounted) until it
	// is not delivered for staleAfter, so that a redelivery (its ack lost
	// when its delivery ended during the publish, or the DLQ refused it)
	// goes to the DLQ again at its next transient failure instead of
	// starting a new MaxHoldTime.
	lettered bool
}

// How a hold ends, as logged.
const (
	holdReleased     = "released"
	holdDeadLettered = "dead_lettered"
)

const whyWindowFailing = "most outcomes in the window are transient failures: an outage"

// onHold calls OnHold; under mu.
func (b *Breaker) onHold(handler string, held bool) {
	if b.cfg.OnHold != nil {
		b.cfg.OnHold(handler, held)
	}
}

// release ends msg's hold, if any, after the chain below settled it.
func (b *Breaker) release(msg *message.Message) {
	if b.nholds.Load() == 0 {
		return
	}
	why := string(OutcomeProcessed)
	if st := deliveryStateOf(msg.Context()); st != nil {
		st.mu.Lock()
		if st.outcome != "" {
			why = string(st.outcome) // retry_scheduled, duplicate
		}
		st.mu.Unlock()
	}
	b.end(msg, holdReleased, why)
}

// end forgets msg's hold, if any, and logs how it ended.
func (b *Breaker) end(msg *message.Message, how, why string) {
	if b.nholds.Load() == 0 {
		return
	}
	k, ok := b.keyOf(msg)
	if !ok {
		return
	}
	b.mu.Lock()
	r, found := b.holds[k]
	if found {
		delete(b.holds, k)
		b.nholds.Store(int32(len(b.holds)))
		if r.counted {
			b.onHold(k.handler, false)
		}
	}
	b.mu.Unlock()
	if !found || r.lettered { // a lettered one's end was logged
		return
	}
	b.logEnd(msg, k, r, how, why)
}

// logEnd logs the end of r, msg's hold.
func (b *Breaker) logEnd(msg *message.Message, k holdKey, r holdRecord, how, why string) {
	b.cfg.Logger.Info("Message no longer held by the breaker", traceFields(msg.Context(), k.logFields(msg)).Add(watermill.LogFields{
		"outcome":    how,
		"why":        traceText(why),
		"held_since": logTime(r.first),
		"held_for":   time.Since(r.first).String(),
		"holds":      r.holds,
	}))
}

// letter ends msg's hold as sent to the DLQ, keeping its record (see
// holdRecord.lettered), and logs how it ended the first time.
func (b *Breaker) letter(msg *message.Message, k holdKey, why string) {
	b.mu.Lock()
	r, found := b.holds[k]
	again := r.lettered
	if found {
		if r.counted {
			r.counted = false
			b.onHold(k.handler, false)
		}
		r.lettered, r.last = true, time.Now()
		b.holds[k] = r
		b.armSweepLocked()
	}
	b.mu.Unlock()
	if !found || again {
		return
	}
	b.logEnd(msg, k, r, holdDeadLettered, why)
}

// forgetAllLocked drops every hold, reporting the counted ones as no longer
// held; under mu. It returns how many it dropped.
func (b *Breaker) forgetAllLocked() int {
	n := len(b.holds)
	for k, r := range b.holds {
		if r.counted {
			b.onHold(k.handler, false)
		}
	}
	clear(b.holds)
	b.nholds.Store(0)
	return n
}

// armSweepLocked makes sure a sweep will run; under mu.
func (b *Breaker) armSweepLocked() {
	if b.sweepArmed {
		return
	}
	b.sweepArmed = true
	if b.sweeper == nil {
		b.sweeper = time.AfterFunc(b.staleAfter, b.sweep)
		return
	}
	b.sweeper.Reset(b.staleAfter)
}

// sweep stops counting the holds whose message was not delivered for
// staleAfter, and runs again while any hold is counted or lettered (at most
// four times per staleAfter). The records stay, so a message that comes
// back keeps its first hold, and so its MaxHoldTime; a lettered one not
// delivered for staleAfter is dropped.
func (b *Breaker) sweep() {
	now := time.Now()
	stale := 0
	b.mu.Lock()
	next := time.Duration(0)
	for k, r := range b.holds {
		if !r.counted && !r.lettered {
			continue
		}
		age := now.Sub(r.last)
		switch {
		case age < b.staleAfter:
			if d := b.staleAfter - age; next == 0 || d < next {
				next = d
			}
		case r.lettered:
			delete(b.holds, k) // its redeliveries are over
		default:
			r.counted = false
			b.holds[k] = r
			b.onHold(k.handler, false)
			stale++
		}
	}
	b.nholds.Store(int32(len(b.holds)))
	b.sweepArmed = next > 0
	if b.sweepArmed {
		b.sweeper.Reset(max(next, b.staleAfter/4))
	}
	b.mu.Unlock()
	if stale > 0 {
		b.cfg.Logger.Info("Held messages not delivered again no longer count as held (settled by another consumer or above the breaker?)", watermill.LogFields{
			"messages": stale, "not_delivered_for": b.staleAfter.String(),
		})
	}
}

// verdictHolds is how often a transiently failing message is held before
// it may be judged by others' successes. One hold is not enough: right after
// an outage a redelivered message can still meet a stale connection while
// others already get through.
const verdictHolds = 2

// judged reports whether a transient failure is shown to be the message's
// own: it kept failing while its dependencies are up (HealthCheck) or while
// others succeeded, seen either through its holds here or through the
// delayed-retry stages it already went through. why says what decided, or
// why it is held.
func (b *Breaker) judged(msg *message.Message, k holdKey) (own bool, why string) {
	c := b.cb.Counts()
	if b.cfg.failing(c) {
		return false, whyWindowFailing
	}
	if b.cfg.HealthCheck != nil && b.wasHeldKey(k) {
		if err := b.healthCheck(msg); err != nil {
			return false, "health check failing: " + err.Error()
		}
		return true, "it fails while the health check passes"
	}
	if b.othersGotThrough(k) {
		return true, "it keeps failing while other messages succeed"
	}
	if Stage(msg) > 0 && outcomes(c) >= b.cfg.MinRequests {
		return true, "its retry stages are spent while most outcomes in the window succeed"
	}
	if b.cfg.HealthCheck != nil {
		return false, "first failure: the health check judges its next one"
	}
	return false, "waiting for other messages to succeed"
}

// holdWhileUnhealthy holds a message held before again, without running
// it, while the health check fails. Running it would only fail again; and
// the check that judges a failure runs after it, so a failure caused by
// the outage, checked just after the dependencies came back, would pass
// for the message's own and send a healthy message to the DLQ. Only a
// message that failed with the health check passing before and after its
// run is judged its own. Past MaxHoldTime it runs, so a transient failure
// then ends in the DLQ as promised.
func (b *Breaker) holdWhileUnhealthy(msg *message.Message) (bool, error) {
	k, ok := b.keyOf(msg)
	if !ok || b.heldTooLong(k) {
		return false, nil
	}
	err := b.healthCheck(msg)
	if err == nil {
		return false, nil
	}
	deliveryIdle(msg.Context()) // it does not run: the crash-loop guard takes its count back
	return true, b.hold(msg, fmt.Errorf("not run while the health check fails: %w", err), "health check failing: "+err.Error())
}

// healthCheck runs HealthCheck within Backoff.
func (b *Breaker) healthCheck(msg *message.Message) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(msg.Context()), b.cfg.Backoff)
	defer cancel()
	return b.cfg.HealthCheck(ctx)
}

// othersGotThrough reports whether k was held verdictHolds times and
// other messages succeeded since its first hold: then its failures are its
// own, not the environment's. Holding first, instead of trusting a window
// full of successes from before, keeps the first messages of an outage out
// of the DLQ.
func (b *Breaker) othersGotThrough(k holdKey) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	r, ok := b.holds[k]
	return ok && r.holds >= verdictHolds && b.successes.Load() > r.successes
}

// heldTooLong reports whether k was first held more than MaxHoldTime ago.
func (b *Breaker) heldTooLong(k holdKey) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	r, ok := b.holds[k]
	return ok && time.Since(r.first) > b.cfg.MaxHoldTime
}

// decided reports whether a transient failure of k goes to the DLQ
// whatever the window says: it was sent there before (this is a
// redelivery), or it was held longer than MaxHoldTime.
func (b *Breaker) decided(k holdKey) (why string, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch r, held := b.holds[k]; {
	case !held:
		return "", false
	case r.lettered:
		return "sent to the DLQ before: its ack did not reach the broker, or the DLQ refused it", true
	case time.Since(r.first) > b.cfg.MaxHoldTime:
		return "held longer than MaxHoldTime", true
	}
	return "", false
}

// wasHeld reports whether msg is held (in the common case, none is, and it
// takes no lock).
func (b *Breaker) wasHeld(msg *message.Message) bool {
	if b.nholds.Load() == 0 {
		return false
	}
	k, ok := b.keyOf(msg)
	return ok && b.wasHeldKey(k)
}

func (b *Breaker) wasHeldKey(k holdKey) bool {
	if b.nholds.Load() == 0 {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	_, ok := b.holds[k]
	return ok
}
