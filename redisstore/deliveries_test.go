package redisstore_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/antidote-mq/antidote/internal/storetest"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/poison"
	"github.com/antidote-mq/antidote/redisstore"
)

func dtRedis(t *testing.T) (redisstore.DeliveryTrackerConfig, *redis.Client) {
	t.Helper()
	addr := testenv.RedisAddr(t)
	client := redis.NewClient(&redis.Options{Addr: addr})
	prefix := "antidote:test:" + storetest.Suffix(t) + ":"
	t.Cleanup(func() {
		ctx := context.Background()
		keys, err := client.Keys(ctx, prefix+"*").Result()
		assert.NoError(t, err)
		if len(keys) > 0 {
			assert.NoError(t, client.Del(ctx, keys...).Err())
		}
		_ = client.Close()
	})
	return redisstore.DeliveryTrackerConfig{Client: client, Prefix: prefix}, client
}

func TestDeliveryTracker(t *testing.T) {
	storetest.DeliveryTracker(t, func(t *testing.T) poison.DeliveryTracker {
		cfg, _ := dtRedis(t)
		tr, err := redisstore.NewDeliveryTracker(cfg)
		require.NoError(t, err)
		t.Cleanup(func() { _ = tr.Close() })
		return tr
	})
}

func TestDeliveryTrackerTTLAndRestart(t *testing.T) {
	ctx := context.Background()
	cfg, client := dtRedis(t)
	cfg.TTL = time.Hour

	for life := 1; life <= 3; life++ {
		own := cfg
		own.Client, own.Addr = nil, testenv.RedisAddr(t) // each "process" its own client
		tr, err := redisstore.NewDeliveryTracker(own)
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
	tr, err := redisstore.NewDeliveryTracker(cfg)
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

func TestDeliveryTrackerConfigValidate(t *testing.T) {
	err := redisstore.DeliveryTrackerConfig{}.Validate()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "Addr")
	err = redisstore.DeliveryTrackerConfig{Addr: "x:1", Client: redis.NewClient(&redis.Options{})}.Validate()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "both Client and Addr")
	err = redisstore.DeliveryTrackerConfig{Addr: "x:1", TTL: time.Microsecond}.Validate()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "TTL")
	_, err = redisstore.NewDeliveryTracker(redisstore.DeliveryTrackerConfig{})
	assert.Error(t, err)
}

func TestDeliveryTrackerServerDown(t *testing.T) {
	// Nothing listens on port 1: Incr reports it, it does not hang or panic.
	tr, err := redisstore.NewDeliveryTracker(redisstore.DeliveryTrackerConfig{Addr: "127.0.0.1:1"})
	require.NoError(t, err)
	defer tr.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err = tr.Incr(ctx, "k")
	require.Error(t, err)
	assert.True(t, strings.Contains(err.Error(), "redisstore: delivery tracker"), err.Error())
	assert.False(t, errors.Is(err, poison.ErrDeliveryTrackerClosed))
}
