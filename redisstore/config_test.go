package redisstore_test

import (
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"

	"github.com/antidote-mq/antidote/internal/testenv"
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
			testenv.RequireFieldsInOrder(t, c.err, c.want...)
			for _, line := range strings.Split(c.err.Error(), "\n") {
				assert.True(t, strings.HasPrefix(line, "redisstore: "), line)
			}
		})
	}
	assert.NoError(t, redisstore.DeliveryTrackerConfig{Addr: "x:1"}.Validate())
	assert.NoError(t, redisstore.IdempotencyStoreConfig{Addr: "x:1"}.Validate())
	assert.NoError(t, redisstore.ClaimCheckStoreConfig{Addr: "x:1"}.Validate())
}
