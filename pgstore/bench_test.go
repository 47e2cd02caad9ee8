package pgstore_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/antidote-mq/antidote/idempotency"
	"github.com/antidote-mq/antidote/internal/storetest"
	"github.com/antidote-mq/antidote/pgstore"
)

// BenchmarkIdempotencyStoreClaimComplete measures one Claim of a new key
// plus its Complete (the cost idempotency adds to every first delivery),
// one caller at a time ("serial") and with 16 callers per CPU ("parallel";
// a shared store is round-trip bound, so concurrency is how a consumer with
// many partitions or handlers uses it); and RunTx (transactional mode:
// begin, lock + claim, complete, commit, with an empty handler). claims/s
// is the throughput.
//
//	ANTIDOTE_REQUIRE_SERVICES=1 go test -run '^$' -bench IdempotencyStoreClaimComplete -benchmem ./pgstore/
func BenchmarkIdempotencyStoreClaimComplete(b *testing.B) {
	ctx := context.Background()
	for _, par := range []int{0, 16} {
		name := "serial"
		if par > 0 {
			name = "parallel"
		}
		b.Run(name, func(b *testing.B) {
			storetest.BenchClaimComplete(b, openIdempotencyStore(b, pgstore.IdempotencyStoreConfig{}), par)
		})
	}
	noop := func(context.Context) ([]byte, error) { return nil, nil }
	for _, par := range []int{0, 16} {
		name := "tx/serial"
		if par > 0 {
			name = "tx/parallel"
		}
		b.Run(name, func(b *testing.B) {
			s := openIdempotencyStore(b, pgstore.IdempotencyStoreConfig{})
			storetest.BenchLoop(b, par, func(key string) error {
				c, err := s.RunTx(ctx, key, noop)
				if err == nil && c.Status != idempotency.StatusClaimed {
					err = fmt.Errorf("RunTx of a new key: %s", c.Status)
				}
				return err
			})
		})
	}
}
