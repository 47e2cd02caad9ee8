package poison

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/antidote-mq/antidote/internal/lru"
)

// Defaults of MemoryDeliveryTrackerConfig.
const (
	// DefaultMemoryDeliveryTrackerMaxKeys bounds a MemoryDeliveryTracker.
	DefaultMemoryDeliveryTrackerMaxKeys = 100_000
	// DefaultDeliveryTrackerTTL is how long every tracker keeps a count after
	// its last Incr when the config leaves TTL zero.
	DefaultDeliveryTrackerTTL = 24 * time.Hour
)

// MemoryDeliveryTrackerConfig configures NewMemoryDeliveryTracker.
type MemoryDeliveryTrackerConfig struct {
	// MaxKeys bounds the number of counts held. Default 100_000. When full, a
	// new key first evicts expired counts and then the least recently
	// incremented one, so memory stays bounded at the price of forgetting the
	// oldest unsettled count.
	MaxKeys int
	// TTL is how long a count lives after its last Incr. Default 24h.
	TTL time.Duration
}

func (c *MemoryDeliveryTrackerConfig) setDefaults() {
	if c.MaxKeys == 0 {
		c.MaxKeys = DefaultMemoryDeliveryTrackerMaxKeys
	}
	if c.TTL == 0 {
		c.TTL = DefaultDeliveryTrackerTTL
	}
}

// Validate reports every invalid field of c, after defaults are applied
// (NewMemoryDeliveryTracker applies them first), in field order, joined with
// errors.Join. Zero values are valid (they select the defaults).
func (c MemoryDeliveryTrackerConfig) Validate() error {
	var errs []error
	if c.MaxKeys < 0 {
		errs = append(errs, fmt.Errorf("poison: MemoryDeliveryTrackerConfig.MaxKeys is %d; set it to a positive bound, or 0 for the default %d", c.MaxKeys, DefaultMemoryDeliveryTrackerMaxKeys))
	}
	if c.TTL < 0 {
		errs = append(errs, fmt.Errorf("poison: MemoryDeliveryTrackerConfig.TTL is %s; set it to a positive duration, or 0 for the default %s", c.TTL, DefaultDeliveryTrackerTTL))
	}
	return errors.Join(errs...)
}

// MemoryDeliveryTracker is an in-process DeliveryTracker.
//
// It is NOT durable: its counts die with the process, which is exactly the
// event the crash-loop guard exists for. Use it for tests and demos, or to
// count redeliveries that happen inside one process (a nacked message handed
// back by the broker); in production use pgstore.NewDeliveryTracker or
// redisstore.NewDeliveryTracker. It is safe for concurrent use; memory is
// bounded by MaxKeys.
type MemoryDeliveryTracker struct {
	cfg MemoryDeliveryTrackerConfig
	now func() time.Time

	mu sync.Mutex
	// keys holds at most MaxKeys counts, in the order they were last
	// incremented (Incr is a use, Decr is not).
	keys   *lru.LRU[string, *memDeliveryEntry]
	closed bool
}

type memDeliveryEntry struct {
	count   int
	expires time.Time
}

// NewMemoryDeliveryTracker fills cfg's defaults, validates it (see
// MemoryDeliveryTrackerConfig.Validate) and returns an in-process,
// non-durable tracker (see MemoryDeliveryTracker).
func NewMemoryDeliveryTracker(cfg MemoryDeliveryTrackerConfig) (*MemoryDeliveryTracker, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	keys := lru.New[string, *memDeliveryEntry](cfg.MaxKeys)
	return &MemoryDeliveryTracker{cfg: cfg, now: time.Now, keys: keys}, nil
}

// MustNewMemoryDeliveryTracker is NewMemoryDeliveryTracker that panics when
// cfg is invalid (a negative bound or TTL is a programming error, like a bad
// regexp in regexp.MustCompile).
func MustNewMemoryDeliveryTracker(cfg MemoryDeliveryTrackerConfig) *MemoryDeliveryTracker {
	t, err := NewMemoryDeliveryTracker(cfg)
	if err != nil {
		panic(err)
	}
	return t
}

// Incr counts one more delivery of key and returns the new count. A count
// whose TTL has passed starts again at 1.
func (t *MemoryDeliveryTracker) Incr(ctx context.Context, key string) (int, error) {
	now := t.now()
	if err := t.lock(ctx); err != nil {
		return 0, err
	}
	defer t.mu.Unlock()
	if e, ok := t.keys.Get(key); ok { // Get makes it the most recently incremented
		if !now.Before(e.expires) {
			e.count = 0
		}
		e.count++
		e.expires = now.Add(t.cfg.TTL)
		return e.count, nil
	}
	if t.keys.Len() >= t.cfg.MaxKeys {
		t.evictLocked(now)
	}
	t.keys.Insert(key, &memDeliveryEntry{count: 1, expires: now.Add(t.cfg.TTL)}) // Get missed
	return 1, nil
}

// lock takes mu for an operation under ctx; on a nil error the caller
// holds it. A done ctx or a closed tracker is an error, mu not held.
func (t *MemoryDeliveryTracker) lock(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return ErrDeliveryTrackerClosed
	}
	return nil
}

// evictLocked makes room for one key. Every entry has the same TTL counted
// from its last Incr, so the list's back is both the least recently
// incremented and the first to expire: drop expired entries from the back,
// and if none expired drop the back one.
func (t *MemoryDeliveryTracker) evictLocked(now time.Time) {
	for _, e, ok := t.keys.GetOldest(); ok; _, e, ok = t.keys.GetOldest() {
		if now.Before(e.expires) && t.keys.Len() < t.cfg.MaxKeys {
			return
		}
		expired := !now.Before(e.expires)
		t.keys.RemoveOldest()
		if !expired {
			return // evicted the least recently used live entry; room made
		}
	}
}

// Forget drops key's count.
func (t *MemoryDeliveryTracker) Forget(ctx context.Context, key string) error {
	if err := t.lock(ctx); err != nil {
		return err
	}
	defer t.mu.Unlock()
	t.keys.Remove(key)
	return nil
}

// Count implements DeliveryPeeker.
func (t *MemoryDeliveryTracker) Count(ctx context.Context, key string) (int, error) {
	now := t.now()
	if err := t.lock(ctx); err != nil {
		return 0, err
	}
	defer t.mu.Unlock()
	e, ok := t.keys.Peek(key)
	if !ok || !now.Before(e.expires) {
		return 0, nil
	}
	return e.count, nil
}

// Decr implements DeliveryDecrementer.
func (t *MemoryDeliveryTracker) Decr(ctx context.Context, key string) (int, error) {
	if err := t.lock(ctx); err != nil {
		return 0, err
	}
	defer t.mu.Unlock()
	e, ok := t.keys.Peek(key) // a Decr is no use: the order stays
	if !ok {
		return 0, nil
	}
	if e.count > 0 {
		e.count--
	}
	return e.count, nil
}

// Len reports how many counts the tracker holds, expired ones not yet
// evicted included.
func (t *MemoryDeliveryTracker) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.keys.Len()
}

// Close drops every count. It is idempotent.
func (t *MemoryDeliveryTracker) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closed = true
	t.keys.Purge()
	return nil
}

var (
	_ DeliveryTracker     = (*MemoryDeliveryTracker)(nil)
	_ DeliveryDecrementer = (*MemoryDeliveryTracker)(nil)
)
