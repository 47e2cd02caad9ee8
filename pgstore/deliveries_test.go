package pgstore_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/antidote-mq/antidote/internal/storetest"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/pgstore"
	"github.com/antidote-mq/antidote/poison"
)

// dtPostgres returns a config with a table unique to the test, dropped at
// the end, and a pool the test owns.
func dtPostgres(t *testing.T) (pgstore.DeliveryTrackerConfig, *pgxpool.Pool) {
	t.Helper()
	url := testenv.PostgresURL(t)
	pool, err := pgxpool.New(context.Background(), url)
	require.NoError(t, err)
	table := "antidote_deliveries_test_" + storetest.Suffix(t)
	t.Cleanup(func() {
		_, err := pool.Exec(context.Background(), "DROP TABLE IF EXISTS "+table)
		assert.NoError(t, err)
		pool.Close()
	})
	return pgstore.DeliveryTrackerConfig{Pool: pool, Table: table}, pool
}

func TestDeliveryTracker(t *testing.T) {
	storetest.DeliveryTracker(t, func(t *testing.T) poison.DeliveryTracker {
		cfg, _ := dtPostgres(t)
		tr, err := pgstore.NewDeliveryTracker(context.Background(), cfg)
		require.NoError(t, err)
		t.Cleanup(func() { _ = tr.Close() })
		return tr
	})
}

func TestDeliveryTrackerSurvivesRestart(t *testing.T) {
	ctx := context.Background()
	cfg, pool := dtPostgres(t)
	cfg.Pool, cfg.URL = nil, testenv.PostgresURL(t) // each "process" opens its own pool

	for life := 1; life <= 3; life++ {
		tr, err := pgstore.NewDeliveryTracker(ctx, cfg)
		require.NoError(t, err)
		n, err := tr.Incr(ctx, "kafka/orders/0/7//h")
		require.NoError(t, err)
		assert.Equal(t, life, n, "the count outlives the tracker (and its pool)")
		require.NoError(t, tr.Close())
	}
	// The tracker closed the pool it opened, not the test's.
	require.NoError(t, pool.Ping(ctx))
}

func TestDeliveryTrackerSharedPoolNotClosed(t *testing.T) {
	ctx := context.Background()
	cfg, pool := dtPostgres(t)
	tr, err := pgstore.NewDeliveryTracker(ctx, cfg)
	require.NoError(t, err)
	require.NoError(t, tr.Close())
	require.NoError(t, pool.Ping(ctx), "a Pool passed in the config stays open")
}

func TestDeliveryTrackerConcurrentCreate(t *testing.T) {
	ctx := context.Background()
	cfg, _ := dtPostgres(t)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tr, err := pgstore.NewDeliveryTracker(ctx, cfg)
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

func TestDeliveryTrackerTTL(t *testing.T) {
	ctx := context.Background()
	cfg, pool := dtPostgres(t)
	cfg.TTL = 200 * time.Millisecond
	cfg.CleanupInterval = -1 // only explicit DeleteExpired here
	tr, err := pgstore.NewDeliveryTracker(ctx, cfg)
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

func TestDeliveryTrackerOpportunisticCleanup(t *testing.T) {
	ctx := context.Background()
	cfg, pool := dtPostgres(t)
	cfg.TTL = 100 * time.Millisecond
	cfg.CleanupInterval = time.Millisecond
	tr, err := pgstore.NewDeliveryTracker(ctx, cfg)
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

func TestDeliveryTrackerConfigValidate(t *testing.T) {
	cases := []struct {
		cfg  pgstore.DeliveryTrackerConfig
		want string
	}{
		{pgstore.DeliveryTrackerConfig{}, "set Pool"},
		{pgstore.DeliveryTrackerConfig{Pool: &pgxpool.Pool{}, URL: "postgres://x"}, "both Pool and URL"},
		{pgstore.DeliveryTrackerConfig{URL: "postgres://x", Table: "x; DROP TABLE y"}, "Table"},
		{pgstore.DeliveryTrackerConfig{URL: "postgres://x", TTL: -1}, "TTL"},
	}
	for _, c := range cases {
		err := c.cfg.Validate()
		if assert.Error(t, err) {
			assert.Contains(t, err.Error(), c.want)
		}
		_, err = pgstore.NewDeliveryTracker(context.Background(), c.cfg)
		assert.Error(t, err)
	}
	assert.NoError(t, pgstore.DeliveryTrackerConfig{URL: "postgres://x", Table: "ops.deliveries"}.Validate())
}

func TestDeliveryTrackerSchemaQualifiedTable(t *testing.T) {
	ctx := context.Background()
	cfg, pool := dtPostgres(t)
	schema := "antidote_test_" + storetest.Suffix(t)
	_, err := pool.Exec(ctx, "CREATE SCHEMA "+schema)
	require.NoError(t, err)
	t.Cleanup(func() { _, _ = pool.Exec(context.Background(), "DROP SCHEMA "+schema+" CASCADE") })
	cfg.Table = schema + ".deliveries"
	tr, err := pgstore.NewDeliveryTracker(ctx, cfg)
	require.NoError(t, err)
	defer tr.Close()
	n, err := tr.Incr(ctx, "k")
	require.NoError(t, err)
	assert.Equal(t, 1, n)
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
	tr, err := pgstore.NewDeliveryTracker(context.Background(), cfg)
	require.NoError(t, err)
	defer tr.Close()
	for _, k := range []string{k1, k2} {
		n, err := tr.Incr(context.Background(), k)
		require.NoError(t, err)
		assert.Equal(t, 1, n)
	}
}
