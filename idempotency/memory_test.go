package idempotency_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/antidote-mq/antidote/idempotency"
)

// A full store evicts the least recently used key: a Claim that finds a key
// (in progress or completed) counts as a use, a lost Complete does not.
func TestMemoryStoreEvictsLeastRecentlyUsed(t *testing.T) {
	ctx := context.Background()
	s := idempotency.MustNewMemoryStore(idempotency.MemoryStoreConfig{MaxKeys: 3})
	defer s.Close()
	claim := func(key string) idempotency.Claim {
		t.Helper()
		c, err := s.Claim(ctx, key, time.Minute)
		require.NoError(t, err)
		return c
	}
	a, b := claim("a"), claim("b")
	claim("c")
	require.NoError(t, s.Complete(ctx, a, []byte("A")))
	assert.Equal(t, idempotency.StatusInProgress, claim("b").Status) // order now: c, a, b
	lost := b
	lost.Token = "not-b's-token"
	assert.ErrorIs(t, s.Complete(ctx, lost, nil), idempotency.ErrClaimLost) // no use
	claim("d")                                                              // evicts c
	assert.Equal(t, 3, s.Len())
	assert.Equal(t, idempotency.StatusCompleted, claim("a").Status, "a was used after c")
	assert.Equal(t, idempotency.StatusInProgress, claim("b").Status, "b was used after c")
	assert.Equal(t, idempotency.StatusClaimed, claim("c").Status, "c, the least recently used, was evicted")
}
