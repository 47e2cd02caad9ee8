package redisstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/antidote-mq/antidote/idempotency"
	"github.com/antidote-mq/antidote/internal/storetest"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/redisstore"
)

// openIdempotencyStore opens a store under its own key prefix, whose keys
// are deleted after the test.
func openIdempotencyStore(t testing.TB, retention time.Duration) idempotency.Store {
	client := redis.NewClient(&redis.Options{Addr: testenv.RedisAddr(t)})
	prefix := "antidote:test:idem:" + storetest.Suffix(t) + ":"
	s, err := redisstore.NewIdempotencyStore(redisstore.IdempotencyStoreConfig{Client: client, Prefix: prefix, Retention: retention})
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
}

func TestIdempotencyStore(t *testing.T) {
	storetest.IdempotencyStore(t, openIdempotencyStore)
}

func TestIdempotencyStoreConfigValidate(t *testing.T) {
	assert.ErrorContains(t, redisstore.IdempotencyStoreConfig{}.Validate(), "set Client")
	assert.ErrorContains(t, redisstore.IdempotencyStoreConfig{Addr: "x:1", Client: redis.NewClient(&redis.Options{})}.Validate(), "only one")
	assert.NoError(t, redisstore.IdempotencyStoreConfig{Addr: "127.0.0.1:6379"}.Validate())
}
