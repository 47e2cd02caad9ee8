package middleware

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/idempotency"
	"github.com/antidote-mq/antidote/internal/clock"
	"github.com/antidote-mq/antidote/poison"
)

// Defaults of IdempotencyConfig.
const (
	// DefaultIdempotencyLease is IdempotencyConfig.Lease when zero.
	DefaultIdempotencyLease = 30 * time.Second
	// DefaultIdempotencyStoreTimeout is IdempotencyConfig.StoreTimeout when zero.
	DefaultIdempotencyStoreTimeout = 5 * time.Second
)

// While a key is held elsewhere the store is polled, starting at
// idempotencyPollMin and doubling up to idempotencyPollMax: a duplicate whose
// twin finishes in milliseconds is settled in milliseconds, and a long wait
// costs a few queries per second.
const (
	idempotencyPollMin = 10 * time.Millisecond
	idempotencyPollMax = 250 * time.Millisecond
)

// idempotencyMaxKeyLen: longer keys are stored as their SHA-256, so a key
// taken from a payload field cannot exceed an index's row size.
const idempotencyMaxKeyLen = 200

// ErrKeyInProgress is wrapped by the error Idempotency returns for a message
// whose key another consumer still held after BusyWait. The error is
// poison.Defer'd: the message is nacked and redelivered, never
// dead-lettered.
var ErrKeyInProgress = errors.New("antidote: idempotency key is being processed by another consumer")

// IdempotencyConfig configures NewIdempotency. Only Store is required.
type IdempotencyConfig struct {
	// Store remembers claimed and completed keys. Required: if nil,
	// NewIdempotency fails.
	// idempotency.NewMemoryStore deduplicates within one process only;
	// consumers that share a queue need pgstore.NewIdempotencyStore or
	// redisstore.NewIdempotencyStore.
	Store idempotency.Store
	// Key extracts a message's idempotency key. Default
	// idempotency.DefaultKey(): the Idempotency-Key metadata, else the
	// message UUID.
	Key idempotency.KeyFunc
	// Scope separates the keys of different consumers of the same messages
	// in one store: each scope processes a key once. Default: the handler
	// name (message.HandlerNameFromCtx), so two handlers (e.g. "billing" and
	// "email") each process a message once, and the replicas of one handler
	// share their keys. Set it when handler names are not unique across the
	// applications sharing the store (e.g. the consumer group).
	Scope string
	// Lease is how long a claim holds a key. Default 30s. It must exceed
	// the slowest handler run, Throttle waits below included: a claim that
	// outlives its lease can be taken over by another copy of the message,
	// which is then processed twice (the overrun is logged). Shorter means a
	// consumer that dies mid-handler blocks the key's copies for less time.
	// Not used in Transactional mode.
	Lease time.Duration
	// BusyWait is how long a message whose key another consumer holds
	// waits, polling the store, for that consumer to finish: if it
	// completes, the message is acked as a duplicate; if it fails or its
	// lease ends, this one runs. Still held after BusyWait, the message is
	// nacked with a poison.Defer'd error wrapping ErrKeyInProgress and
	// redelivered later, never dead-lettered. Default: Lease, so a claim
	// left by a consumer that died is taken over within one delivery (no
	// redelivery loop that would reset the crash-loop guard's counts).
	// Shorter gives the subscription back sooner when twins are slow.
	BusyWait time.Duration
	// Transactional runs the handler and the key's completion in one
	// database transaction, for exactly-once effects: Store must be an
	// idempotency.TxStore (pgstore.IdempotencyStore) and the handler must
	// write through pgstore.TxFromContext(msg.Context()). See
	// pgstore.IdempotencyStore.RunTx. Default false.
	Transactional bool
	// RequireKey rejects a message without a key (Key returns
	// idempotency.ErrNoKey) with a permanent error, so it is dead-lettered.
	// Default false: such a message runs without deduplication.
	RequireKey bool
	// DisableOutputReplay stops storing the messages a handler returns. By
	// default they are stored with the completed key and returned again for
	// a duplicate, so the router publishes them again (same UUIDs): if the
	// process died after the key was completed but before the router
	// published the output, the output would otherwise be lost, since the
	// redelivery is skipped as a duplicate. The price: every duplicate
	// republishes the output, and the store holds it for the retention.
	// Disable it when handlers return no messages, or publish them
	// themselves (transactional outbox).
	DisableOutputReplay bool
	// StoreTimeout bounds Complete and Release, which run without the
	// message's cancellation (a key must be settled even during shutdown).
	// Default 5s.
	StoreTimeout time.Duration
	// OnDuplicate, when set, is called for every message acked as a
	// duplicate without running the handler, with its key. For metrics
	// (duplicates skipped); it must not block and may be called
	// concurrently. If nil, nothing is called.
	OnDuplicate func(msg *message.Message, key string)
	// Logger gets store failures, overrun leases and deferred messages.
	// Default watermill.NopLogger.
	Logger watermill.LoggerAdapter
}

func (c *IdempotencyConfig) setDefaults() {
	if c.Key == nil {
		c.Key = idempotency.DefaultKey()
	}
	if c.Lease == 0 {
		c.Lease = DefaultIdempotencyLease
	}
	if c.BusyWait == 0 {
		c.BusyWait = c.Lease
	}
	if c.StoreTimeout == 0 {
		c.StoreTimeout = DefaultIdempotencyStoreTimeout
	}
	if c.Logger == nil {
		c.Logger = watermill.NopLogger{}
	}
}

// Validate reports every invalid field of c, after defaults are applied
// (NewIdempotency applies them first), in field order, joined with
// errors.Join. Store is required; the other zero fields are valid: they
// stand for their defaults.
func (c IdempotencyConfig) Validate() error {
	var errs []error
	if c.Store == nil {
		errs = append(errs, errors.New("antidote: IdempotencyConfig.Store is nil: set it to pgstore.NewIdempotencyStore or redisstore.NewIdempotencyStore (shared by consumers), or idempotency.NewMemoryStore (one process)"))
	}
	if c.Lease < 0 || (c.Lease > 0 && c.Lease < time.Millisecond) {
		errs = append(errs, fmt.Errorf("antidote: IdempotencyConfig.Lease is %s: set it above the slowest handler run (0 picks the default %s)", c.Lease, DefaultIdempotencyLease))
	}
	if c.BusyWait < 0 {
		errs = append(errs, fmt.Errorf("antidote: IdempotencyConfig.BusyWait is %s: set a positive duration (0 picks Lease)", c.BusyWait))
	}
	if _, ok := c.Store.(idempotency.TxStore); c.Transactional && c.Store != nil && !ok {
		errs = append(errs, fmt.Errorf("antidote: IdempotencyConfig.Transactional needs a Store that is an idempotency.TxStore (pgstore.NewIdempotencyStore); %T is not", c.Store))
	}
	if c.StoreTimeout < 0 {
		errs = append(errs, fmt.Errorf("antidote: IdempotencyConfig.StoreTimeout is %s: set a positive duration (0 picks the default %s)", c.StoreTimeout, DefaultIdempotencyStoreTimeout))
	}
	return errors.Join(errs...)
}

// Idempotency processes each idempotency key once: a message whose key was
// completed is acked without running the handler (a duplicate), a key held
// by another consumer is never processed twice at the same time, and a
// handler failure gives the key back, so the retry runs. Build it with
// NewIdempotency.
//
// Unlike Watermill's Deduplicator, which marks a key before the handler
// runs, a failed first attempt is never mistaken for a duplicate: the
// message is not lost. Put it below Retry (docs/design.md: ... Retry →
// Idempotency → Throttle → Recover → handler), so each attempt claims anew,
// and below the flood guard, which must see duplicates to report a flood.
//
// Per message (non-transactional):
//
//  1. Key(msg); no key: run the handler unguarded (or reject, RequireKey).
//  2. Store.Claim(scope/key, Lease).
//     Completed: call OnDuplicate, return the stored output, ack.
//     In progress: poll until it is not (up to BusyWait), else nack.
//     Store error: a transient error (Retry retries it, then DeadLetter).
//  3. Run the handler. Failure (or panic): Store.Release, return the error.
//     Success: Store.Complete with the output, ack. A failed Complete is
//     logged and the message still acked: its effect happened, and a nack
//     would only run it again.
//
// Non-transactional, the effect and the completion are two writes: a
// consumer that dies between them leaves a claim, and the redelivery runs
// the handler again once the lease ends (at-least-once effects; duplicates
// that arrive after the completion are still skipped). Transactional mode
// closes that window for PostgreSQL writes.
type Idempotency struct {
	cfg IdempotencyConfig
	tx  idempotency.TxStore // set in Transactional mode
	// nonBlocking: the store says its calls never wait (NonBlocking), so
	// settling a key needs no timeout (no timer and contexts per message).
	nonBlocking bool
	// memoryStore: the store is an *idempotency.MemoryStore, which reads
	// nothing from a context but its cancellation: it is settled under
	// context.Background(), which has none (no context built per message).
	memoryStore bool
	// scopePrefix caches url.PathEscape(scope)+"/" for the last scope seen
	// (the handler name, when Scope is empty): one handler per middleware
	// instance is the common case.
	scopePrefix atomic.Pointer[scopePrefix]
}

type scopePrefix struct{ scope, prefix string }

// nonBlockingStore is implemented by stores whose calls return without
// waiting on I/O (idempotency.MemoryStore).
type nonBlockingStore interface{ NonBlocking() bool }

// NewIdempotency fills cfg's defaults, validates it (see
// IdempotencyConfig.Validate) and returns the middleware.
func NewIdempotency(cfg IdempotencyConfig) (*Idempotency, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m := &Idempotency{cfg: cfg}
	if nb, ok := cfg.Store.(nonBlockingStore); ok && nb.NonBlocking() {
		m.nonBlocking = true
	}
	_, m.memoryStore = cfg.Store.(*idempotency.MemoryStore)
	if cfg.Transactional {
		m.tx = cfg.Store.(idempotency.TxStore)
	}
	return m, nil
}

// Middleware returns the deduplicating handler; pass it to
// message.Router.AddMiddleware or a handler's AddMiddleware.
func (m *Idempotency) Middleware(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		key, storeKey, err := m.keyOf(msg)
		if err != nil {
			if err == errRunUnguarded {
				return h(msg)
			}
			return nil, err
		}
		if m.tx != nil {
			return m.runTx(msg, h, key, storeKey)
		}
		c, err := m.claim(msg, key, storeKey)
		if err != nil {
			return nil, err
		}
		if c.Status == idempotency.StatusCompleted {
			return m.duplicate(msg, key, c)
		}
		return m.run(msg, h, key, c)
	}
}

// errRunUnguarded: keyOf found no key and none is required.
var errRunUnguarded = errors.New("antidote: run without deduplication")

// keyOf returns msg's key and its store key, errRunUnguarded when it has
// none and none is required, or the permanent error that rejects it.
func (m *Idempotency) keyOf(msg *message.Message) (key, storeKey string, err error) {
	key, err = m.cfg.Key(msg)
	if err == nil && key == "" {
		err = idempotency.ErrNoKey
	}
	if err != nil {
		if errors.Is(err, idempotency.ErrNoKey) && !m.cfg.RequireKey {
			return "", "", errRunUnguarded
		}
		return "", "", poison.Permanent(fmt.Errorf("antidote: idempotency key of message %s: %w", msg.UUID, err))
	}
	return key, m.storeKey(msg, key), nil
}

// claim claims storeKey, waiting while another consumer holds it.
func (m *Idempotency) claim(msg *message.Message, key, storeKey string) (idempotency.Claim, error) {
	return m.whenNotBusy(msg, key, func() (idempotency.Claim, error) {
		return m.cfg.Store.Claim(msg.Context(), storeKey, m.cfg.Lease)
	})
}

// storeKey scopes key and bounds its length. The scope is path-escaped, so
// no scope/key pair can collide with another.
func (m *Idempotency) storeKey(msg *message.Message, key string) string {
	scope := m.cfg.Scope
	if scope == "" {
		scope = message.HandlerNameFromCtx(msg.Context())
	}
	if len(key) > idempotencyMaxKeyLen {
		sum := sha256.Sum256([]byte(key))
		key = "sha256:" + hex.EncodeToString(sum[:])
	}
	p := m.scopePrefix.Load()
	if p == nil || p.scope != scope {
		p = &scopePrefix{scope: scope, prefix: url.PathEscape(scope) + "/"}
		m.scopePrefix.Store(p)
	}
	return p.prefix + key
}

// whenNotBusy calls try until the key is not held by another consumer,
// polling with a growing pause (never past the holder's lease) for at most
// BusyWait. A store error becomes a transient error (a closed store a
// Defer'd one); the message context ending (shutdown, ack deadline) an
// error wrapping the context's error, so Retry stops and DeadLetter nacks.
func (m *Idempotency) whenNotBusy(msg *message.Message, key string, try func() (idempotency.Claim, error)) (idempotency.Claim, error) {
	ctx := msg.Context()
	var deadline time.Time // set when the key is first found busy
	pause := idempotencyPollMin
	for {
		c, err := try()
		if err != nil {
			if ctx.Err() != nil {
				return c, fmt.Errorf("antidote: idempotency store interrupted for message %s: %w (store: %v)", msg.UUID, ctx.Err(), err)
			}
			if errors.Is(err, idempotency.ErrClosed) {
				// Closed under a running router (shutdown order): the message
				// is not at fault, deliver it again later.
				return c, poison.Defer(fmt.Errorf("antidote: idempotency store closed, nacking message %s: %w", msg.UUID, err))
			}
			return c, poison.Transient(fmt.Errorf("antidote: idempotency store failed for key %q of message %s: %w", key, msg.UUID, err))
		}
		if c.Status != idempotency.StatusInProgress {
			return c, nil
		}
		if deadline.IsZero() {
			deadline = time.Now().Add(m.cfg.BusyWait)
		}
		left := time.Until(deadline)
		if left <= 0 {
			m.cfg.Logger.Info("Idempotency key still held by another consumer; nacking the message to be redelivered", traceFields(msg.Context(), watermill.LogFields{
				"message_uuid":    msg.UUID,
				"idempotency_key": key,
				"busy_wait":       m.cfg.BusyWait.String(),
			}))
			return c, poison.Defer(fmt.Errorf("%w: key %q of message %s still held after %s", ErrKeyInProgress, key, msg.UUID, m.cfg.BusyWait))
		}
		d := min(pause, left)
		if c.LeaseLeft > 0 {
			d = min(d, c.LeaseLeft+time.Millisecond)
		}
		if !clock.Sleep(ctx, d) {
			return c, fmt.Errorf("antidote: waiting for idempotency key %q of message %s, held by another consumer: %w", key, msg.UUID, ctx.Err())
		}
		pause = min(2*pause, idempotencyPollMax)
	}
}

// run runs the handler under claim c and settles the key.
func (m *Idempotency) run(msg *message.Message, h message.HandlerFunc, key string, c idempotency.Claim) (produced []*message.Message, err error) {
	returned := false
	defer func() {
		if !returned {
			// A panic is escaping (no Recover below): give the key back so
			// the redelivery runs instead of waiting out the lease.
			m.release(msg, key, c)
		}
	}()
	produced, err = h(msg)
	returned = true
	if err != nil {
		m.release(msg, key, c)
		return produced, err
	}
	m.complete(msg, key, c, produced)
	return produced, nil
}

// complete marks c's key completed with the handler's output (out of run,
// whose frame is on the stack while the handler runs).
func (m *Idempotency) complete(msg *message.Message, key string, c idempotency.Claim, produced []*message.Message) {
	ctx, cancel := m.settleContext(msg)
	defer cancel()
	if cerr := m.cfg.Store.Complete(ctx, c, m.encodeOutput(msg, produced)); cerr != nil {
		msgText := "Idempotency key not marked completed; a later duplicate may run again"
		if errors.Is(cerr, idempotency.ErrClaimLost) {
			msgText = "Handler overran its idempotency lease and another consumer claimed the key: the message may have been processed twice; raise IdempotencyConfig.Lease above the slowest handler"
		}
		m.cfg.Logger.Error(msgText, cerr, traceFields(msg.Context(), watermill.LogFields{
			"message_uuid":    msg.UUID,
			"idempotency_key": key,
			"lease":           m.cfg.Lease.String(),
		}))
	}
}

// runTx runs the handler inside the store's transaction (RunTx).
func (m *Idempotency) runTx(msg *message.Message, h message.HandlerFunc, key, storeKey string) ([]*message.Message, error) {
	var (
		ran            bool
		produced       []*message.Message
		herr, storeErr error
	)
	ctx := msg.Context()
	c, err := m.whenNotBusy(msg, key, func() (idempotency.Claim, error) {
		c, err := m.tx.RunTx(ctx, storeKey, func(txCtx context.Context) ([]byte, error) {
			ran = true
			msg.SetContext(txCtx)
			defer msg.SetContext(ctx)
			produced, herr = h(msg)
			if herr != nil {
				return nil, herr
			}
			return m.encodeOutput(msg, produced), nil
		})
		if ran {
			// The handler ran: stop polling, whatever the outcome.
			storeErr = err
			return idempotency.Claim{Key: storeKey, Status: idempotency.StatusClaimed}, nil
		}
		return c, err
	})
	switch {
	case ran && herr != nil:
		return produced, herr
	case ran && storeErr != nil:
		// Completing or committing failed: the handler's writes were rolled
		// back with it (or, if the commit's outcome is unknown, the retry
		// finds the key completed), so running it again is right.
		return nil, poison.Transient(fmt.Errorf("antidote: transaction for idempotency key %q of message %s failed: %w", key, msg.UUID, storeErr))
	case ran:
		return produced, nil
	case err != nil:
		return nil, err
	}
	return m.duplicate(msg, key, c) // not in progress and not run: completed
}

func (m *Idempotency) duplicate(msg *message.Message, key string, c idempotency.Claim) ([]*message.Message, error) {
	if m.cfg.OnDuplicate != nil {
		m.cfg.OnDuplicate(msg, key)
	}
	m.cfg.Logger.Debug("Duplicate acked without running the handler", traceFields(msg.Context(), watermill.LogFields{
		"message_uuid":    msg.UUID,
		"idempotency_key": key,
	}))
	if m.cfg.DisableOutputReplay || len(c.Result) == 0 {
		return nil, nil
	}
	out, err := decodeOutput(c.Result)
	if err != nil {
		m.cfg.Logger.Error("Stored output of a completed key cannot be decoded; acking the duplicate without it", err, traceFields(msg.Context(), watermill.LogFields{
			"message_uuid":    msg.UUID,
			"idempotency_key": key,
		}))
		return nil, nil
	}
	return out, nil
}

func (m *Idempotency) release(msg *message.Message, key string, c idempotency.Claim) {
	ctx, cancel := m.settleContext(msg)
	defer cancel()
	if err := m.cfg.Store.Release(ctx, c); err != nil {
		m.cfg.Logger.Error("Idempotency key not released after a failure; its retry waits until the lease ends", err, traceFields(msg.Context(), watermill.LogFields{
			"message_uuid":    msg.UUID,
			"idempotency_key": key,
			"lease":           m.cfg.Lease.String(),
		}))
	}
}

// settleContext keeps the message's values but not its cancellation: a key
// must be settled even when the router is shutting down.
// A store that cannot block needs no StoreTimeout.
func (m *Idempotency) settleContext(msg *message.Message) (context.Context, context.CancelFunc) {
	if m.memoryStore {
		return context.Background(), noCancel
	}
	if m.nonBlocking {
		return context.WithoutCancel(msg.Context()), noCancel
	}
	return context.WithTimeout(context.WithoutCancel(msg.Context()), m.cfg.StoreTimeout)
}

func noCancel() {}

// storedMessage is how handler output is kept with a completed key.
type storedMessage struct {
	UUID     string            `json:"uuid"`
	Metadata map[string]string `json:"metadata,omitempty"`
	Payload  []byte            `json:"payload"`
}

func (m *Idempotency) encodeOutput(msg *message.Message, produced []*message.Message) []byte {
	if m.cfg.DisableOutputReplay || len(produced) == 0 {
		return nil
	}
	out := make([]storedMessage, len(produced))
	for i, p := range produced {
		out[i] = storedMessage{UUID: p.UUID, Metadata: p.Metadata, Payload: p.Payload}
	}
	b, err := json.Marshal(out)
	if err != nil { // cannot happen for strings and bytes; be safe anyway
		m.cfg.Logger.Error("Handler output cannot be stored with the idempotency key; a duplicate will not republish it", err, traceFields(msg.Context(), watermill.LogFields{"message_uuid": msg.UUID}))
		return nil
	}
	return b
}

func decodeOutput(b []byte) ([]*message.Message, error) {
	var stored []storedMessage
	if err := json.Unmarshal(b, &stored); err != nil {
		return nil, err
	}
	out := make([]*message.Message, len(stored))
	for i, s := range stored {
		out[i] = message.NewMessage(s.UUID, s.Payload)
		for k, v := range s.Metadata {
			out[i].Metadata.Set(k, v)
		}
	}
	return out, nil
}
