package pgstore_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/antidote-mq/antidote/pgstore"
)

// Validate reports every field that cannot work, one line each, in field
// order, and accepts the zero value of every optional field.
func TestValidateJoinsErrorsInFieldOrder(t *testing.T) {
	cases := []struct {
		name string
		err  error
		want []string
	}{
		{"delivery tracker", pgstore.DeliveryTrackerConfig{Table: "x; DROP", TTL: -time.Second}.Validate(),
			[]string{"DeliveryTrackerConfig needs a database", "DeliveryTrackerConfig.Table", "DeliveryTrackerConfig.TTL"}},
		{"idempotency store", pgstore.IdempotencyStoreConfig{Table: "a.b.c", Retention: time.Microsecond}.Validate(),
			[]string{"IdempotencyStoreConfig needs a database", "IdempotencyStoreConfig.Table", "IdempotencyStoreConfig.Retention"}},
		{"claim-check store", pgstore.ClaimCheckStoreConfig{Table: "1table"}.Validate(),
			[]string{"ClaimCheckStoreConfig needs a database", "ClaimCheckStoreConfig.Table"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			require.Error(t, c.err)
			lines := strings.Split(c.err.Error(), "\n")
			require.Len(t, lines, len(c.want), c.err.Error())
			for i, w := range c.want {
				assert.Contains(t, lines[i], w)
				assert.True(t, strings.HasPrefix(lines[i], "pgstore: "), lines[i])
			}
		})
	}
	assert.NoError(t, pgstore.DeliveryTrackerConfig{URL: "postgres://x"}.Validate())
	assert.NoError(t, pgstore.IdempotencyStoreConfig{URL: "postgres://x"}.Validate())
	assert.NoError(t, pgstore.ClaimCheckStoreConfig{URL: "postgres://x"}.Validate())
}

// The constructors fill defaults before validating: the zero value of
// every optional field passes, and nothing reaches the database when
// validation fails.
func TestConstructorsRefuseInvalidConfigs(t *testing.T) {
	ctx := context.Background()
	_, err := pgstore.NewDeliveryTracker(ctx, pgstore.DeliveryTrackerConfig{URL: "postgres://x", Table: "bad name"})
	assert.ErrorContains(t, err, "Table")
	_, err = pgstore.NewIdempotencyStore(ctx, pgstore.IdempotencyStoreConfig{})
	assert.ErrorContains(t, err, "set Pool")
	_, err = pgstore.NewClaimCheckStore(ctx, pgstore.ClaimCheckStoreConfig{URL: "postgres://x", Table: "x; DROP TABLE y"})
	assert.ErrorContains(t, err, "Table")
}
