package poison

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// memTrackerAt returns a tracker whose clock the test moves.
func memTrackerAt(cfg MemoryDeliveryTrackerConfig) (*MemoryDeliveryTracker, func(time.Duration)) {
	tr := MustNewMemoryDeliveryTracker(cfg)
	var mu sync.Mutex
	now := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	tr.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	return tr, func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
}

func memIncr(t *testing.T, tr DeliveryTracker, key string) int {
	t.Helper()
	n, err := tr.Incr(context.Background(), key)
	require.NoError(t, err)
	return n
}

func TestMemoryDeliveryTrackerDefaults(t *testing.T) {
	tr := MustNewMemoryDeliveryTracker(MemoryDeliveryTrackerConfig{})
	assert.Equal(t, 100_000, tr.cfg.MaxKeys)
	assert.Equal(t, 24*time.Hour, tr.cfg.TTL)
}

func TestMemoryDeliveryTrackerExpires(t *testing.T) {
	tr, advance := memTrackerAt(MemoryDeliveryTrackerConfig{TTL: time.Minute})
	assert.Equal(t, 1, memIncr(t, tr, "a"))
	advance(59 * time.Second)
	assert.Equal(t, 2, memIncr(t, tr, "a"), "every Incr refreshes the TTL")
	advance(59 * time.Second)
	assert.Equal(t, 3, memIncr(t, tr, "a"))
	advance(time.Minute)
	assert.Equal(t, 1, memIncr(t, tr, "a"), "a count past its TTL starts again")
}

func TestMemoryDeliveryTrackerBounded(t *testing.T) {
	tr, advance := memTrackerAt(MemoryDeliveryTrackerConfig{MaxKeys: 3, TTL: time.Minute})
	memIncr(t, tr, "a")
	memIncr(t, tr, "b")
	memIncr(t, tr, "c")
	memIncr(t, tr, "a") // a is now the most recently incremented
	memIncr(t, tr, "d") // full: evicts the least recently incremented, b
	assert.Equal(t, 3, tr.Len())
	assert.Equal(t, 3, memIncr(t, tr, "a"), "a survived")
	assert.Equal(t, 1, memIncr(t, tr, "b"), "b was evicted") // evicts c
	assert.Equal(t, 3, tr.Len())

	// Expired entries go first, all of them at once.
	advance(2 * time.Minute)
	memIncr(t, tr, "x")
	assert.Equal(t, 1, tr.Len(), "every expired entry was dropped to make room")
}

func TestMemoryDeliveryTrackerConcurrentBounded(t *testing.T) {
	tr := MustNewMemoryDeliveryTracker(MemoryDeliveryTrackerConfig{MaxKeys: 100})
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			for i := 0; i < 2000; i++ {
				key := fmt.Sprintf("k%d", (i*7+w)%500)
				if _, err := tr.Incr(ctx, key); err != nil {
					t.Error(err)
					return
				}
				if i%3 == 0 {
					if err := tr.Forget(ctx, key); err != nil {
						t.Error(err)
						return
					}
				}
				if l := tr.Len(); l > 100 {
					t.Errorf("tracker holds %d keys, bound is 100", l)
					return
				}
			}
		}()
	}
	wg.Wait()
	assert.LessOrEqual(t, tr.Len(), 100)
	keys := tr.keys.Keys()
	assert.Len(t, keys, tr.keys.Len(), "list and map agree")
	for _, k := range keys {
		assert.True(t, tr.keys.Contains(k), "list and map agree on %q", k)
	}
}

func TestMemoryDeliveryTrackerHonoursContext(t *testing.T) {
	tr := MustNewMemoryDeliveryTracker(MemoryDeliveryTrackerConfig{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := tr.Incr(ctx, "a")
	assert.ErrorIs(t, err, context.Canceled)
	assert.ErrorIs(t, tr.Forget(ctx, "a"), context.Canceled)
}
