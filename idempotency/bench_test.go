package idempotency_test

import (
	"testing"

	"github.com/antidote-mq/antidote/internal/storetest"
)

// BenchmarkStoreClaimComplete measures one Claim of a new key plus its
// Complete (the cost idempotency adds to every first delivery), per store,
// one caller at a time ("serial") and with 16 callers per CPU ("parallel").
// claims/s is the throughput. The shared stores' benchmarks are in pgstore
// and redisstore.
//
//	go test -run '^$' -bench StoreClaimComplete -benchmem ./idempotency/
func BenchmarkStoreClaimComplete(b *testing.B) {
	for _, st := range stores {
		b.Run(st.name+"/serial", func(b *testing.B) {
			s := st.open(b, 0)
			storetest.BenchClaimComplete(b, s, 0)
		})
		b.Run(st.name+"/parallel", func(b *testing.B) {
			s := st.open(b, 0)
			storetest.BenchClaimComplete(b, s, 16)
		})
	}
}
