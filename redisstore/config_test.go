package redisstore_test

import (
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/antidote-mq/antidote/redisstore"
)

// Validate reports every field that cannot work, one line each, in field
// order, and accepts the zero value of every optional field.
func TestValidateJoinsErrorsInFieldOrder(t *testing.T) {
	client := redis.NewClient(&redis.Options{})
	defer client.Close()
	cases := []struct {
		name string
		err  error
		want []string
	}{
		{"delivery tracker", redisstore.DeliveryTrackerConfig{TTL: -time.Second}.Validate(),
			[]string{"DeliveryTrackerConfig needs a server", "DeliveryTrackerConfig.TTL"}},
		{"idempotency store", redisstore.IdempotencyStoreConfig{Client: client, Addr: "x:1", Retention: time.Microsecond}.Validate(),
			[]string{"IdempotencyStoreConfig has both Client and Addr", "IdempotencyStoreConfig.Retention"}},
		{"claim-check store", redisstore.ClaimCheckStoreConfig{}.Validate(),
			[]string{"ClaimCheckStoreConfig needs a server"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			require.Error(t, c.err)
			lines := strings.Split(c.err.Error(), "\n")
			require.Len(t, lines, len(c.want), c.err.Error())
			for i, w := range c.want {
				assert.Contains(t, lines[i], w)
				assert.True(t, strings.HasPrefix(lines[i], "redisstore: "), lines[i])
			}
		})
	}
	assert.NoError(t, redisstore.DeliveryTrackerConfig{Addr: "x:1"}.Validate())
	assert.NoError(t, redisstore.IdempotencyStoreConfig{Addr: "x:1"}.Validate())
	assert.NoError(t, redisstore.ClaimCheckStoreConfig{Addr: "x:1"}.Validate())
}
