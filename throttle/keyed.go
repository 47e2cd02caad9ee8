package throttle

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"golang.org/x/time/rate"

	"github.com/antidote-mq/antidote/internal/lru"
)

// DefaultMaxKeys is the KeyedConfig.MaxKeys used when it is 0.
const DefaultMaxKeys = 10000

// KeyedConfig configures a KeyedLimiter.
type KeyedConfig struct {
	// Rate is each key's sustained rate, in events per second. Required
	// (> 0): if 0, NewKeyedLimiter fails.
	Rate float64

	// Burst is each key's bucket size. Default 1.
	Burst int

	// MaxKeys bounds how many keys have a bucket; the least recently used
	// key's bucket is dropped beyond it. Default 10,000 (roughly 100 bytes
	// each). A key idle for longer than Burst/Rate loses nothing when
	// dropped (its bucket was full again anyway), so MaxKeys only needs to
	// exceed the number of keys active within that time; below that, a
	// dropped key comes back with a full bucket and can briefly exceed Rate.
	MaxKeys int
}

func (c *KeyedConfig) setDefaults() {
	if c.Burst == 0 {
		c.Burst = DefaultBurst
	}
	if c.MaxKeys == 0 {
		c.MaxKeys = DefaultMaxKeys
	}
}

// Validate reports every invalid field of c, after defaults are applied
// (NewKeyedLimiter applies them first), in field order, joined with
// errors.Join. Rate is required; zero Burst and MaxKeys are valid: they
// stand for their defaults.
func (c KeyedConfig) Validate() error {
	var errs []error
	if !(c.Rate > 0) {
		errs = append(errs, fmt.Errorf("throttle: KeyedConfig.Rate is %v: set each key's events per second, greater than 0", c.Rate))
	}
	if c.Burst < 0 {
		errs = append(errs, fmt.Errorf("throttle: KeyedConfig.Burst is %d: set 1 or more (0 picks the default %d)", c.Burst, DefaultBurst))
	}
	if c.MaxKeys < 0 {
		errs = append(errs, fmt.Errorf("throttle: KeyedConfig.MaxKeys is %d: set 1 or more (0 picks the default %d)", c.MaxKeys, DefaultMaxKeys))
	}
	return errors.Join(errs...)
}

// KeyedLimiter holds one token bucket per key, at most MaxKeys of them.
type KeyedLimiter struct {
	cfg KeyedConfig

	mu      sync.Mutex
	buckets *lru.LRU[string, *rate.Limiter] // at most MaxKeys; adding one more drops the least recently used
	evicted uint64
}

// NewKeyedLimiter fills cfg's defaults, validates it (see
// KeyedConfig.Validate) and returns a limiter with no buckets yet.
func NewKeyedLimiter(cfg KeyedConfig) (*KeyedLimiter, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	buckets := lru.New[string, *rate.Limiter](cfg.MaxKeys)
	return &KeyedLimiter{cfg: cfg, buckets: buckets}, nil
}

// Wait blocks until key's bucket has a token or ctx ends (the error then
// wraps ctx.Err()). Keys are independent: a flooding key waits, the others
// do not. The empty key is a key like any other.
func (k *KeyedLimiter) Wait(ctx context.Context, key string) error {
	return waitReservation(ctx, func() *rate.Reservation { return k.reserve(key) })
}

func (k *KeyedLimiter) reserve(key string) *rate.Reservation {
	k.mu.Lock()
	defer k.mu.Unlock()
	lim, ok := k.buckets.Get(key) // Get makes it the most recently used
	if !ok {
		lim = rate.NewLimiter(rate.Limit(k.cfg.Rate), k.cfg.Burst)
		if k.buckets.Insert(key, lim) { // Get missed
			k.evicted++
		}
	}
	// Reserving under the lock keeps the bucket from being evicted and
	// recreated (full) between lookup and reservation.
	return lim.Reserve()
}

// Len is the number of keys that have a bucket (at most MaxKeys).
func (k *KeyedLimiter) Len() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.buckets.Len()
}

// Evicted is how many buckets were dropped to stay within MaxKeys. A count
// that keeps growing means MaxKeys is below the number of active keys.
func (k *KeyedLimiter) Evicted() uint64 {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.evicted
}
