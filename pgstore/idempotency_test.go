package pgstore_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/antidote-mq/antidote/idempotency"
	"github.com/antidote-mq/antidote/internal/storetest"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/pgstore"
)

func TestIdempotencyStore(t *testing.T) {
	storetest.IdempotencyStore(t, func(t testing.TB, retention time.Duration) idempotency.Store {
		return openIdempotencyStore(t, pgstore.IdempotencyStoreConfig{Retention: retention})
	})
}

// openIdempotencyStore opens a store on its own table, dropped after the test.
// cfg.Pool and cfg.Table are filled in.
func openIdempotencyStore(t testing.TB, cfg pgstore.IdempotencyStoreConfig) *pgstore.IdempotencyStore {
	t.Helper()
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testenv.PostgresURL(t))
	require.NoError(t, err)
	cfg.Pool = pool
	cfg.Table = "antidote_idem_test_" + storetest.Suffix(t)
	s, err := pgstore.NewIdempotencyStore(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = s.Close()
		_, _ = pool.Exec(context.Background(), "DROP TABLE IF EXISTS "+cfg.Table)
		pool.Close()
	})
	return s
}

// effectsTable creates a table for handler writes, dropped after the test.
func effectsTable(t *testing.T, pool *pgxpool.Pool) string {
	t.Helper()
	name := "antidote_idem_effects_" + storetest.Suffix(t)
	_, err := pool.Exec(context.Background(), "CREATE TABLE "+name+" (key TEXT NOT NULL)")
	require.NoError(t, err)
	t.Cleanup(func() { _, _ = pool.Exec(context.Background(), "DROP TABLE IF EXISTS "+name) })
	return name
}

func countRows(t *testing.T, pool *pgxpool.Pool, table, key string) int {
	t.Helper()
	var n int
	require.NoError(t, pool.QueryRow(context.Background(), "SELECT count(*) FROM "+table+" WHERE key = $1", key).Scan(&n))
	return n
}

func TestIdempotencyStoreRunTx(t *testing.T) {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testenv.PostgresURL(t))
	require.NoError(t, err)
	defer pool.Close()
	s := openIdempotencyStore(t, pgstore.IdempotencyStoreConfig{})
	effects := effectsTable(t, pool)

	write := func(key string) func(context.Context) ([]byte, error) {
		return func(ctx context.Context) ([]byte, error) {
			tx, ok := pgstore.TxFromContext(ctx)
			if !ok {
				return nil, errors.New("no transaction in the context")
			}
			_, err := tx.Exec(ctx, "INSERT INTO "+effects+" (key) VALUES ($1)", key)
			return []byte("result of " + key), err
		}
	}

	t.Run("the write and the completion commit together", func(t *testing.T) {
		c, err := s.RunTx(ctx, "a", write("a"))
		require.NoError(t, err)
		assert.Equal(t, idempotency.StatusClaimed, c.Status)
		assert.Equal(t, 1, countRows(t, pool, effects, "a"))

		ran := false
		dup, err := s.RunTx(ctx, "a", func(context.Context) ([]byte, error) { ran = true; return nil, nil })
		require.NoError(t, err)
		assert.False(t, ran, "a completed key does not run again")
		assert.Equal(t, idempotency.StatusCompleted, dup.Status)
		assert.Equal(t, []byte("result of a"), dup.Result)
		// The non-transactional API sees the same state.
		viaClaim, err := s.Claim(ctx, "a", time.Second)
		require.NoError(t, err)
		assert.Equal(t, idempotency.StatusCompleted, viaClaim.Status)
	})

	t.Run("a failure rolls the write back and frees the key", func(t *testing.T) {
		boom := errors.New("handler failed")
		_, err := s.RunTx(ctx, "b", func(ctx context.Context) ([]byte, error) {
			if _, err := write("b")(ctx); err != nil {
				return nil, err
			}
			return nil, boom
		})
		assert.ErrorIs(t, err, boom, "the handler's error comes back unwrapped")
		assert.Equal(t, 0, countRows(t, pool, effects, "b"), "the write was rolled back")

		c, err := s.RunTx(ctx, "b", write("b"))
		require.NoError(t, err)
		assert.Equal(t, idempotency.StatusClaimed, c.Status, "the retry runs")
		assert.Equal(t, 1, countRows(t, pool, effects, "b"))
	})

	t.Run("a handler that finished commits although the context was cancelled meanwhile", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		_, err := s.RunTx(cctx, "k", func(txCtx context.Context) ([]byte, error) {
			r, err := write("k")(txCtx)
			cancel() // the router closes while the handler finishes
			return r, err
		})
		require.NoError(t, err)
		assert.Equal(t, 1, countRows(t, pool, effects, "k"), "the finished work was committed, not rolled back")
	})

	t.Run("a panic rolls back and frees the key", func(t *testing.T) {
		assert.Panics(t, func() {
			_, _ = s.RunTx(ctx, "p", func(ctx context.Context) ([]byte, error) {
				_, _ = write("p")(ctx)
				panic("handler bug")
			})
		})
		assert.Equal(t, 0, countRows(t, pool, effects, "p"))
		c, err := s.Claim(ctx, "p", time.Second)
		require.NoError(t, err)
		assert.Equal(t, idempotency.StatusClaimed, c.Status)
	})

	t.Run("a second copy does not run while the first is in its transaction", func(t *testing.T) {
		inside, release := make(chan struct{}), make(chan struct{})
		done := make(chan error, 1)
		go func() {
			_, err := s.RunTx(ctx, "c", func(ctx context.Context) ([]byte, error) {
				r, err := write("c")(ctx)
				close(inside)
				<-release
				return r, err
			})
			done <- err
		}()
		<-inside
		ran := false
		busy, err := s.RunTx(ctx, "c", func(context.Context) ([]byte, error) { ran = true; return nil, nil })
		require.NoError(t, err)
		assert.False(t, ran)
		assert.Equal(t, idempotency.StatusInProgress, busy.Status, "the advisory lock is held, no waiting")
		viaClaim, err := s.Claim(ctx, "c-other", time.Second)
		require.NoError(t, err)
		assert.Equal(t, idempotency.StatusClaimed, viaClaim.Status, "other keys are not blocked")

		close(release)
		require.NoError(t, <-done)
		dup, err := s.RunTx(ctx, "c", func(context.Context) ([]byte, error) { ran = true; return nil, nil })
		require.NoError(t, err)
		assert.False(t, ran)
		assert.Equal(t, idempotency.StatusCompleted, dup.Status)
		assert.Equal(t, 1, countRows(t, pool, effects, "c"))
	})

	t.Run("a live non-transactional claim is respected", func(t *testing.T) {
		c, err := s.Claim(ctx, "d", time.Minute)
		require.NoError(t, err)
		ran := false
		busy, err := s.RunTx(ctx, "d", func(context.Context) ([]byte, error) { ran = true; return nil, nil })
		require.NoError(t, err)
		assert.False(t, ran)
		assert.Equal(t, idempotency.StatusInProgress, busy.Status)
		assert.Greater(t, busy.LeaseLeft, 50*time.Second)
		require.NoError(t, s.Release(ctx, c))
		_, err = s.RunTx(ctx, "d", write("d"))
		require.NoError(t, err)
		assert.Equal(t, 1, countRows(t, pool, effects, "d"))
	})
}

func TestIdempotencyStoreDeletesExpiredRows(t *testing.T) {
	ctx := context.Background()
	s := openIdempotencyStore(t, pgstore.IdempotencyStoreConfig{Retention: 50 * time.Millisecond, CleanupInterval: -1})
	for _, k := range []string{"a", "b", "c"} {
		c, err := s.Claim(ctx, k, time.Minute)
		require.NoError(t, err)
		require.NoError(t, s.Complete(ctx, c, nil))
	}
	_, err := s.Claim(ctx, "live", time.Minute)
	require.NoError(t, err)
	time.Sleep(100 * time.Millisecond)
	n, err := s.DeleteExpired(ctx)
	require.NoError(t, err)
	assert.EqualValues(t, 3, n, "the three expired completions go, the live claim stays")
	busy, err := s.Claim(ctx, "live", time.Minute)
	require.NoError(t, err)
	assert.Equal(t, idempotency.StatusInProgress, busy.Status)
}

// The opportunistic cleanup runs in a goroutine that Close waits for.
func TestIdempotencyStoreCleanupStopsOnClose(t *testing.T) {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testenv.PostgresURL(t))
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	table := "antidote_idem_test_" + storetest.Suffix(t)
	t.Cleanup(func() { _, _ = pool.Exec(context.Background(), "DROP TABLE IF EXISTS "+table) })
	s, err := pgstore.NewIdempotencyStore(ctx, pgstore.IdempotencyStoreConfig{Pool: pool, Table: table, Retention: time.Millisecond, CleanupInterval: time.Nanosecond})
	require.NoError(t, err)
	for i := 0; i < 20; i++ {
		c, err := s.Claim(ctx, string(rune('a'+i)), time.Minute)
		require.NoError(t, err)
		require.NoError(t, s.Complete(ctx, c, nil))
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		time.Sleep(10 * time.Millisecond)
		_, err := s.Claim(ctx, "trigger", time.Millisecond) // starts cleanups
		require.NoError(t, err)
		var n int
		require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM "+table+" WHERE key <> 'trigger'").Scan(&n))
		if n == 0 {
			break
		}
		require.True(t, time.Now().Before(deadline), "%d expired rows were never cleaned up", n)
	}
	require.NoError(t, s.Close())
	// Close returned, so no cleanup runs any more: the pool the store does
	// not own stays usable and the table is left as it was.
	require.NoError(t, pool.Ping(ctx))
}

func TestIdempotencyStoreConfigValidate(t *testing.T) {
	assert.ErrorContains(t, pgstore.IdempotencyStoreConfig{}.Validate(), "set Pool")
	assert.ErrorContains(t, pgstore.IdempotencyStoreConfig{URL: "postgres://x", Pool: &pgxpool.Pool{}}.Validate(), "only one")
	assert.ErrorContains(t, pgstore.IdempotencyStoreConfig{URL: "postgres://x", Table: "bad-name; DROP"}.Validate(), "Table")
	assert.ErrorContains(t, pgstore.IdempotencyStoreConfig{URL: "postgres://x", Retention: time.Microsecond}.Validate(), "Retention")
	assert.NoError(t, pgstore.IdempotencyStoreConfig{URL: "postgres://x", Table: "ops.idem"}.Validate())
}
