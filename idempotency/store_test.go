package idempotency_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/antidote-mq/antidote/idempotency"
	"github.com/antidote-mq/antidote/internal/testenv"
)

func suffix(t testing.TB) string {
	t.Helper()
	b := make([]byte, 6)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return hex.EncodeToString(b)
}

// stores opens each kind of store, isolated per test (own table or key
// prefix) and cleaned up afterwards. The shared ones skip (or fail in CI)
// without a server.
var stores = []struct {
	name string
	open func(t testing.TB, retention time.Duration) idempotency.Store
}{
	{"memory", func(t testing.TB, retention time.Duration) idempotency.Store {
		s := idempotency.MustNewMemoryStore(idempotency.MemoryStoreConfig{Retention: retention})
		t.Cleanup(func() { _ = s.Close() })
		return s
	}},
	{"postgres", func(t testing.TB, retention time.Duration) idempotency.Store {
		return openPostgresStore(t, idempotency.PostgresStoreConfig{Retention: retention})
	}},
	{"redis", func(t testing.TB, retention time.Duration) idempotency.Store {
		client := redis.NewClient(&redis.Options{Addr: testenv.RedisAddr(t)})
		prefix := "antidote:test:idem:" + suffix(t) + ":"
		s, err := idempotency.NewRedisStore(idempotency.RedisStoreConfig{Client: client, Prefix: prefix, Retention: retention})
		require.NoError(t, err)
		t.Cleanup(func() {
			_ = s.Close()
			ctx := context.Background()
			if keys, err := client.Keys(ctx, prefix+"*").Result(); err == nil && len(keys) > 0 {
				_ = client.Del(ctx, keys...).Err()
			}
			_ = client.Close()
		})
		return s
	}},
}

// openPostgresStore opens a store on its own table, dropped after the test.
// cfg.Pool and cfg.Table are filled in.
func openPostgresStore(t testing.TB, cfg idempotency.PostgresStoreConfig) *idempotency.PostgresStore {
	t.Helper()
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testenv.PostgresURL(t))
	require.NoError(t, err)
	cfg.Pool = pool
	cfg.Table = "antidote_idem_test_" + suffix(t)
	s, err := idempotency.NewPostgresStore(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = s.Close()
		_, _ = pool.Exec(context.Background(), "DROP TABLE IF EXISTS "+cfg.Table)
		pool.Close()
	})
	return s
}

func TestStores(t *testing.T) {
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) { storeSuite(t, st.open) })
	}
}

// storeSuite is the behaviour every Store must have.
func storeSuite(t *testing.T, open func(testing.TB, time.Duration) idempotency.Store) {
	ctx := context.Background()
	const lease = 5 * time.Second

	t.Run("claim, complete, duplicate", func(t *testing.T) {
		s := open(t, 0)
		c, err := s.Claim(ctx, "k1", lease)
		require.NoError(t, err)
		assert.Equal(t, idempotency.StatusClaimed, c.Status)
		assert.NotEmpty(t, c.Token)

		busy, err := s.Claim(ctx, "k1", lease)
		require.NoError(t, err)
		assert.Equal(t, idempotency.StatusInProgress, busy.Status, "a live claim is not handed out twice")
		assert.Empty(t, busy.Token)
		assert.Greater(t, busy.LeaseLeft, time.Duration(0))
		assert.LessOrEqual(t, busy.LeaseLeft, lease)

		require.NoError(t, s.Complete(ctx, c, []byte("output\x00bytes")))
		require.NoError(t, s.Complete(ctx, c, []byte("output\x00bytes")), "completing the same claim twice is fine")
		dup, err := s.Claim(ctx, "k1", lease)
		require.NoError(t, err)
		assert.Equal(t, idempotency.StatusCompleted, dup.Status)
		assert.Equal(t, []byte("output\x00bytes"), dup.Result, "the stored result comes back byte for byte")

		other, err := s.Claim(ctx, "k2", lease)
		require.NoError(t, err)
		assert.Equal(t, idempotency.StatusClaimed, other.Status, "keys are independent")
		require.NoError(t, s.Complete(ctx, other, nil))
		dup, err = s.Claim(ctx, "k2", lease)
		require.NoError(t, err)
		assert.Equal(t, idempotency.StatusCompleted, dup.Status)
		assert.Empty(t, dup.Result)
	})

	t.Run("release gives the key back for the retry", func(t *testing.T) {
		s := open(t, 0)
		first, err := s.Claim(ctx, "k", lease)
		require.NoError(t, err)
		require.NoError(t, s.Release(ctx, first))
		retry, err := s.Claim(ctx, "k", lease)
		require.NoError(t, err)
		assert.Equal(t, idempotency.StatusClaimed, retry.Status, "a failed attempt is not a duplicate")
		assert.NotEqual(t, first.Token, retry.Token)

		// The first holder's stale release must not free the retry's claim.
		require.NoError(t, s.Release(ctx, first))
		busy, err := s.Claim(ctx, "k", lease)
		require.NoError(t, err)
		assert.Equal(t, idempotency.StatusInProgress, busy.Status)
		// Nor can a release undo a completion.
		require.NoError(t, s.Complete(ctx, retry, nil))
		require.NoError(t, s.Release(ctx, retry))
		dup, err := s.Claim(ctx, "k", lease)
		require.NoError(t, err)
		assert.Equal(t, idempotency.StatusCompleted, dup.Status)
	})

	t.Run("expired lease is taken over and the overrunner loses", func(t *testing.T) {
		s := open(t, 0)
		slow, err := s.Claim(ctx, "k", 50*time.Millisecond)
		require.NoError(t, err)
		time.Sleep(150 * time.Millisecond)
		takeover, err := s.Claim(ctx, "k", lease)
		require.NoError(t, err)
		require.Equal(t, idempotency.StatusClaimed, takeover.Status, "a claim past its lease counts as absent")
		assert.ErrorIs(t, s.Complete(ctx, slow, nil), idempotency.ErrClaimLost)
		require.NoError(t, s.Release(ctx, slow))
		busy, err := s.Claim(ctx, "k", lease)
		require.NoError(t, err)
		assert.Equal(t, idempotency.StatusInProgress, busy.Status, "the overrunner's release leaves the new claim alone")
		require.NoError(t, s.Complete(ctx, takeover, nil))
	})

	t.Run("complete past the lease while nobody took over", func(t *testing.T) {
		s := open(t, 0)
		c, err := s.Claim(ctx, "k", 50*time.Millisecond)
		require.NoError(t, err)
		time.Sleep(150 * time.Millisecond)
		require.NoError(t, s.Complete(ctx, c, nil))
		dup, err := s.Claim(ctx, "k", lease)
		require.NoError(t, err)
		assert.Equal(t, idempotency.StatusCompleted, dup.Status)
	})

	t.Run("retention ends", func(t *testing.T) {
		s := open(t, 100*time.Millisecond)
		c, err := s.Claim(ctx, "k", lease)
		require.NoError(t, err)
		require.NoError(t, s.Complete(ctx, c, nil))
		dup, err := s.Claim(ctx, "k", lease)
		require.NoError(t, err)
		assert.Equal(t, idempotency.StatusCompleted, dup.Status)
		time.Sleep(250 * time.Millisecond)
		again, err := s.Claim(ctx, "k", lease)
		require.NoError(t, err)
		assert.Equal(t, idempotency.StatusClaimed, again.Status, "a completion past its retention counts as absent")
	})

	t.Run("concurrent claims: one winner per key", func(t *testing.T) {
		s := open(t, 0)
		const workers, keys = 8, 40
		var mu sync.Mutex
		claimed := map[string]int{}
		var wg sync.WaitGroup
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for k := 0; k < keys; k++ {
					key := "key-" + string(rune('A'+k%26)) + string(rune('a'+k/26))
					c, err := s.Claim(ctx, key, lease)
					if !assert.NoError(t, err) {
						return
					}
					if c.Status == idempotency.StatusClaimed {
						mu.Lock()
						claimed[key]++
						mu.Unlock()
						assert.NoError(t, s.Complete(ctx, c, nil))
					}
				}
			}()
		}
		wg.Wait()
		assert.Len(t, claimed, keys, "every key was claimed")
		for k, n := range claimed {
			assert.Equal(t, 1, n, "key %s claimed %d times", k, n)
		}
	})

	t.Run("misuse and close", func(t *testing.T) {
		s := open(t, 0)
		_, err := s.Claim(ctx, "k", 0)
		assert.Error(t, err, "a zero lease is refused")
		busy := idempotency.Claim{Key: "k", Status: idempotency.StatusInProgress}
		assert.ErrorIs(t, s.Complete(ctx, busy, nil), idempotency.ErrNotClaimed)
		assert.ErrorIs(t, s.Release(ctx, busy), idempotency.ErrNotClaimed)

		c, err := s.Claim(ctx, "k", lease)
		require.NoError(t, err)
		require.NoError(t, s.Close())
		require.NoError(t, s.Close(), "Close is idempotent")
		_, err = s.Claim(ctx, "k", lease)
		assert.ErrorIs(t, err, idempotency.ErrClosed)
		assert.ErrorIs(t, s.Complete(ctx, c, nil), idempotency.ErrClosed)
		assert.ErrorIs(t, s.Release(ctx, c), idempotency.ErrClosed)
	})
}

func TestMemoryStoreIsBounded(t *testing.T) {
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
}

func TestStoreConfigValidation(t *testing.T) {
	assert.ErrorContains(t, idempotency.MemoryStoreConfig{MaxKeys: -1}.Validate(), "MaxKeys")
	assert.ErrorContains(t, idempotency.MemoryStoreConfig{Retention: -time.Second}.Validate(), "Retention")
	assert.NoError(t, idempotency.MemoryStoreConfig{}.Validate())

	assert.ErrorContains(t, idempotency.PostgresStoreConfig{}.Validate(), "set Pool")
	assert.ErrorContains(t, idempotency.PostgresStoreConfig{URL: "postgres://x", Pool: &pgxpool.Pool{}}.Validate(), "only one")
	assert.ErrorContains(t, idempotency.PostgresStoreConfig{URL: "postgres://x", Table: "bad-name; DROP"}.Validate(), "Table")
	assert.ErrorContains(t, idempotency.PostgresStoreConfig{URL: "postgres://x", Retention: time.Microsecond}.Validate(), "Retention")
	assert.NoError(t, idempotency.PostgresStoreConfig{URL: "postgres://x", Table: "ops.idem"}.Validate())

	assert.ErrorContains(t, idempotency.RedisStoreConfig{}.Validate(), "set Client")
	assert.ErrorContains(t, idempotency.RedisStoreConfig{Addr: "x:1", Client: redis.NewClient(&redis.Options{})}.Validate(), "only one")
	assert.NoError(t, idempotency.RedisStoreConfig{Addr: "127.0.0.1:6379"}.Validate())
}
