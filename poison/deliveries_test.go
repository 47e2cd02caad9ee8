package poison_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/poison"
)

func dtSuffix(t testing.TB) string {
	t.Helper()
	b := make([]byte, 6)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return hex.EncodeToString(b)
}

// dtSuite is the behaviour every DeliveryTracker must have.
func dtSuite(t *testing.T, open func(t *testing.T) poison.DeliveryTracker) {
	ctx := context.Background()

	t.Run("counts and forgets", func(t *testing.T) {
		tr := open(t)
		for want := 1; want <= 3; want++ {
			n, err := tr.Incr(ctx, "a")
			require.NoError(t, err)
			assert.Equal(t, want, n)
		}
		n, err := tr.Incr(ctx, "b")
		require.NoError(t, err)
		assert.Equal(t, 1, n, "keys are independent")

		require.NoError(t, tr.Forget(ctx, "a"))
		n, err = tr.Incr(ctx, "a")
		require.NoError(t, err)
		assert.Equal(t, 1, n, "a forgotten key starts again at 1")
		require.NoError(t, tr.Forget(ctx, "never-seen"), "forgetting an unknown key is not an error")
	})

	t.Run("takes a count back", func(t *testing.T) {
		tr := open(t)
		d, ok := tr.(poison.DeliveryDecrementer)
		require.True(t, ok, "the tracker can take a count back")
		for want := 1; want <= 2; want++ {
			_, err := tr.Incr(ctx, "d")
			require.NoError(t, err)
		}
		n, err := d.Decr(ctx, "d")
		require.NoError(t, err)
		assert.Equal(t, 1, n)
		n, err = tr.Incr(ctx, "d")
		require.NoError(t, err)
		assert.Equal(t, 2, n, "the next count follows the one taken back")
		for i := 0; i < 3; i++ {
			_, err = d.Decr(ctx, "d")
			require.NoError(t, err)
		}
		n, err = tr.Incr(ctx, "d")
		require.NoError(t, err)
		assert.Equal(t, 1, n, "never below 0")
		n, err = d.Decr(ctx, "never-seen")
		require.NoError(t, err)
		assert.Equal(t, 0, n, "an unknown key is 0")
	})

	t.Run("concurrent increments are not lost", func(t *testing.T) {
		tr := open(t)
		const workers, each = 8, 25
		var wg sync.WaitGroup
		seen := make(chan int, workers*each)
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < each; i++ {
					n, err := tr.Incr(ctx, "shared")
					if !assert.NoError(t, err) {
						return
					}
					seen <- n
				}
			}()
		}
		wg.Wait()
		close(seen)
		got := map[int]bool{}
		for n := range seen {
			assert.False(t, got[n], "count %d returned twice", n)
			got[n] = true
		}
		assert.Len(t, got, workers*each, "every Incr returns a distinct count 1..N")
		n, err := tr.Incr(ctx, "shared")
		require.NoError(t, err)
		assert.Equal(t, workers*each+1, n)
	})

	t.Run("close", func(t *testing.T) {
		tr := open(t)
		require.NoError(t, tr.Close())
		require.NoError(t, tr.Close(), "Close is idempotent")
		_, err := tr.Incr(ctx, "a")
		assert.ErrorIs(t, err, poison.ErrDeliveryTrackerClosed)
		assert.ErrorIs(t, tr.Forget(ctx, "a"), poison.ErrDeliveryTrackerClosed)
	})
}

func TestDeliveryKey(t *testing.T) {
	kafka := poison.Origin{Topic: "orders", Handler: "h", ConsumerGroup: "g", Partition: 3, Offset: 42, HasOffset: true}
	assert.Equal(t, "kafka/orders/3/42/g/h", poison.DeliveryKeyOf(kafka, "ignored-uuid"),
		"Kafka records are keyed by coordinates, not by UUID")

	other := poison.Origin{Topic: "orders", Handler: "h"}
	assert.Equal(t, "uuid/orders//h/u-1", poison.DeliveryKeyOf(other, "u-1"))

	// A '/' inside a component cannot make two targets share a key.
	a := poison.DeliveryKeyOf(poison.Origin{Topic: "a/b", Handler: "c"}, "u")
	b := poison.DeliveryKeyOf(poison.Origin{Topic: "a", Handler: "b/c"}, "u")
	assert.NotEqual(t, a, b)

	// Handlers and groups are part of the key.
	assert.NotEqual(t,
		poison.DeliveryKeyOf(poison.Origin{Topic: "t", Handler: "h1"}, "u"),
		poison.DeliveryKeyOf(poison.Origin{Topic: "t", Handler: "h2"}, "u"))
	k1, k2 := kafka, kafka
	k2.ConsumerGroup = "other"
	assert.NotEqual(t, poison.DeliveryKeyOf(k1, ""), poison.DeliveryKeyOf(k2, ""))

	// Outside a router (no topic, handler or offset in the context) the UUID
	// still identifies the message.
	msg := message.NewMessage("uuid-7", nil)
	assert.Equal(t, "uuid////uuid-7", poison.DeliveryKey(msg))
}

func TestMemoryDeliveryTracker(t *testing.T) {
	dtSuite(t, func(t *testing.T) poison.DeliveryTracker {
		tr := poison.MustNewMemoryDeliveryTracker(poison.MemoryDeliveryTrackerConfig{})
		t.Cleanup(func() { _ = tr.Close() })
		return tr
	})
}

func TestMemoryDeliveryTrackerConfigValidate(t *testing.T) {
	assert.NoError(t, poison.MemoryDeliveryTrackerConfig{}.Validate())
	err := poison.MemoryDeliveryTrackerConfig{MaxKeys: -1}.Validate()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "MaxKeys")
	err = poison.MemoryDeliveryTrackerConfig{TTL: -time.Second}.Validate()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "TTL")
	assert.Panics(t, func() { poison.MustNewMemoryDeliveryTracker(poison.MemoryDeliveryTrackerConfig{MaxKeys: -1}) })
}

// --- PostgreSQL ---

// dtPostgres returns a config with a table unique to the test, dropped at
// the end, and a pool the test owns.
func dtPostgres(t *testing.T) (poison.PostgresDeliveryTrackerConfig, *pgxpool.Pool) {
	t.Helper()
	url := testenv.PostgresURL(t)
	pool, err := pgxpool.New(context.Background(), url)
	require.NoError(t, err)
	table := "antidote_deliveries_test_" + dtSuffix(t)
	t.Cleanup(func() {
		_, err := pool.Exec(context.Background(), "DROP TABLE IF EXISTS "+table)
		assert.NoError(t, err)
		pool.Close()
	})
	return poison.PostgresDeliveryTrackerConfig{Pool: pool, Table: table}, pool
}

func TestPostgresDeliveryTracker(t *testing.T) {
	dtSuite(t, func(t *testing.T) poison.DeliveryTracker {
		cfg, _ := dtPostgres(t)
		tr, err := poison.NewPostgresDeliveryTracker(context.Background(), cfg)
		require.NoError(t, err)
		t.Cleanup(func() { _ = tr.Close() })
		return tr
	})
}

func TestPostgresDeliveryTrackerSurvivesRestart(t *testing.T) {
	ctx := context.Background()
	cfg, pool := dtPostgres(t)
	cfg.Pool, cfg.URL = nil, testenv.PostgresURL(t) // each "process" opens its own pool

	for life := 1; life <= 3; life++ {
		tr, err := poison.NewPostgresDeliveryTracker(ctx, cfg)
		require.NoError(t, err)
		n, err := tr.Incr(ctx, "kafka/orders/0/7//h")
		require.NoError(t, err)
		assert.Equal(t, life, n, "the count outlives the tracker (and its pool)")
		require.NoError(t, tr.Close())
	}
	// The tracker closed the pool it opened, not the test's.
	require.NoError(t, pool.Ping(ctx))
}

func TestPostgresDeliveryTrackerSharedPoolNotClosed(t *testing.T) {
	ctx := context.Background()
	cfg, pool := dtPostgres(t)
	tr, err := poison.NewPostgresDeliveryTracker(ctx, cfg)
	require.NoError(t, err)
	require.NoError(t, tr.Close())
	require.NoError(t, pool.Ping(ctx), "a Pool passed in the config stays open")
}

func TestPostgresDeliveryTrackerConcurrentCreate(t *testing.T) {
	ctx := context.Background()
	cfg, _ := dtPostgres(t)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tr, err := poison.NewPostgresDeliveryTracker(ctx, cfg)
			if err == nil {
				_, err = tr.Incr(ctx, "k")
				_ = tr.Close()
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		assert.NoError(t, err, "replicas starting together all create-or-find the table")
	}
}

func TestPostgresDeliveryTrackerTTL(t *testing.T) {
	ctx := context.Background()
	cfg, pool := dtPostgres(t)
	cfg.TTL = 200 * time.Millisecond
	cfg.CleanupInterval = -1 // only explicit DeleteExpired here
	tr, err := poison.NewPostgresDeliveryTracker(ctx, cfg)
	require.NoError(t, err)
	defer tr.Close()

	for i := 0; i < 2; i++ {
		_, err = tr.Incr(ctx, "old")
		require.NoError(t, err)
	}
	time.Sleep(300 * time.Millisecond)
	_, err = tr.Incr(ctx, "fresh")
	require.NoError(t, err)

	deleted, err := tr.DeleteExpired(ctx)
	require.NoError(t, err)
	assert.Equal(t, int64(1), deleted, "only the expired row goes")
	var rows int
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM "+cfg.Table).Scan(&rows))
	assert.Equal(t, 1, rows)

	// An expired row that the cleanup has not deleted yet counts as absent.
	_, err = tr.Incr(ctx, "fresh")
	require.NoError(t, err)
	time.Sleep(300 * time.Millisecond)
	n, err := tr.Incr(ctx, "fresh")
	require.NoError(t, err)
	assert.Equal(t, 1, n)
}

func TestPostgresDeliveryTrackerOpportunisticCleanup(t *testing.T) {
	ctx := context.Background()
	cfg, pool := dtPostgres(t)
	cfg.TTL = 100 * time.Millisecond
	cfg.CleanupInterval = time.Millisecond
	tr, err := poison.NewPostgresDeliveryTracker(ctx, cfg)
	require.NoError(t, err)

	_, err = tr.Incr(ctx, "old")
	require.NoError(t, err)
	time.Sleep(200 * time.Millisecond)
	rowsOld := func() int {
		var n int
		require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM "+cfg.Table+" WHERE key = 'old'").Scan(&n))
		return n
	}
	// Each Incr may start a cleanup pass; no timer runs on its own.
	require.Eventually(t, func() bool {
		_, err := tr.Incr(ctx, "new")
		require.NoError(t, err)
		return rowsOld() == 0
	}, 5*time.Second, 20*time.Millisecond)
	// Close waits for a running pass; nothing is left behind.
	require.NoError(t, tr.Close())
}

func TestPostgresDeliveryTrackerConfigValidate(t *testing.T) {
	cases := []struct {
		cfg  poison.PostgresDeliveryTrackerConfig
		want string
	}{
		{poison.PostgresDeliveryTrackerConfig{}, "set Pool"},
		{poison.PostgresDeliveryTrackerConfig{Pool: &pgxpool.Pool{}, URL: "postgres://x"}, "both Pool and URL"},
		{poison.PostgresDeliveryTrackerConfig{URL: "postgres://x", Table: "x; DROP TABLE y"}, "Table"},
		{poison.PostgresDeliveryTrackerConfig{URL: "postgres://x", TTL: -1}, "TTL"},
	}
	for _, c := range cases {
		err := c.cfg.Validate()
		if assert.Error(t, err) {
			assert.Contains(t, err.Error(), c.want)
		}
		_, err = poison.NewPostgresDeliveryTracker(context.Background(), c.cfg)
		assert.Error(t, err)
	}
	assert.NoError(t, poison.PostgresDeliveryTrackerConfig{URL: "postgres://x", Table: "ops.deliveries"}.Validate())
}

func TestPostgresDeliveryTrackerSchemaQualifiedTable(t *testing.T) {
	ctx := context.Background()
	cfg, pool := dtPostgres(t)
	schema := "antidote_test_" + dtSuffix(t)
	_, err := pool.Exec(ctx, "CREATE SCHEMA "+schema)
	require.NoError(t, err)
	t.Cleanup(func() { _, _ = pool.Exec(context.Background(), "DROP SCHEMA "+schema+" CASCADE") })
	cfg.Table = schema + ".deliveries"
	tr, err := poison.NewPostgresDeliveryTracker(ctx, cfg)
	require.NoError(t, err)
	defer tr.Close()
	n, err := tr.Incr(ctx, "k")
	require.NoError(t, err)
	assert.Equal(t, 1, n)
}

// --- Redis ---

func dtRedis(t *testing.T) (poison.RedisDeliveryTrackerConfig, *redis.Client) {
	t.Helper()
	addr := testenv.RedisAddr(t)
	client := redis.NewClient(&redis.Options{Addr: addr})
	prefix := "antidote:test:" + dtSuffix(t) + ":"
	t.Cleanup(func() {
		ctx := context.Background()
		keys, err := client.Keys(ctx, prefix+"*").Result()
		assert.NoError(t, err)
		if len(keys) > 0 {
			assert.NoError(t, client.Del(ctx, keys...).Err())
		}
		_ = client.Close()
	})
	return poison.RedisDeliveryTrackerConfig{Client: client, Prefix: prefix}, client
}

func TestRedisDeliveryTracker(t *testing.T) {
	dtSuite(t, func(t *testing.T) poison.DeliveryTracker {
		cfg, _ := dtRedis(t)
		tr, err := poison.NewRedisDeliveryTracker(cfg)
		require.NoError(t, err)
		t.Cleanup(func() { _ = tr.Close() })
		return tr
	})
}

func TestRedisDeliveryTrackerTTLAndRestart(t *testing.T) {
	ctx := context.Background()
	cfg, client := dtRedis(t)
	cfg.TTL = time.Hour

	for life := 1; life <= 3; life++ {
		own := cfg
		own.Client, own.Addr = nil, testenv.RedisAddr(t) // each "process" its own client
		tr, err := poison.NewRedisDeliveryTracker(own)
		require.NoError(t, err)
		n, err := tr.Incr(ctx, "k")
		require.NoError(t, err)
		assert.Equal(t, life, n, "the count outlives the tracker")
		require.NoError(t, tr.Close())
	}
	ttl, err := client.PTTL(ctx, cfg.Prefix+"k").Result()
	require.NoError(t, err)
	assert.Greater(t, ttl, 59*time.Minute, "every Incr sets the TTL")
	assert.LessOrEqual(t, ttl, time.Hour)

	cfg.TTL = 50 * time.Millisecond
	tr, err := poison.NewRedisDeliveryTracker(cfg)
	require.NoError(t, err)
	defer tr.Close()
	_, err = tr.Incr(ctx, "short")
	require.NoError(t, err)
	time.Sleep(150 * time.Millisecond)
	n, err := tr.Incr(ctx, "short")
	require.NoError(t, err)
	assert.Equal(t, 1, n, "an expired count starts again")
	require.NoError(t, client.Ping(ctx).Err(), "a Client passed in the config stays open")
}

func TestRedisDeliveryTrackerConfigValidate(t *testing.T) {
	err := poison.RedisDeliveryTrackerConfig{}.Validate()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "Addr")
	err = poison.RedisDeliveryTrackerConfig{Addr: "x:1", Client: redis.NewClient(&redis.Options{})}.Validate()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "both Client and Addr")
	err = poison.RedisDeliveryTrackerConfig{Addr: "x:1", TTL: time.Microsecond}.Validate()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "TTL")
	_, err = poison.NewRedisDeliveryTracker(poison.RedisDeliveryTrackerConfig{})
	assert.Error(t, err)
}

func TestRedisDeliveryTrackerServerDown(t *testing.T) {
	// Nothing listens on port 1: Incr reports it, it does not hang or panic.
	tr, err := poison.NewRedisDeliveryTracker(poison.RedisDeliveryTrackerConfig{Addr: "127.0.0.1:1"})
	require.NoError(t, err)
	defer tr.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err = tr.Incr(ctx, "k")
	require.Error(t, err)
	assert.True(t, strings.Contains(err.Error(), "redis delivery tracker"), err.Error())
	assert.False(t, errors.Is(err, poison.ErrDeliveryTrackerClosed))
}

// A foreign producer's 100 KB UUID (random bytes, incompressible) makes a
// delivery key that still fits PostgreSQL's index, and two such UUIDs that
// differ in their last byte stay two keys.
func TestDeliveryKeyOfHugeUUIDFitsPostgres(t *testing.T) {
	huge := make([]byte, 100_000)
	for i := range huge {
		huge[i] = byte('a' + (i*7919+i/13)%26)
	}
	other := append([]byte(nil), huge...)
	other[len(other)-1] ^= 1
	o := poison.Origin{Topic: "orders", Handler: "h"}
	k1, k2 := poison.DeliveryKeyOf(o, string(huge)), poison.DeliveryKeyOf(o, string(other))
	assert.NotEqual(t, k1, k2)
	assert.Less(t, len(k1), 200)
	cfg, _ := dtPostgres(t)
	tr, err := poison.NewPostgresDeliveryTracker(context.Background(), cfg)
	require.NoError(t, err)
	defer tr.Close()
	for _, k := range []string{k1, k2} {
		n, err := tr.Incr(context.Background(), k)
		require.NoError(t, err)
		assert.Equal(t, 1, n)
	}
}
