package idempotency

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/antidote-mq/antidote/internal/lru"
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

// Validate reports every invalid field of c, after defaults are applied
// (NewMemoryStore applies them first), in field order, joined with
// errors.Join. Zero values are valid (they select the defaults).
func (c MemoryStoreConfig) Validate() error {
	var errs []error
	if c.MaxKeys < 0 {
		errs = append(errs, fmt.Errorf("idempotency: MemoryStoreConfig.MaxKeys is %d; set it to a positive bound, or 0 for the default %d", c.MaxKeys, DefaultMemoryStoreMaxKeys))
	}
	errs = append(errs, validRetention("MemoryStoreConfig", c.Retention))
	return errors.Join(errs...)
}

// MemoryStore is a Store in process memory: bounded by MaxKeys, entries
// expire lazily (no goroutine), safe for concurrent use. It deduplicates only
// what reaches this process and forgets everything when the process exits, so
// it suits a single consumer, tests and demos; consumers that share a queue
// need pgstore.NewIdempotencyStore or redisstore.NewIdempotencyStore.
type MemoryStore struct {
	cfg MemoryStoreConfig
	now func() time.Time

	// Claim tokens are tokenPrefix (random, made once per store) followed
	// by a per-store sequence number: unique within the store and across
	// stores, without reading crypto/rand for every claim. The store is in
	// process memory, so a token needs no secrecy.
	tokenPrefix string
	tokenSeq    atomic.Uint64

	mu sync.Mutex
	// keys holds at most MaxKeys entries; adding one more evicts the least
	// recently used. Entries are values, so updating one allocates nothing.
	keys   *lru.LRU[string, memEntry]
	closed bool
}

// memEntry is what the store remembers of one key.
type memEntry struct {
	token     string
	completed bool
	result    []byte
	expires   time.Time
}

// NewMemoryStore fills cfg's defaults, validates it (see
// MemoryStoreConfig.Validate) and returns an in-process store.
func NewMemoryStore(cfg MemoryStoreConfig) (*MemoryStore, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	keys := lru.New[string, memEntry](cfg.MaxKeys)
	return &MemoryStore{cfg: cfg, now: time.Now, keys: keys, tokenPrefix: hex.EncodeToString(b[:]) + "-"}, nil
}

// MustNewMemoryStore is NewMemoryStore that panics when cfg is invalid (a
// negative bound is a programming error, like a bad regexp in
// regexp.MustCompile).
func MustNewMemoryStore(cfg MemoryStoreConfig) *MemoryStore {
	s, err := NewMemoryStore(cfg)
	if err != nil {
		panic(err)
	}
	return s
}

// NonBlocking reports true: the store's methods never wait on I/O, so
// middleware.Idempotency settles keys without a timeout context.
func (s *MemoryStore) NonBlocking() bool { return true }

// newToken returns a claim token unique to this store (see tokenPrefix).
func (s *MemoryStore) newToken() string {
	var buf [48]byte
	b := append(buf[:0], s.tokenPrefix...)
	b = strconv.AppendUint(b, s.tokenSeq.Add(1), 36)
	return string(b)
}

// Claim implements Store.
func (s *MemoryStore) Claim(ctx context.Context, key string, lease time.Duration) (Claim, error) {
	if err := ctxErr(ctx, "claim", key); err != nil {
		return Claim{}, err
	}
	if err := CheckLease(lease); err != nil {
		return Claim{}, err
	}
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return Claim{}, fmt.Errorf("idempotency: claim %q: %w", key, ErrClosed)
	}
	s.sweepLocked(now)
	e, found := s.keys.Get(key) // Get makes it the most recently used
	if found && now.Before(e.expires) {
		if e.completed {
			return Claim{Key: key, Status: StatusCompleted, Result: cloneBytes(e.result)}, nil
		}
		return Claim{Key: key, Status: StatusInProgress, LeaseLeft: e.expires.Sub(now)}, nil
	}
	// A new key, or an expired claim or completion taken over. A new key
	// when the store is full evicts the least recently used one.
	e = memEntry{token: s.newToken(), expires: now.Add(lease)}
	if found {
		s.keys.Add(key, e)
	} else {
		s.keys.Insert(key, e)
	}
	return Claim{Key: key, Status: StatusClaimed, Token: e.token}, nil
}

// sweepLocked drops up to memorySweepPerCall expired entries from the LRU
// end. Entries have different lifetimes (lease vs retention), so this is a
// heuristic; eviction when full guarantees the bound.
func (s *MemoryStore) sweepLocked(now time.Time) {
	for i := 0; i < memorySweepPerCall; i++ {
		_, e, ok := s.keys.GetOldest()
		if !ok || now.Before(e.expires) {
			return
		}
		s.keys.RemoveOldest()
	}
}

// Complete implements Store.
func (s *MemoryStore) Complete(ctx context.Context, c Claim, result []byte) error {
	if err := CheckClaimed(c); err != nil {
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
	done := memEntry{token: c.Token, completed: true, result: cloneBytes(result), expires: now.Add(s.cfg.Retention)}
	lost := false
	found := s.keys.Update(c.Key, func(e *memEntry) bool {
		if e.token != c.Token {
			lost = true
			return false // a lost claim stays where it is in the LRU order
		}
		*e = done
		return true // the most recently used
	})
	if lost {
		return fmt.Errorf("idempotency: complete %q: %w", c.Key, ErrClaimLost)
	}
	if !found {
		// Evicted, or expired and swept: nobody holds it, so ours stands
		// (a new key evicts the least recently used one when full).
		s.keys.Insert(c.Key, done)
	}
	return nil
}

// Release implements Store.
func (s *MemoryStore) Release(ctx context.Context, c Claim) error {
	if err := CheckClaimed(c); err != nil {
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
	if e, ok := s.keys.Peek(c.Key); ok && e.token == c.Token && !e.completed {
		s.keys.Remove(c.Key)
	}
	return nil
}

// Len reports how many keys the store holds, expired ones not yet dropped
// included.
func (s *MemoryStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.keys.Len()
}

// Close drops every key. Idempotent.
func (s *MemoryStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	s.keys.Purge()
	return nil
}

func cloneBytes(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append([]byte(nil), b...)
}

var _ Store = (*MemoryStore)(nil)
