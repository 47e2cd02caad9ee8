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
// need NewPostgresStore or NewRedisStore.
type MemoryStore struct {
	cfg MemoryStoreConfig
	now func() time.Time

	// Claim tokens are tokenPrefix (random, made once per store) followed
	// by a per-store sequence number: unique within the store and across
	// stores, without reading crypto/rand for every claim. The store is in
	// process memory, so a token needs no secrecy.
	tokenPrefix string
	tokenSeq    atomic.Uint64

	mu     sync.Mutex
	keys   map[string]*memEntry
	lru    memEntry  // sentinel of the LRU ring: lru.next is the most recently used
	free   *memEntry // entries swept or evicted, reused by the next insert (singly linked by next)
	nfree  int
	closed bool
}

// memFreeMax bounds the entries kept for reuse.
const memFreeMax = 2 * memorySweepPerCall

// memEntry is one key, linked into the store's LRU ring (intrusive, so an
// insert allocates no list element).
type memEntry struct {
	prev, next *memEntry
	key        string
	token      string
	completed  bool
	result     []byte
	expires    time.Time
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
	s := &MemoryStore{cfg: cfg, now: time.Now, keys: map[string]*memEntry{}, tokenPrefix: hex.EncodeToString(b[:]) + "-"}
	s.lru.prev, s.lru.next = &s.lru, &s.lru
	return s, nil
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
	if e, ok := s.keys[key]; ok {
		if now.Before(e.expires) {
			s.moveToFrontLocked(e)
			if e.completed {
				return Claim{Key: key, Status: StatusCompleted, Result: cloneBytes(e.result)}, nil
			}
			return Claim{Key: key, Status: StatusInProgress, LeaseLeft: e.expires.Sub(now)}, nil
		}
		// Expired claim or completion: take it over.
		e.token, e.completed, e.result, e.expires = s.newToken(), false, nil, now.Add(lease)
		s.moveToFrontLocked(e)
		return Claim{Key: key, Status: StatusClaimed, Token: e.token}, nil
	}
	if len(s.keys) >= s.cfg.MaxKeys {
		s.evictLocked()
	}
	e := s.newEntryLocked()
	e.key, e.token, e.expires = key, s.newToken(), now.Add(lease)
	s.pushFrontLocked(e)
	s.keys[key] = e
	return Claim{Key: key, Status: StatusClaimed, Token: e.token}, nil
}

// newEntryLocked returns a zeroed entry, reusing a dropped one if any.
func (s *MemoryStore) newEntryLocked() *memEntry {
	if e := s.free; e != nil {
		s.free, s.nfree = e.next, s.nfree-1
		e.next = nil
		return e
	}
	return &memEntry{}
}

// dropLocked unlinks e, removes its key and keeps e for reuse.
func (s *MemoryStore) dropLocked(e *memEntry) {
	e.prev.next, e.next.prev = e.next, e.prev
	delete(s.keys, e.key)
	if s.nfree >= memFreeMax {
		return
	}
	*e = memEntry{next: s.free}
	s.free = e
	s.nfree++
}

func (s *MemoryStore) pushFrontLocked(e *memEntry) {
	e.prev, e.next = &s.lru, s.lru.next
	s.lru.next.prev = e
	s.lru.next = e
}

func (s *MemoryStore) moveToFrontLocked(e *memEntry) {
	if s.lru.next == e {
		return
	}
	e.prev.next, e.next.prev = e.next, e.prev
	s.pushFrontLocked(e)
}

// backLocked returns the least recently used entry, or nil.
func (s *MemoryStore) backLocked() *memEntry {
	if e := s.lru.prev; e != &s.lru {
		return e
	}
	return nil
}

// sweepLocked drops up to memorySweepPerCall expired entries from the LRU
// end. Entries have different lifetimes (lease vs retention), so this is a
// heuristic; eviction when full guarantees the bound.
func (s *MemoryStore) sweepLocked(now time.Time) {
	for i := 0; i < memorySweepPerCall; i++ {
		e := s.backLocked()
		if e == nil || now.Before(e.expires) {
			return
		}
		s.dropLocked(e)
	}
}

func (s *MemoryStore) evictLocked() {
	if e := s.backLocked(); e != nil {
		s.dropLocked(e)
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
	e, ok := s.keys[c.Key]
	if !ok {
		// Evicted or expired and swept: nobody holds it, so ours stands.
		if len(s.keys) >= s.cfg.MaxKeys {
			s.evictLocked()
		}
		e = s.newEntryLocked()
		e.key, e.token = c.Key, c.Token
		s.pushFrontLocked(e)
		s.keys[c.Key] = e
	}
	if e.token != c.Token {
		return fmt.Errorf("idempotency: complete %q: %w", c.Key, ErrClaimLost)
	}
	e.completed, e.result, e.expires = true, cloneBytes(result), now.Add(s.cfg.Retention)
	s.moveToFrontLocked(e)
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
	if e, ok := s.keys[c.Key]; ok && e.token == c.Token && !e.completed {
		s.dropLocked(e)
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
	s.keys = map[string]*memEntry{}
	s.lru.prev, s.lru.next = &s.lru, &s.lru
	s.free, s.nfree = nil, 0
	return nil
}

func cloneBytes(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append([]byte(nil), b...)
}

var _ Store = (*MemoryStore)(nil)
