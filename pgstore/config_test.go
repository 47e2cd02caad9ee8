package pgstore_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/antidote-mq/antidote/internal/testenv"
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
			testenv.RequireFieldsInOrder(t, c.err, c.want...)
			for _, line := range strings.Split(c.err.Error(), "\n") {
				assert.True(t, strings.HasPrefix(line, "pgstore: "), line)
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
