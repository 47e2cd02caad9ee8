package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/antidote-mq/antidote/idempotency"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/pgstore"
	"github.com/antidote-mq/antidote/poison"
)

// logEntry is one line a recordingLogger got.
type logEntry struct {
	level  string
	msg    string
	err    error
	fields watermill.LogFields
}

// recordingLogger keeps every log line; safe for concurrent use.
type recordingLogger struct {
	mu      sync.Mutex
	entries []logEntry
}

func (l *recordingLogger) add(level, msg string, err error, fields watermill.LogFields) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.entries = append(l.entries, logEntry{level, msg, err, fields.Copy()})
}
func (l *recordingLogger) Error(msg string, err error, f watermill.LogFields) {
	l.add("error", msg, err, f)
}
func (l *recordingLogger) Info(msg string, f watermill.LogFields)  { l.add("info", msg, nil, f) }
func (l *recordingLogger) Debug(msg string, f watermill.LogFields) { l.add("debug", msg, nil, f) }
func (l *recordingLogger) Trace(msg string, f watermill.LogFields) { l.add("trace", msg, nil, f) }
func (l *recordingLogger) With(watermill.LogFields) watermill.LoggerAdapter {
	return l
}

// matching returns the entries whose message contains s.
func (l *recordingLogger) matching(s string) []logEntry {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []logEntry
	for _, e := range l.entries {
		if strings.Contains(e.msg, s) {
			out = append(out, e)
		}
	}
	return out
}

// countingStore wraps a Store and counts calls; failClaim/failComplete make
// the next calls fail.
type countingStore struct {
	idempotency.Store
	claims, completes, releases atomic.Int64
	failClaim                   atomic.Bool
	completeErr                 error
}

func (s *countingStore) Claim(ctx context.Context, key string, lease time.Duration) (idempotency.Claim, error) {
	s.claims.Add(1)
	if s.failClaim.Load() {
		return idempotency.Claim{}, errors.New("store unreachable (simulated)")
	}
	return s.Store.Claim(ctx, key, lease)
}

func (s *countingStore) Complete(ctx context.Context, c idempotency.Claim, result []byte) error {
	s.completes.Add(1)
	if s.completeErr != nil {
		return s.completeErr
	}
	return s.Store.Complete(ctx, c, result)
}

func (s *countingStore) Release(ctx context.Context, c idempotency.Claim) error {
	s.releases.Add(1)
	return s.Store.Release(ctx, c)
}

func memStore(t *testing.T) *countingStore {
	s := idempotency.MustNewMemoryStore(idempotency.MemoryStoreConfig{})
	t.Cleanup(func() { _ = s.Close() })
	return &countingStore{Store: s}
}

func newIdem(t *testing.T, cfg middleware.IdempotencyConfig) *middleware.Idempotency {
	t.Helper()
	m, err := middleware.NewIdempotency(cfg)
	require.NoError(t, err)
	return m
}

// routedContext returns the context values a router gives a handler of
// topic "orders" named "h" (without its cancellation), so DeadLetter can
// dead-letter hand-driven messages.
func routedContext(t *testing.T) context.Context {
	t.Helper()
	pubSub := gochannel.NewGoChannel(gochannel.Config{}, watermill.NopLogger{})
	t.Cleanup(func() { _ = pubSub.Close() })
	r, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	require.NoError(t, err)
	got := make(chan context.Context, 1)
	r.AddConsumerHandler("h", "orders", pubSub, func(msg *message.Message) error {
		got <- context.WithoutCancel(msg.Context())
		return nil
	})
	go func() { _ = r.Run(context.Background()) }()
	t.Cleanup(func() { _ = r.Close() })
	<-r.Running()
	require.NoError(t, pubSub.Publish("orders", message.NewMessage("ctx", nil)))
	select {
	case ctx := <-got:
		return ctx
	case <-time.After(dlWait):
		t.Fatal("no delivery")
		return nil
	}
}

func keyed(uuid, key string) *message.Message {
	m := message.NewMessage(uuid, []byte(`{"user_id":1,"msg":"hi"}`))
	if key != "" {
		m.Metadata.Set(idempotency.MetadataKey, key)
	}
	return m
}

func TestIdempotencyDuplicateIsAckedWithoutRunning(t *testing.T) {
	store := memStore(t)
	var dups []string
	m := newIdem(t, middleware.IdempotencyConfig{Store: store, OnDuplicate: func(_ *message.Message, key string) { dups = append(dups, key) }})
	runs := 0
	h := m.Middleware(func(*message.Message) ([]*message.Message, error) { runs++; return nil, nil })

	_, err := h(keyed("u1", "order-1"))
	require.NoError(t, err)
	_, err = h(keyed("u2", "order-1")) // a re-send: new UUID, same key
	require.NoError(t, err)
	_, err = h(keyed("u1", "")) // no header: the UUID is the key
	require.NoError(t, err)
	_, err = h(keyed("u1", ""))
	require.NoError(t, err)

	assert.Equal(t, 2, runs)
	assert.Equal(t, []string{"order-1", "u1"}, dups)
}

// The message whose first attempt failed is processed by the retry, and
// only then is a later copy a duplicate.
func TestIdempotencyFailedAttemptIsRetriedNotDropped(t *testing.T) {
	store := memStore(t)
	dups := 0
	m := newIdem(t, middleware.IdempotencyConfig{Store: store, OnDuplicate: func(*message.Message, string) { dups++ }})
	retry, err := middleware.NewRetry(middleware.RetryConfig{InitialInterval: time.Millisecond})
	require.NoError(t, err)
	attempts, successes := 0, 0
	h := retry.Middleware(m.Middleware(func(*message.Message) ([]*message.Message, error) {
		attempts++
		if attempts == 1 {
			return nil, poison.Transient(errors.New("database blip"))
		}
		successes++
		return nil, nil
	}))
	_, err = h(keyed("u1", "k"))
	require.NoError(t, err)
	assert.Equal(t, 2, attempts)
	assert.Equal(t, 1, successes)
	assert.EqualValues(t, 1, store.releases.Load(), "the failed attempt released the key")
	assert.Equal(t, 0, dups, "the retry was not taken for a duplicate")

	_, err = h(keyed("u2", "k"))
	require.NoError(t, err)
	assert.Equal(t, 2, attempts, "the completed key does not run again")
	assert.Equal(t, 1, dups)
}

// Two copies at once: the second waits for the first and is then acked as
// a duplicate; the handler runs once.
func TestIdempotencyConcurrentCopiesRunOnce(t *testing.T) {
	store := memStore(t)
	var dups atomic.Int64
	m := newIdem(t, middleware.IdempotencyConfig{Store: store, OnDuplicate: func(*message.Message, string) { dups.Add(1) }})
	var runs atomic.Int64
	inside, release := make(chan struct{}), make(chan struct{})
	h := m.Middleware(func(*message.Message) ([]*message.Message, error) {
		if runs.Add(1) == 1 {
			close(inside)
			<-release
		}
		return nil, nil
	})
	first := make(chan error, 1)
	go func() { _, err := h(keyed("u1", "k")); first <- err }()
	<-inside
	second := make(chan error, 1)
	go func() { _, err := h(keyed("u2", "k")); second <- err }()
	// The second copy is polling the store while the first runs.
	waitFor(t, "the second copy to poll", func() bool { return store.claims.Load() >= 3 })
	close(release)
	require.NoError(t, <-first)
	require.NoError(t, <-second)
	assert.EqualValues(t, 1, runs.Load())
	assert.EqualValues(t, 1, dups.Load())
}

// A key held longer than BusyWait: the message is nacked with a Defer'd
// error, which DeadLetter passes on instead of dead-lettering.
func TestIdempotencyBusyKeyIsNackedNotDeadLettered(t *testing.T) {
	store := memStore(t)
	held, err := store.Claim(context.Background(), "h/k", time.Minute) // another consumer, alive
	require.NoError(t, err)
	require.Equal(t, idempotency.StatusClaimed, held.Status)
	m := newIdem(t, middleware.IdempotencyConfig{Store: store, BusyWait: 100 * time.Millisecond})
	dlq := &dlPublisher{Publisher: gochannel.NewGoChannel(gochannel.Config{}, watermill.NopLogger{})}
	dl, err := middleware.NewDeadLetter(middleware.DeadLetterConfig{Publisher: dlq})
	require.NoError(t, err)
	runs := 0
	h := dl.Middleware(m.Middleware(func(*message.Message) ([]*message.Message, error) { runs++; return nil, nil }))

	msg := keyed("u1", "k")
	msg.SetContext(routedContext(t)) // handler "h": the scope
	_, err = h(msg)
	require.Error(t, err, "nacked")
	assert.ErrorIs(t, err, middleware.ErrKeyInProgress)
	assert.ErrorIs(t, err, poison.ErrDeferred)
	assert.Equal(t, 0, runs)
	assert.Zero(t, dlq.calls.Load(), "not dead-lettered")
	assert.GreaterOrEqual(t, store.claims.Load(), int64(2), "it polled the store during BusyWait instead of nacking at once")
}

// A claim left by a consumer that died is taken over when its lease ends,
// within the same delivery.
func TestIdempotencyTakesOverAnExpiredClaim(t *testing.T) {
	store := memStore(t)
	_, err := store.Claim(context.Background(), "h/k", 150*time.Millisecond) // then the holder died
	require.NoError(t, err)
	m := newIdem(t, middleware.IdempotencyConfig{Store: store, Scope: "h", Lease: 5 * time.Second})
	runs := 0
	h := m.Middleware(func(*message.Message) ([]*message.Message, error) { runs++; return nil, nil })
	_, err = h(keyed("u1", "k"))
	require.NoError(t, err)
	assert.Equal(t, 1, runs)
}

func TestIdempotencyBusyWaitHonoursShutdown(t *testing.T) {
	store := memStore(t)
	_, err := store.Claim(context.Background(), "h/k", time.Minute)
	require.NoError(t, err)
	m := newIdem(t, middleware.IdempotencyConfig{Store: store}) // BusyWait = 30s
	dlq := &dlPublisher{Publisher: gochannel.NewGoChannel(gochannel.Config{}, watermill.NopLogger{})}
	dl, err := middleware.NewDeadLetter(middleware.DeadLetterConfig{Publisher: dlq})
	require.NoError(t, err)
	h := dl.Middleware(m.Middleware(func(*message.Message) ([]*message.Message, error) { return nil, nil }))
	ctx, cancel := context.WithCancel(routedContext(t))
	msg := keyed("u1", "k")
	msg.SetContext(ctx)
	time.AfterFunc(50*time.Millisecond, cancel)
	done := make(chan error, 1)
	go func() { _, err := h(msg); done <- err }()
	select {
	case err := <-done:
		assert.ErrorIs(t, err, context.Canceled, "nacked because of the shutdown")
		assert.Zero(t, dlq.calls.Load())
	case <-time.After(10 * time.Second):
		t.Fatal("the busy wait ignored the cancelled message context")
	}
}

func TestIdempotencyPanicReleasesTheKey(t *testing.T) {
	store := memStore(t)
	m := newIdem(t, middleware.IdempotencyConfig{Store: store, Scope: "h"})
	h := m.Middleware(func(*message.Message) ([]*message.Message, error) { panic("handler bug") })
	assert.Panics(t, func() { _, _ = h(keyed("u1", "k")) })
	c, err := store.Claim(context.Background(), "h/k", time.Second)
	require.NoError(t, err)
	assert.Equal(t, idempotency.StatusClaimed, c.Status, "the redelivery can run at once")
}

func TestIdempotencyKeys(t *testing.T) {
	store := memStore(t)
	runs := 0
	handler := func(*message.Message) ([]*message.Message, error) { runs++; return nil, nil }

	lenient := newIdem(t, middleware.IdempotencyConfig{Store: store, Key: idempotency.FromMetadata("")}).Middleware(handler)
	_, err := lenient(keyed("u1", ""))
	require.NoError(t, err)
	_, err = lenient(keyed("u1", ""))
	require.NoError(t, err)
	assert.Equal(t, 2, runs, "without a key there is nothing to deduplicate on")
	assert.Zero(t, store.claims.Load())

	strict := newIdem(t, middleware.IdempotencyConfig{Store: store, Key: idempotency.FromMetadata(""), RequireKey: true}).Middleware(handler)
	_, err = strict(keyed("u1", ""))
	assert.ErrorIs(t, err, idempotency.ErrNoKey)
	assert.Equal(t, poison.ClassPermanent, poison.DefaultClassifier().Classify(err), "dead-lettered, not retried")

	byField := newIdem(t, middleware.IdempotencyConfig{Store: store, Key: idempotency.FromJSONField("id")}).Middleware(handler)
	_, err = byField(message.NewMessage("u9", []byte(`{"id":`)))
	assert.Error(t, err)
	assert.Equal(t, poison.ClassPermanent, poison.DefaultClassifier().Classify(err))
	assert.Equal(t, 2, runs)

	// Scopes: each handler processes a key once; long keys are hashed.
	long := strings.Repeat("x", 1000)
	for _, scope := range []string{"billing", "email"} {
		h := newIdem(t, middleware.IdempotencyConfig{Store: store, Scope: scope}).Middleware(handler)
		for i := 0; i < 2; i++ {
			_, err := h(keyed(fmt.Sprintf("u%d", i), long))
			require.NoError(t, err)
		}
	}
	assert.Equal(t, 4, runs)
}

func TestIdempotencyReplaysOutputForDuplicates(t *testing.T) {
	store := memStore(t)
	produce := func(*message.Message) ([]*message.Message, error) {
		out := message.NewMessage("out-1", []byte("receipt"))
		out.Metadata.Set("invoice", "inv-9")
		return []*message.Message{out}, nil
	}
	h := newIdem(t, middleware.IdempotencyConfig{Store: store}).Middleware(produce)
	first, err := h(keyed("u1", "k"))
	require.NoError(t, err)
	require.Len(t, first, 1)
	again, err := h(keyed("u2", "k"))
	require.NoError(t, err)
	require.Len(t, again, 1, "the duplicate returns the first run's output, so a crash before the router published it loses nothing")
	assert.Equal(t, "out-1", again[0].UUID)
	assert.Equal(t, []byte("receipt"), []byte(again[0].Payload))
	assert.Equal(t, "inv-9", again[0].Metadata.Get("invoice"))

	quiet := newIdem(t, middleware.IdempotencyConfig{Store: store, Scope: "other", DisableOutputReplay: true}).Middleware(produce)
	_, err = quiet(keyed("u1", "k"))
	require.NoError(t, err)
	again, err = quiet(keyed("u2", "k"))
	require.NoError(t, err)
	assert.Empty(t, again)
}

func TestIdempotencyStoreFailures(t *testing.T) {
	store := memStore(t)
	logs := &recordingLogger{}
	m := newIdem(t, middleware.IdempotencyConfig{Store: store, Logger: logs})
	runs := 0
	h := m.Middleware(func(*message.Message) ([]*message.Message, error) { runs++; return nil, nil })

	store.failClaim.Store(true)
	_, err := h(keyed("u1", "k"))
	require.Error(t, err)
	assert.Equal(t, poison.ClassTransient, poison.DefaultClassifier().Classify(err), "a store outage is retried, not dead-lettered as permanent")
	assert.Equal(t, 0, runs, "nothing runs unguarded")
	store.failClaim.Store(false)

	// A store closed under a running router: nacked, never dead-lettered.
	closed := memStore(t)
	require.NoError(t, closed.Close())
	_, err = newIdem(t, middleware.IdempotencyConfig{Store: closed}).Middleware(func(*message.Message) ([]*message.Message, error) { runs++; return nil, nil })(keyed("u1", "k"))
	assert.ErrorIs(t, err, poison.ErrDeferred)
	assert.ErrorIs(t, err, idempotency.ErrClosed)
	assert.Equal(t, 0, runs)

	// The handler ran, so a failed Complete still acks; a lost claim is
	// logged as a possible double processing.
	store.completeErr = fmt.Errorf("wrapped: %w", idempotency.ErrClaimLost)
	_, err = h(keyed("u2", "k2"))
	require.NoError(t, err)
	assert.Equal(t, 1, runs)
	lost := logs.matching("overran its idempotency lease")
	require.Len(t, lost, 1)
	assert.Equal(t, "k2", lost[0].fields["idempotency_key"])
}

func TestIdempotencyConfigValidation(t *testing.T) {
	_, err := middleware.NewIdempotency(middleware.IdempotencyConfig{})
	assert.ErrorContains(t, err, "IdempotencyConfig.Store")
	store := idempotency.MustNewMemoryStore(idempotency.MemoryStoreConfig{})
	_, err = middleware.NewIdempotency(middleware.IdempotencyConfig{Store: store, Lease: time.Microsecond})
	assert.ErrorContains(t, err, "Lease")
	_, err = middleware.NewIdempotency(middleware.IdempotencyConfig{Store: store, BusyWait: -1})
	assert.ErrorContains(t, err, "BusyWait")
	_, err = middleware.NewIdempotency(middleware.IdempotencyConfig{Store: store, StoreTimeout: -1})
	assert.ErrorContains(t, err, "StoreTimeout")
	_, err = middleware.NewIdempotency(middleware.IdempotencyConfig{Store: store, Transactional: true})
	assert.ErrorContains(t, err, "TxStore")
}

// Transactional mode: the handler's write and the key's completion commit
// together; a failed attempt rolls its write back and the retry runs.
func TestIdempotencyTransactional(t *testing.T) {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testenv.PostgresURL(t))
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	sfx := strings.ToLower(watermill.NewShortUUID())
	table, effects := "antidote_idem_mw_"+sfx, "antidote_idem_mw_effects_"+sfx
	_, err = pool.Exec(ctx, "CREATE TABLE "+effects+" (key TEXT NOT NULL)")
	require.NoError(t, err)
	t.Cleanup(func() {
		_, _ = pool.Exec(context.Background(), "DROP TABLE IF EXISTS "+effects)
		_, _ = pool.Exec(context.Background(), "DROP TABLE IF EXISTS "+table)
	})
	store, err := pgstore.NewIdempotencyStore(ctx, pgstore.IdempotencyStoreConfig{Pool: pool, Table: table})
	require.NoError(t, err)
	t.Cleanup(func() { _ = store.Close() })

	dups := 0
	m := newIdem(t, middleware.IdempotencyConfig{Store: store, Transactional: true, OnDuplicate: func(*message.Message, string) { dups++ }})
	retry, err := middleware.NewRetry(middleware.RetryConfig{InitialInterval: time.Millisecond})
	require.NoError(t, err)
	attempts := 0
	h := retry.Middleware(m.Middleware(func(msg *message.Message) ([]*message.Message, error) {
		attempts++
		tx, ok := pgstore.TxFromContext(msg.Context())
		if !ok {
			return nil, errors.New("no transaction")
		}
		if _, err := tx.Exec(msg.Context(), "INSERT INTO "+effects+" (key) VALUES ($1)", msg.Metadata.Get(idempotency.MetadataKey)); err != nil {
			return nil, err
		}
		if attempts == 1 {
			return nil, poison.Transient(errors.New("failed after the write"))
		}
		return nil, nil
	}))
	_, err = h(keyed("u1", "k"))
	require.NoError(t, err)
	_, err = h(keyed("u2", "k"))
	require.NoError(t, err)

	var n int
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM "+effects+" WHERE key = 'k'").Scan(&n))
	assert.Equal(t, 1, n, "the failed attempt's write was rolled back, the duplicate wrote nothing")
	assert.Equal(t, 2, attempts)
	assert.Equal(t, 1, dups)
}
