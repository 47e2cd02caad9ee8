package redisstore_test

import (
	"testing"

	"github.com/antidote-mq/antidote/internal/storetest"
)

// BenchmarkIdempotencyStoreClaimComplete measures one Claim of a new key
// plus its Complete (the cost idempotency adds to every first delivery),
// one caller at a time ("serial") and with 16 callers per CPU ("parallel";
// a shared store is round-trip bound, so concurrency is how a consumer with
// many partitions or handlers uses it). claims/s is the throughput.
//
//	ANTIDOTE_REQUIRE_SERVICES=1 go test -run '^$' -bench IdempotencyStoreClaimComplete -benchmem ./redisstore/
func BenchmarkIdempotencyStoreClaimComplete(b *testing.B) {
	b.Run("serial", func(b *testing.B) { storetest.BenchClaimComplete(b, openIdempotencyStore(b, 0), 0) })
	b.Run("parallel", func(b *testing.B) { storetest.BenchClaimComplete(b, openIdempotencyStore(b, 0), 16) })
}
