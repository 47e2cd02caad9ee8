package middleware

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/poison"
)

// Defaults of CrashLoopGuardConfig.
const (
	// DefaultMaxDeliveries is CrashLoopGuardConfig.MaxDeliveries when zero.
	DefaultMaxDeliveries = 3
	// DefaultOffsetBlock is CrashLoopGuardConfig.OffsetBlock when zero.
	DefaultOffsetBlock = 1000
)

// deliveriesForgetTimeout bounds one best-effort Forget, which runs after the
// handler under a context that ignores the message's cancellation.
const deliveriesForgetTimeout = 5 * time.Second

// ErrCrashLoop is wrapped by the error recorded (poison.KeyError) for a
// message the crash-loop guard quarantined.
var ErrCrashLoop = errors.New("antidote: crash loop")

// CrashLoopGuardConfig configures NewCrashLoopGuard.
type CrashLoopGuardConfig struct {
	// Tracker durably counts deliveries. Required: if nil, NewCrashLoopGuard
	// fails. Use
	// pgstore.NewDeliveryTracker or redisstore.NewDeliveryTracker;
	// poison.NewMemoryDeliveryTracker forgets everything when the process
	// dies, which defeats the purpose outside tests. Consumers sharing one
	// store should share it only within one application: keys hold topic,
	// partition/offset or UUID, handler and ConsumerGroup, nothing more.
	Tracker poison.DeliveryTracker
	// DeadLetter is where quarantined messages go, with reason
	// poison.ReasonCrashLoop. Required: if nil, NewCrashLoopGuard fails;
	// usually the same DeadLetter that is in the stack below the guard.
	DeadLetter *DeadLetter
	// MaxDeliveries is how many unsettled deliveries a message may have.
	// Default 3: the delivery that would be the 4th is dead-lettered without
	// running the handler. A delivery is settled when the handler returns,
	// whatever it returns (errors are the business of Retry and DeadLetter
	// below), so the count only grows for deliveries whose handler never
	// returned: the process died (panic outside the router, os.Exit, OOM
	// kill, a liveness probe killing a hung handler) or a panic escaped every
	// middleware. Lower catches loops sooner; higher tolerates unrelated
	// crashes (a deploy, a node drain) that happen to hit the same message.
	MaxDeliveries int
	// MayBeRedelivery decides which deliveries are counted; the others run
	// without touching the store. It must return true for any delivery that
	// an earlier life of the consumer may already have handed to a handler,
	// or a crash loop on it goes unnoticed. Default (nil): the offset-aware
	// detector described on CrashLoopGuard (Kafka: about one write per
	// OffsetBlock messages; everything else: every delivery is counted).
	// BrokerSaysRedelivered is a cheap choice for AMQP. Mutually exclusive
	// with AlwaysCount.
	MayBeRedelivery func(msg *message.Message) bool
	// AlwaysCount counts every delivery: one Incr and one Forget per
	// message, and exactly MaxDeliveries runs of a crash-looping handler
	// before quarantine (the cheap path may allow one more, see CrashLoopGuard).
	// Default false.
	AlwaysCount bool
	// OffsetBlock is the granularity, in Kafka offsets, of the default
	// detector's durable "block leases". Default 1000. Larger means fewer
	// steady-state writes (one per OffsetBlock messages per partition) but
	// more counted messages after each restart or rebalance (up to
	// OffsetBlock plus the commit lag per partition).
	OffsetBlock int64
	// ConsumerGroup is part of every key, so consumer groups that share a
	// tracker and use the same handler name do not add up each other's
	// deliveries. Default: DeadLetter's ConsumerGroup (under router.New:
	// router.Config.Consumer.Group, else DeadLetter's).
	ConsumerGroup string
	// Logger reports quarantines, store errors (the handler then runs
	// unguarded) and failed Forgets. Default watermill.NopLogger.
	Logger watermill.LoggerAdapter
}

func (c *CrashLoopGuardConfig) setDefaults() {
	if c.MaxDeliveries == 0 {
		c.MaxDeliveries = DefaultMaxDeliveries
	}
	if c.OffsetBlock == 0 {
		c.OffsetBlock = DefaultOffsetBlock
	}
	if c.ConsumerGroup == "" && c.DeadLetter != nil {
		c.ConsumerGroup = c.DeadLetter.cfg.ConsumerGroup
	}
	if c.Logger == nil {
		c.Logger = watermill.NopLogger{}
	}
}

// Validate reports every invalid field of c, after defaults are applied
// (NewCrashLoopGuard applies them first), in field order, joined with
// errors.Join. Tracker and DeadLetter are required; the other zero fields
// are valid: they stand for their defaults.
func (c CrashLoopGuardConfig) Validate() error {
	var errs []error
	if c.Tracker == nil {
		errs = append(errs, errors.New("antidote: CrashLoopGuardConfig.Tracker is nil: set it to a durable poison.DeliveryTracker (pgstore.NewDeliveryTracker or redisstore.NewDeliveryTracker)"))
	}
	if c.DeadLetter == nil {
		errs = append(errs, errors.New("antidote: CrashLoopGuardConfig.DeadLetter is nil: set it to the *DeadLetter (NewDeadLetter) that receives quarantined messages"))
	}
	if c.MaxDeliveries < 0 {
		errs = append(errs, fmt.Errorf("antidote: CrashLoopGuardConfig.MaxDeliveries is %d: set a positive limit (0 picks the default %d)", c.MaxDeliveries, DefaultMaxDeliveries))
	}
	if c.AlwaysCount && c.MayBeRedelivery != nil {
		errs = append(errs, errors.New("antidote: CrashLoopGuardConfig sets both AlwaysCount and MayBeRedelivery: set only one (AlwaysCount counts everything, so MayBeRedelivery would never be asked)"))
	}
	if c.OffsetBlock < 0 {
		errs = append(errs, fmt.Errorf("antidote: CrashLoopGuardConfig.OffsetBlock is %d: set a positive block size (0 picks the default %d)", c.OffsetBlock, DefaultOffsetBlock))
	}
	return errors.Join(errs...)
}

// CrashLoopGuard is the crash-loop guard: it counts deliveries of a message in a
// durable store before the handler runs, and past MaxDeliveries sends the
// message to the DLQ with reason crash_loop WITHOUT running the handler.
// In-memory retry counters cannot do this: a handler that kills the process
// (panic outside the router, os.Exit, OOM) resets them on every restart,
// and the broker hands the same message back forever. Put it outside
// DeadLetter and Retry (docs/design.md, "Middleware order").
//
// Per delivery, when it may be a redelivery (see below):
//
//  1. Incr the durable count of poison.DeliveryKeyOf the message.
//  2. count > MaxDeliveries: DeadLetter.Send the message with
//     poison.Failure{Reason: crash_loop, Attempts: count}. Sent: Forget the
//     count and return (nil, nil), so it is acked. Not sent: return the
//     error, so it is nacked and redelivered; nothing is lost, and the
//     count is kept so the next delivery tries the DLQ again.
//  3. Otherwise run the handler; when it returns, whatever it returns,
//     Forget the count (best effort: a failed Forget is logged and leaves
//     the count to expire by the tracker's TTL; until then later
//     redeliveries of the same key, e.g. after an offset reset, start from
//     the stale count).
//
// If Incr fails (the store is down), the handler runs anyway, unguarded,
// and the error is logged. This chooses availability over quarantine: a
// store outage must not stop a healthy consumer, and a crash loop during it
// goes on only until the store is back. CrashLoopGuard judged "cannot be a
// redelivery" skip all of this and cost no store round trip.
//
// # Which deliveries are counted (the cheap path)
//
// The count must be written before the handler runs: a handler that kills
// the process leaves no chance to write afterwards. Counting every delivery
// is correct but costs two round trips per message (AlwaysCount). Only a
// delivery that an earlier life of the consumer may already have handed to
// a handler can be part of a crash loop, so only those need a write. The
// default detector finds them like this:
//
//   - Metadata says so (BrokerSaysRedelivered): counted.
//   - No Kafka offset (AMQP, PostgreSQL queue, gochannel): every delivery is
//     counted. Correct but not cheap; AMQP users can pass
//     MayBeRedelivery: BrokerSaysRedelivered to count only what the broker
//     flags as redelivered (a crashed consumer's unacked message always
//     is).
//   - Kafka: see below.
//
// A Kafka partition is consumed in order and, after a crash, the group
// resumes at the last committed offset c. A crash loses the commits of the
// last auto-commit interval (sarama: 1s), so the next life replays
// [c, o], o being the offset the dead process crashed on: the crash record
// is among the first deliveries after the restart, but possibly behind
// thousands of replayed ones. "Count the first message of each partition" is
// therefore not enough: with any commit lag the crash record would never be
// counted and the loop would never end. And o itself died with the process.
//
// So every process leaves a durable trace of how far it got before it
// starts handlers there: offsets are grouped in blocks of OffsetBlock, and
// the first time a process reaches a block of a partition it Incr's the
// block's key (a "block lease") before running the handler. The count
// returned tells whether anyone entered the block before. 1: no earlier
// process started any message of this block, so none of them can be a
// redelivery, and the block runs without further writes. More than 1: an
// earlier process (one that crashed, the owner before a rebalance, the
// previous version before a deploy) may have started any message of it, so
// the block is "tainted" and every message in it is counted. The crash
// record lies in a block its process had entered (the lease is written
// before the first handler of the block runs), so after a restart its block
// is tainted and it is counted, however far behind c it is.
//
// Within one process, an offset not greater than the highest already seen
// (a nack, a seek, a partition regained after a rebalance) is counted, and
// any discontinuity (an offset not following the previous one) re-enters
// the block: if its lease moved by more than this process's own Incr,
// another process entered it meanwhile and it becomes tainted. A message
// that directly follows its predecessor in a block this process entered
// cleanly was never started anywhere else, and the predecessor's handler
// returned in this very process (had it crashed, the process would be
// gone), so it needs no write.
//
// Costs and limits of the cheap path:
//
//   - Steady state: one write per OffsetBlock messages per partition.
//   - After each restart or rebalance: every message from the resume point
//     to the end of the tainted block(s), at most OffsetBlock plus the commit
//     lag per partition, costs an Incr and a Forget.
//   - The delivery on which a process first crashes may be uncounted (its
//     block was clean), so a crash-looping message may run MaxDeliveries+1
//     times before quarantine (AlwaysCount: exactly MaxDeliveries). A
//     process that entered the block cleanly before, lost the partition and
//     regains it exactly where it left off may also run it once uncounted;
//     it dies doing so, and its successor counts. A block lease older than
//     the tracker's TTL, or lost by the store, likewise costs one more run.
//   - Concurrent deliveries of one partition (not how watermill-kafka
//     works) and store errors only ever make more deliveries counted.
//   - Subscribers that deliver several messages of a partition at once
//     (adapters with kafka.concurrency above 1) say which partition claim
//     a message belongs to (antidote.WithClaimPosition). Then a block is
//     leased once per claim by whichever of its messages comes first, and
//     the cost stays one write per block per partition in steady state,
//     whatever order the handlers start in.
type CrashLoopGuard struct {
	cfg      CrashLoopGuardConfig
	originOf func(*message.Message) poison.Origin                          // poison.OriginOf; tests replace it
	send     func(context.Context, *message.Message, poison.Failure) error // DeadLetter.Send; tests replace it

	// nonBlocking: the tracker never waits on I/O (the memory tracker), so
	// forget needs no timeout (no timer and contexts per message).
	nonBlocking bool
	// memoryTracker: the tracker is a *poison.MemoryDeliveryTracker, which
	// reads nothing from a context but its cancellation: Forget runs under
	// context.Background() (no context built per message).
	memoryTracker bool

	mu    sync.Mutex
	parts map[deliveriesPartitionID]*deliveriesPartition

	// unforgotten holds the keys whose Forget failed (the store was down)
	// although their handler returned: not a crash. The next delivery of
	// such a key in this process forgets it before counting, so an outage
	// of the store does not add deliveries that never crashed (which, with
	// SIGKILLs during the outage, quarantined healthy messages).
	unforgotten  sync.Map // key -> struct{}
	nUnforgotten atomic.Int64

	// decr is the tracker's DeliveryDecrementer, nil when it has none.
	decr poison.DeliveryDecrementer
	// peek is the tracker's DeliveryPeeker when it has one and a
	// DeliveryDecrementer and is not the memory tracker (whose counts die
	// with the process): then a delivery is counted only once it may run
	// (see runPeeked); nil otherwise.
	peek poison.DeliveryPeeker

	// isolate runs a suspect alone: a delivery counted more than once was
	// in flight when a process died, and with several messages in flight
	// (partitions, kafka.concurrency) the one that killed it cannot be told
	// from the others; each suspect's handler runs with nothing else in
	// flight in this guard (write lock), the others share (read lock). So a
	// killer dies alone, and the innocents in flight at its crash are
	// settled on their next delivery instead of reaching MaxDeliveries with
	// it.
	isolate sync.RWMutex
}

// maxUnforgotten bounds unforgotten; past it, failed Forgets are left to
// the tracker's TTL.
const maxUnforgotten = 10_000

// deliveriesPartitionID names one partition as consumed by one handler.
type deliveriesPartitionID struct {
	group, handler, topic string
	partition             int32
}

// deliveriesPartition is what this process knows about one partition.
type deliveriesPartition struct {
	seen      bool
	maxOffset int64 // highest offset delivered here

	leased     bool  // block/leaseCount/tainted are valid
	block      int64 // block of the last lease taken
	leaseCount int   // count the last lease Incr returned
	tainted    bool  // another process may have started messages of block

	// The claim path (antidote.WithClaimPosition): leases per block of
	// the current claim, and those of the claim before it.
	claim      uint64
	leases     map[int64]*claimLease
	prevLeases map[int64]*claimLease
	topBlock   int64 // highest block leased in this claim
}

// claimLease is a block lease taken in one partition claim; ready is
// closed once the Incr returned (ok false: it failed).
type claimLease struct {
	ready   chan struct{}
	ok      bool
	count   int
	tainted bool
}

// claimLeasesKept bounds the leases kept per claim: a message arrives at
// most the subscriber's window (max(1000, 64 x kafka.concurrency) offsets)
// behind the highest one read; older blocks are forgotten and, should a
// message of one still come, leased again (counted: the safe side).
const claimLeasesKept = 64

// NewCrashLoopGuard fills cfg's defaults, validates it (see
// CrashLoopGuardConfig.Validate) and returns the guard. It keeps a little state per partition
// (the default detector); the tracker stays owned by the caller.
func NewCrashLoopGuard(cfg CrashLoopGuardConfig) (*CrashLoopGuard, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	d := &CrashLoopGuard{
		cfg:      cfg,
		originOf: poison.OriginOf,
		send:     cfg.DeadLetter.Send,
		parts:    make(map[deliveriesPartitionID]*deliveriesPartition),
	}
	d.decr, _ = cfg.Tracker.(poison.DeliveryDecrementer)
	switch t := cfg.Tracker.(type) {
	case *poison.MemoryDeliveryTracker:
		d.nonBlocking, d.memoryTracker = true, true
	case interface{ NonBlocking() bool }:
		d.nonBlocking = t.NonBlocking()
	}
	if p, ok := cfg.Tracker.(poison.DeliveryPeeker); ok && d.decr != nil && !d.memoryTracker {
		d.peek = p
	}
	return d, nil
}

// Middleware returns the guarded handler; pass d.Middleware to
// message.Router.AddMiddleware or AddHandler(...).AddMiddleware.
func (d *CrashLoopGuard) Middleware(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		if d.peek != nil {
			return d.runPeeked(h, msg)
		}
		key, n, counted := d.count(msg)
		if !counted {
			if !d.isolate.TryRLock() {
				d.isolate.RLock()
			}
			defer d.isolate.RUnlock()
			return h(msg)
		}
		return d.runCounted(h, msg, key, n)
	}
}

// runPeeked is Middleware with a tracker that can read a count: it reads
// the delivery's count first, waits (uncounted) for the lock its kind
// needs, a suspect (counted before) the write lock, the others a read
// lock, and only then counts it. So a process that dies while a delivery
// waits, killed by the message running then, does not count against it,
// with no window: counting first and taking the count back while waiting
// left a round trip in which a killer running beside a suspect that had
// just arrived counted against it (the chaos test with kafka.concurrency
// and SIGKILLs found healthy messages quarantined that way). Only where
// the default detector picks the deliveries to count by Kafka offset: it
// counts possible redeliveries alone, so the read costs a round trip on
// those only.
func (d *CrashLoopGuard) runPeeked(h message.HandlerFunc, msg *message.Message) ([]*message.Message, error) {
	key, offset, ok := d.identify(msg)
	if !ok {
		return d.runUnguarded(h, msg)
	}
	ctx := msg.Context()
	d.forgetUnforgotten(ctx, key)
	// Where every delivery is counted (no offsets: see CrashLoopGuard;
	// AlwaysCount) or the caller's detector decides, reading first would
	// add a round trip to each, first deliveries included: count first
	// there, as without a peeker; and when the read fails.
	var prev int
	peeked := offset && !d.cfg.AlwaysCount && d.cfg.MayBeRedelivery == nil
	if peeked {
		var err error
		prev, err = d.peek.Count(ctx, key)
		peeked = err == nil
	}
	if !peeked {
		n, err := d.incr(msg, key)
		if err != nil {
			return d.runUnguarded(h, msg)
		}
		return d.runCounted(h, msg, key, n)
	}
	suspect := prev >= 1
	if suspect {
		d.isolate.Lock()
	} else if !d.isolate.TryRLock() {
		d.isolate.RLock()
	}
	unlock := d.isolate.RUnlock
	if suspect {
		unlock = d.isolate.Unlock
	}
	n, err := d.incr(msg, key)
	if err != nil {
		unlock()
		return d.runUnguarded(h, msg)
	}
	if n > d.cfg.MaxDeliveries {
		unlock()
		return d.quarantine(msg, key, n)
	}
	if !suspect && n > 1 {
		// Counted elsewhere meanwhile (another consumer): a suspect after
		// all, which runs alone.
		unlock()
		return d.runIsolated(h, msg, key, n)
	}
	defer unlock()
	return d.runTracked(h, msg, key)
}

// runUnguarded runs h beside the others, uncounted (the tracker failed).
func (d *CrashLoopGuard) runUnguarded(h message.HandlerFunc, msg *message.Message) ([]*message.Message, error) {
	if !d.isolate.TryRLock() {
		d.isolate.RLock()
	}
	defer d.isolate.RUnlock()
	return h(msg)
}

// runCounted is Middleware's path for a delivery counted n.
func (d *CrashLoopGuard) runCounted(h message.HandlerFunc, msg *message.Message, key string, n int) ([]*message.Message, error) {
	if n > d.cfg.MaxDeliveries {
		return d.quarantine(msg, key, n)
	}
	if n > 1 {
		return d.runIsolated(h, msg, key, n)
	}
	if !d.isolate.TryRLock() {
		// A suspect runs alone: wait uncounted, so a crash while
		// waiting does not count against this message.
		n = d.waitCounted(msg, key, n, d.isolate.RLock)
		if n > d.cfg.MaxDeliveries {
			d.isolate.RUnlock()
			return d.quarantine(msg, key, n)
		}
	}
	defer d.isolate.RUnlock()
	if d.decr != nil && !d.memoryTracker {
		return d.runTracked(h, msg, key)
	}
	produced, herr := h(msg)
	d.forget(msg, key)
	return produced, herr
}

// runIsolated runs a suspect (a delivery counted more than once) with
// nothing else in flight in this guard. Out of Middleware's closure.
func (d *CrashLoopGuard) runIsolated(h message.HandlerFunc, msg *message.Message, key string, n int) ([]*message.Message, error) {
	n = d.waitCounted(msg, key, n, d.isolate.Lock)
	defer d.isolate.Unlock()
	if n > d.cfg.MaxDeliveries {
		return d.quarantine(msg, key, n)
	}
	if d.decr != nil && !d.memoryTracker {
		return d.runTracked(h, msg, key)
	}
	produced, herr := h(msg)
	d.forget(msg, key)
	return produced, herr
}

// waitCounted takes the delivery's count back while lock waits (when the
// tracker can), so a process that dies meanwhile, killed by the message
// that runs alone, does not count against this one; then counts it again
// and returns the count. Without a decrementer it waits counted.
func (d *CrashLoopGuard) waitCounted(msg *message.Message, key string, n int, lock func()) int {
	if d.decr == nil {
		lock()
		return n
	}
	ctx := msg.Context()
	if _, err := d.decr.Decr(ctx, key); err != nil {
		lock()
		return n
	}
	lock()
	again, err := d.cfg.Tracker.Incr(ctx, key)
	if err != nil {
		// Counted once less than it was: the safe side is the count
		// from before.
		return n
	}
	return again
}

// runTracked runs h with the delivery's count in the message context, so
// that Retry (and whatever waits below this guard) can take the count back
// while the handler is not running and count it again before the next
// attempt (see deliveryIdle). A process that dies while the message only
// waits (between retry attempts, or held by the breaker), killed from
// outside or by another message of another partition, then does not count
// against it; one that dies in its handler still does. Not with the memory
// tracker: its counts die with the process anyway. Out of Middleware's
// closure, as the rest of the non-happy path.
func (d *CrashLoopGuard) runTracked(h message.HandlerFunc, msg *message.Message, key string) ([]*message.Message, error) {
	ctx := msg.Context()
	if ds := deliveryStateOf(ctx); ds != nil {
		// Tracing or Metrics above keep a state per delivery already:
		// no allocation on the happy path.
		ds.guard = inFlight{d: d, key: key, busy: true}
		produced, herr := h(msg)
		ds.guard = inFlight{}
		d.forget(msg, key)
		return produced, herr
	}
	msg.SetContext(&inFlightCtx{Context: ctx, st: inFlight{d: d, key: key, busy: true}})
	produced, herr := h(msg)
	msg.SetContext(ctx)
	d.forget(msg, key)
	return produced, herr
}

// inFlightOf returns the counted delivery's state in ctx, or nil.
func inFlightOf(ctx context.Context) *inFlight {
	if ds := deliveryStateOf(ctx); ds != nil {
		if ds.guard.d != nil {
			return &ds.guard
		}
		return nil
	}
	st, _ := ctx.Value(inFlightKey{}).(*inFlight)
	return st
}

// inFlight is a counted delivery's state: busy while its count stands.
// Only the message's own goroutine touches it.
type inFlight struct {
	d    *CrashLoopGuard
	key  string
	busy bool
}

type inFlightKey struct{}

// inFlightCtx carries an inFlight: the state and the context node in one
// allocation (context.WithValue would be a second).
type inFlightCtx struct {
	context.Context
	st inFlight
}

func (c *inFlightCtx) Value(key any) any {
	if _, ok := key.(inFlightKey); ok {
		return &c.st
	}
	return c.Context.Value(key)
}

func (c *inFlightCtx) String() string { return "antidote.inFlightCtx" }

// deliveryIdle takes back the count of the delivery in ctx, if any, while
// its handler is not running (Retry calls it after a failed attempt).
func deliveryIdle(ctx context.Context) {
	st := inFlightOf(ctx)
	if st == nil || !st.busy {
		return
	}
	tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), deliveriesForgetTimeout)
	defer cancel()
	if _, err := st.d.decr.Decr(tctx, st.key); err != nil {
		st.d.cfg.Logger.Error("Crash-loop guard could not take back the count of a waiting delivery", err, traceFields(ctx, watermill.LogFields{"delivery_key": st.key}))
		return // the count stands: busy as before
	}
	st.busy = false
}

// deliveryBusy counts the delivery in ctx again before its handler runs
// (Retry calls it before each further attempt).
func deliveryBusy(ctx context.Context) {
	st := inFlightOf(ctx)
	if st == nil || st.busy {
		return
	}
	if _, err := st.d.cfg.Tracker.Incr(ctx, st.key); err != nil {
		st.d.cfg.Logger.Error("Crash-loop guard cannot count the delivery; running the attempt unguarded", err, traceFields(ctx, watermill.LogFields{"delivery_key": st.key}))
		return
	}
	st.busy = true
}

// count counts this delivery of msg when it may be a redelivery, returning
// its tracker key and count; counted is false when the message runs
// unguarded (not counted, no identity, or the tracker failed). Out of
// Middleware's closure, so the frame kept on the stack while the handler
// runs is small.
func (d *CrashLoopGuard) count(msg *message.Message) (key string, n int, counted bool) {
	key, _, ok := d.identify(msg)
	if !ok {
		return "", 0, false
	}
	d.forgetUnforgotten(msg.Context(), key)
	n, err := d.incr(msg, key)
	if err != nil {
		return "", 0, false
	}
	return key, n, true
}

// identify returns the delivery's key, whether it has a Kafka offset, and
// whether it is to be counted at all (count's first part).
func (d *CrashLoopGuard) identify(msg *message.Message) (key string, offset, ok bool) {
	o := d.originOf(msg)
	if o.ConsumerGroup == "" {
		o.ConsumerGroup = d.cfg.ConsumerGroup
	}
	// Without an offset or a UUID a message has no identity that survives
	// a redelivery; counting it under a shared key would quarantine
	// unrelated healthy messages. It runs unguarded.
	if !o.HasOffset && msg.UUID == "" {
		return "", false, false
	}
	if !d.mayBeRedelivery(msg.Context(), msg, o) {
		return "", false, false
	}
	return poison.DeliveryKeyOf(o, msg.UUID), o.HasOffset, true
}

// forgetUnforgotten forgets key first if its last Forget failed.
func (d *CrashLoopGuard) forgetUnforgotten(ctx context.Context, key string) {
	if d.nUnforgotten.Load() > 0 {
		if _, ok := d.unforgotten.Load(key); ok && d.cfg.Tracker.Forget(ctx, key) == nil {
			d.unforgotten.Delete(key)
			d.nUnforgotten.Add(-1)
		}
	}
}

// incr counts the delivery, logging a failure (the handler then runs
// unguarded).
func (d *CrashLoopGuard) incr(msg *message.Message, key string) (int, error) {
	n, err := d.cfg.Tracker.Incr(msg.Context(), key)
	if err != nil {
		d.cfg.Logger.Error("Crash-loop guard cannot count the delivery; running the handler unguarded", err, traceFields(msg.Context(), watermill.LogFields{
			"message_uuid": msg.UUID,
			"delivery_key": key,
		}))
	}
	return n, err
}

func (d *CrashLoopGuard) quarantine(msg *message.Message, key string, n int) ([]*message.Message, error) {
	f := poison.Failure{
		Reason: poison.ReasonCrashLoop,
		Err: fmt.Errorf("%w: delivered %d times without being settled; the handler likely crashes the process (limit MaxDeliveries=%d)",
			ErrCrashLoop, n, d.cfg.MaxDeliveries),
		Attempts: n,
	}
	// Not msg.Context(): a message whose context is already cancelled can
	// still be quarantined (Send bounds the publish itself).
	if err := d.send(context.WithoutCancel(msg.Context()), msg, f); err != nil {
		d.cfg.Logger.Error("Crash-loop guard could not quarantine the message; nacking it", err, traceFields(msg.Context(), watermill.LogFields{
			"message_uuid": msg.UUID,
			"delivery_key": key,
			"deliveries":   n,
		}))
		return nil, fmt.Errorf("antidote: message %s delivered %d times (limit %d) but not quarantined, nacking it: %w",
			msg.UUID, n, d.cfg.MaxDeliveries, err)
	}
	d.cfg.Logger.Info("Crash-loop guard quarantined the message without running the handler", traceFields(msg.Context(), watermill.LogFields{
		"message_uuid": msg.UUID,
		"delivery_key": key,
		"deliveries":   n,
	}))
	d.forget(msg, key)
	return nil, nil
}

func (d *CrashLoopGuard) forget(msg *message.Message, key string) {
	var ctx context.Context
	switch {
	case d.memoryTracker:
		ctx = context.Background()
	default:
		ctx = context.WithoutCancel(msg.Context())
	}
	if !d.nonBlocking {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, deliveriesForgetTimeout)
		defer cancel()
	}
	if err := d.cfg.Tracker.Forget(ctx, key); err != nil {
		if d.nUnforgotten.Load() < maxUnforgotten {
			if _, loaded := d.unforgotten.LoadOrStore(key, struct{}{}); !loaded {
				d.nUnforgotten.Add(1)
			}
		}
		d.cfg.Logger.Error("Crash-loop guard could not forget a settled delivery; it forgets it at the next delivery, else its count expires by TTL", err, traceFields(msg.Context(), watermill.LogFields{
			"message_uuid": msg.UUID,
			"delivery_key": key,
		}))
	}
}

func (d *CrashLoopGuard) mayBeRedelivery(ctx context.Context, msg *message.Message, o poison.Origin) bool {
	switch {
	case d.cfg.AlwaysCount:
		return true
	case d.cfg.MayBeRedelivery != nil:
		return d.cfg.MayBeRedelivery(msg)
	case !o.HasOffset:
		return true
	}
	// Evaluate the offset detector even when metadata already says
	// "redelivered", so its per-partition state stays current.
	byOffset := d.offsetMayBeRedelivery(ctx, o)
	return byOffset || BrokerSaysRedelivered(msg)
}

// offsetMayBeRedelivery is the Kafka part of the default detector (see
// CrashLoopGuard).
func (d *CrashLoopGuard) offsetMayBeRedelivery(ctx context.Context, o poison.Origin) bool {
	if claim, redelivered, ok := antidote.ClaimFromCtx(ctx); ok {
		return d.claimMayBeRedelivery(ctx, o, claim, redelivered)
	}
	id := deliveriesPartitionID{group: o.ConsumerGroup, handler: o.Handler, topic: o.Topic, partition: o.Partition}
	block := o.Offset / d.cfg.OffsetBlock

	d.mu.Lock()
	p := d.parts[id]
	if p == nil {
		p = &deliveriesPartition{}
		d.parts[id] = p
	}
	redelivered := p.seen && o.Offset <= p.maxOffset
	follows := p.seen && o.Offset == p.maxOffset+1
	if !p.seen || o.Offset > p.maxOffset {
		p.maxOffset = o.Offset
	}
	p.seen = true
	if follows && p.leased && p.block == block {
		tainted := p.tainted
		d.mu.Unlock()
		return tainted
	}
	// First message of the partition, a new block, or a discontinuity:
	// (re)take the block lease before any handler of it runs.
	sameBlock := p.leased && p.block == block
	prevCount, prevTainted := p.leaseCount, p.tainted
	p.leased = false // concurrent deliveries re-enter too: safe side
	d.mu.Unlock()

	n, err := d.cfg.Tracker.Incr(ctx, deliveriesBlockKey(o, block))
	if err != nil {
		d.cfg.Logger.Error("Crash-loop guard cannot take the offset block lease; counting the delivery", err, traceFields(ctx, watermill.LogFields{
			"topic":     o.Topic,
			"partition": o.Partition,
			"offset":    o.Offset,
		}))
		return true
	}
	tainted := n > 1
	if sameBlock {
		// We hold the lease already: only a jump beyond our own Incr means
		// someone else entered the block since.
		tainted = prevTainted || n != prevCount+1
	}

	d.mu.Lock()
	p.leased, p.block, p.leaseCount, p.tainted = true, block, n, tainted
	d.mu.Unlock()
	return tainted || redelivered
}

// claimMayBeRedelivery is offsetMayBeRedelivery for subscribers that hand
// out several messages of a partition at once (antidote.WithClaimPosition):
// their handlers start out of offset order, so "follows its predecessor"
// says nothing. What the cheap path needs is that nobody else started a
// message of the block since this process leased it, and within one claim
// nobody else has the partition. So each block is leased once per claim,
// by its first message (the others of the block wait for that Incr), and
// every first delivery of the block in the claim inherits the answer. A
// new claim leases again: a count one above this process's own lease of
// the claim before means nobody else entered the block meanwhile. A resend
// after a nack (redelivered) is counted, as with in-order subscribers.
func (d *CrashLoopGuard) claimMayBeRedelivery(ctx context.Context, o poison.Origin, claim uint64, redelivered bool) bool {
	id := deliveriesPartitionID{group: o.ConsumerGroup, handler: o.Handler, topic: o.Topic, partition: o.Partition}
	block := o.Offset / d.cfg.OffsetBlock

	d.mu.Lock()
	p := d.parts[id]
	if p == nil {
		p = &deliveriesPartition{}
		d.parts[id] = p
	}
	if p.claim != claim || p.leases == nil {
		p.claim, p.prevLeases, p.leases, p.topBlock = claim, p.leases, make(map[int64]*claimLease), block
	}
	if l := p.leases[block]; l != nil {
		d.mu.Unlock()
		<-l.ready
		return !l.ok || l.tainted || redelivered
	}
	l := &claimLease{ready: make(chan struct{})}
	p.leases[block] = l
	if block > p.topBlock {
		p.topBlock = block
		for b := range p.leases {
			if b <= block-claimLeasesKept {
				delete(p.leases, b)
			}
		}
	}
	prev := p.prevLeases[block]
	d.mu.Unlock()

	n, err := d.cfg.Tracker.Incr(ctx, deliveriesBlockKey(o, block))
	if err != nil {
		d.cfg.Logger.Error("Crash-loop guard cannot take the offset block lease; counting the delivery", err, traceFields(ctx, watermill.LogFields{
			"topic":     o.Topic,
			"partition": o.Partition,
			"offset":    o.Offset,
		}))
		d.mu.Lock()
		if p.leases[block] == l {
			delete(p.leases, block) // the next message of the block tries again
		}
		d.mu.Unlock()
		close(l.ready)
		return true
	}
	tainted := n > 1
	if prev != nil && prev.ok {
		tainted = prev.tainted || n != prev.count+1
	}
	l.ok, l.count, l.tainted = true, n, tainted
	close(l.ready)
	return tainted || redelivered
}

// deliveriesBlockKey is the tracker key of a block lease. It cannot collide
// with poison.DeliveryKeyOf keys, which start with "kafka/" or "uuid/".
func deliveriesBlockKey(o poison.Origin, block int64) string {
	var b strings.Builder
	b.WriteString("kafka-block/")
	b.WriteString(url.PathEscape(o.Topic))
	b.WriteByte('/')
	b.WriteString(strconv.FormatInt(int64(o.Partition), 10))
	b.WriteByte('/')
	b.WriteString(strconv.FormatInt(block, 10))
	b.WriteByte('/')
	b.WriteString(url.PathEscape(o.ConsumerGroup))
	b.WriteByte('/')
	b.WriteString(url.PathEscape(o.Handler))
	return b.String()
}

// Metadata that brokers' Watermill subscribers set on redeliveries.
const (
	// deliveriesAMQPRedelivered is watermill-amqp's MetadataRedeliveredKey
	// (not imported, to keep AMQP out of this package's dependencies).
	deliveriesAMQPRedelivered = "_watermill_amqp_redelivered"
	// deliveriesCountHeader is RabbitMQ's quorum-queue delivery counter.
	deliveriesCountHeader = "x-delivery-count"
)

// BrokerSaysRedelivered reports whether msg's metadata says the broker has
// delivered it before: watermill-amqp's "_watermill_amqp_redelivered" is
// "true" (AMQP's redelivered flag, which RabbitMQ sets on every message it
// requeues, including those a dead consumer never acked), or an
// "x-delivery-count" header is above 0 (RabbitMQ quorum queues; needs a
// marshaler that keeps non-string headers).
//
// The default detector counts such deliveries. As CrashLoopGuardConfig.
// MayBeRedelivery it makes AMQP consumers cheap: first deliveries cost no
// write, and a crash loop is caught from the first redelivery on (so the
// handler may run MaxDeliveries+1 times before quarantine). Do not use it
// with brokers that set neither key: it would count nothing.
func BrokerSaysRedelivered(msg *message.Message) bool {
	if msg.Metadata.Get(deliveriesAMQPRedelivered) == "true" {
		return true
	}
	if v := msg.Metadata.Get(deliveriesCountHeader); v != "" {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil && n > 0 {
			return true
		}
	}
	return false
}
