package idempotency_test

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/antidote-mq/antidote/idempotency"
	"github.com/antidote-mq/antidote/internal/storetest"
)

// stores opens each kind of store in this package, isolated per test and
// cleaned up afterwards (the shared ones are in pgstore and redisstore).
var stores = []struct {
	name string
	open func(t testing.TB, retention time.Duration) idempotency.Store
}{
	{"memory", func(t testing.TB, retention time.Duration) idempotency.Store {
		s := idempotency.MustNewMemoryStore(idempotency.MemoryStoreConfig{Retention: retention})
		t.Cleanup(func() { _ = s.Close() })
		return s
	}},
}

func TestStores(t *testing.T) {
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) { storetest.IdempotencyStore(t, st.open) })
	}
}

func TestMemoryStoreIsBounded(t *testing.T) {
	// In a synctest bubble: the wait past Retention is fake time.
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		s := idempotency.MustNewMemoryStore(idempotency.MemoryStoreConfig{MaxKeys: 5})
		defer s.Close()
		for i := 0; i < 50; i++ {
			c, err := s.Claim(ctx, string(rune('a'+i%26))+string(rune('a'+i/26)), time.Minute)
			require.NoError(t, err)
			require.NoError(t, s.Complete(ctx, c, nil))
		}
		assert.Equal(t, 5, s.Len())

		// Expired entries are dropped by later calls, without a goroutine.
		s2 := idempotency.MustNewMemoryStore(idempotency.MemoryStoreConfig{Retention: time.Millisecond})
		defer s2.Close()
		for i := 0; i < 4; i++ {
			c, err := s2.Claim(ctx, string(rune('a'+i)), time.Minute)
			require.NoError(t, err)
			require.NoError(t, s2.Complete(ctx, c, nil))
		}
		time.Sleep(5 * time.Millisecond)
		_, err := s2.Claim(ctx, "fresh", time.Minute)
		require.NoError(t, err)
		assert.Equal(t, 1, s2.Len(), "the four expired completions were swept")
	})
}

func TestStoreConfigValidation(t *testing.T) {
	assert.ErrorContains(t, idempotency.MemoryStoreConfig{MaxKeys: -1}.Validate(), "MaxKeys")
	assert.ErrorContains(t, idempotency.MemoryStoreConfig{Retention: -time.Second}.Validate(), "Retention")
	assert.NoError(t, idempotency.MemoryStoreConfig{}.Validate())
}
