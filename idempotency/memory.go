package idempotency

import (
	"container/list"
	"context"
	"fmt"
	"sync"
	"time"
)

// DefaultMemoryStoreMaxKeys bounds a MemoryStore when MaxKeys is zero.
const DefaultMemoryStoreMaxKeys = 100_000

// memorySweepPerCall bounds how many expired entries one Claim removes, so
// the cost of cleaning up is spread over calls instead of a timer goroutine.
const memorySweepPerCall = 4

// MemoryStoreConfig configures NewMemoryStore.
type MemoryStoreConfig struct {
	// MaxKeys bounds the keys held. Default 100,000. When full, expired keys
	// go first, then the least recently used one: a completed key evicted
	// early is processed again if a copy arrives later, and an evicted claim
	// can be claimed by a second copy while the first still runs. Size it
	// above the distinct keys expected within Retention.
	MaxKeys int
	// Retention is how long a completed key is remembered. Default 24h.
	Retention time.Duration
}

func (c *MemoryStoreConfig) setDefaults() {
	if c.MaxKeys == 0 {
		c.MaxKeys = DefaultMemoryStoreMaxKeys
	}
	if c.Retention == 0 {
		c.Retention = DefaultRetention
	}
}

// Validate reports a config that cannot work. Zero values are valid.
func (c MemoryStoreConfig) Validate() error {
	if c.MaxKeys < 0 {
		return fmt.Errorf("idempotency: MemoryStoreConfig.MaxKeys is %d; set it to a positive bound, or 0 for the default %d", c.MaxKeys, DefaultMemoryStoreMaxKeys)
	}
	return validRetention("MemoryStoreConfig", c.Retention)
}

// MemoryStore is a Store in process memory: bounded by MaxKeys, entries
// expire lazily (no goroutine), safe for concurrent use. It deduplicates only
// what reaches this process and forgets everything when the process exits, so
// it suits a single consumer, tests and demos; consumers that share a queue
// need NewPostgresStore or NewRedisStore.
type MemoryStore struct {
	cfg MemoryStoreConfig
	now func() time.Time

	mu     sync.Mutex
	keys   map[string]*list.Element // of *memEntry
	lru    *list.List               // front: most recently used
	closed bool
}

type memEntry struct {
	key       string
	token     string
	completed bool
	result    []byte
	expires   time.Time
}

// NewMemoryStore returns an in-process store. It panics if cfg.Validate
// fails (a negative bound is a programming error); call Validate first to
// handle it as an error.
func NewMemoryStore(cfg MemoryStoreConfig) *MemoryStore {
	if err := cfg.Validate(); err != nil {
		panic(err)
	}
	cfg.setDefaults()
	return &MemoryStore{cfg: cfg, now: time.Now, keys: map[string]*list.Element{}, lru: list.New()}
}

// Claim implements Store.
func (s *MemoryStore) Claim(ctx context.Context, key string, lease time.Duration) (Claim, error) {
	if err := ctxErr(ctx, "claim", key); err != nil {
		return Claim{}, err
	}
	if err := validLease(lease); err != nil {
		return Claim{}, err
	}
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return Claim{}, fmt.Errorf("idempotency: claim %q: %w", key, ErrClosed)
	}
	s.sweepLocked(now)
	if el, ok := s.keys[key]; ok {
		e := el.Value.(*memEntry)
		if now.Before(e.expires) {
			s.lru.MoveToFront(el)
			if e.completed {
				return Claim{Key: key, Status: StatusCompleted, Result: cloneBytes(e.result)}, nil
			}
			return Claim{Key: key, Status: StatusInProgress, LeaseLeft: e.expires.Sub(now)}, nil
		}
		// Expired claim or completion: take it over.
		e.token, e.completed, e.result, e.expires = newToken(), false, nil, now.Add(lease)
		s.lru.MoveToFront(el)
		return Claim{Key: key, Status: StatusClaimed, Token: e.token}, nil
	}
	if len(s.keys) >= s.cfg.MaxKeys {
		s.evictLocked()
	}
	e := &memEntry{key: key, token: newToken(), expires: now.Add(lease)}
	s.keys[key] = s.lru.PushFront(e)
	return Claim{Key: key, Status: StatusClaimed, Token: e.token}, nil
}

// sweepLocked drops up to memorySweepPerCall expired entries from the LRU
// end. Entries have different lifetimes (lease vs retention), so this is a
// heuristic; eviction when full guarantees the bound.
func (s *MemoryStore) sweepLocked(now time.Time) {
	for i := 0; i < memorySweepPerCall; i++ {
		el := s.lru.Back()
		if el == nil {
			return
		}
		e := el.Value.(*memEntry)
		if now.Before(e.expires) {
			return
		}
		s.lru.Remove(el)
		delete(s.keys, e.key)
	}
}

func (s *MemoryStore) evictLocked() {
	if el := s.lru.Back(); el != nil {
		s.lru.Remove(el)
		delete(s.keys, el.Value.(*memEntry).key)
	}
}

// Complete implements Store.
func (s *MemoryStore) Complete(ctx context.Context, c Claim, result []byte) error {
	if err := checkClaimed(c); err != nil {
		return err
	}
	if err := ctxErr(ctx, "complete", c.Key); err != nil {
		return err
	}
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("idempotency: complete %q: %w", c.Key, ErrClosed)
	}
	el, ok := s.keys[c.Key]
	if !ok {
		// Evicted or expired and swept: nobody holds it, so ours stands.
		if len(s.keys) >= s.cfg.MaxKeys {
			s.evictLocked()
		}
		el = s.lru.PushFront(&memEntry{key: c.Key, token: c.Token})
		s.keys[c.Key] = el
	}
	e := el.Value.(*memEntry)
	if e.token != c.Token {
		return fmt.Errorf("idempotency: complete %q: %w", c.Key, ErrClaimLost)
	}
	e.completed, e.result, e.expires = true, cloneBytes(result), now.Add(s.cfg.Retention)
	s.lru.MoveToFront(el)
	return nil
}

// Release implements Store.
func (s *MemoryStore) Release(ctx context.Context, c Claim) error {
	if err := checkClaimed(c); err != nil {
		return err
	}
	if err := ctxErr(ctx, "release", c.Key); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("idempotency: release %q: %w", c.Key, ErrClosed)
	}
	if el, ok := s.keys[c.Key]; ok {
		if e := el.Value.(*memEntry); e.token == c.Token && !e.completed {
			s.lru.Remove(el)
			delete(s.keys, c.Key)
		}
	}
	return nil
}

// Len reports how many keys the store holds, expired ones not yet dropped
// included.
func (s *MemoryStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.keys)
}

// Close drops every key. Idempotent.
func (s *MemoryStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	s.keys = map[string]*list.Element{}
	s.lru.Init()
	return nil
}

func cloneBytes(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append([]byte(nil), b...)
}

var _ Store = (*MemoryStore)(nil)
