package idempotency_test

import (
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/antidote-mq/antidote/idempotency"
)

// BenchmarkStoreClaimComplete measures one Claim of a new key plus its
// Complete (the cost idempotency adds to every first delivery), per store,
// one caller at a time ("serial") and with 16 callers per CPU ("parallel";
// shared stores are round-trip bound, so concurrency is how a consumer with
// many partitions or handlers uses them). For PostgreSQL also RunTx (transactional
// mode: begin, lock + claim, complete, commit, with an empty handler).
// claims/s is the throughput.
//
//	ANTIDOTE_REQUIRE_SERVICES=1 go test -run '^$' -bench StoreClaimComplete -benchmem ./idempotency/
func BenchmarkStoreClaimComplete(b *testing.B) {
	ctx := context.Background()
	for _, st := range stores {
		b.Run(st.name+"/serial", func(b *testing.B) {
			s := st.open(b, 0)
			benchClaimComplete(b, s, 0)
		})
		b.Run(st.name+"/parallel", func(b *testing.B) {
			s := st.open(b, 0)
			benchClaimComplete(b, s, 16)
		})
	}
	noop := func(context.Context) ([]byte, error) { return nil, nil }
	for _, par := range []int{0, 16} {
		name := "postgres-tx/serial"
		if par > 0 {
			name = "postgres-tx/parallel"
		}
		b.Run(name, func(b *testing.B) {
			s := openPostgresStore(b, idempotency.PostgresStoreConfig{})
			benchLoop(b, par, func(key string) error {
				c, err := s.RunTx(ctx, key, noop)
				if err == nil && c.Status != idempotency.StatusClaimed {
					err = fmt.Errorf("RunTx of a new key: %s", c.Status)
				}
				return err
			})
		})
	}
}

func benchClaimComplete(b *testing.B, s idempotency.Store, par int) {
	ctx := context.Background()
	benchLoop(b, par, func(key string) error {
		c, err := s.Claim(ctx, key, time.Minute)
		if err != nil {
			return err
		}
		if c.Status != idempotency.StatusClaimed {
			return fmt.Errorf("Claim of a new key: %s", c.Status)
		}
		return s.Complete(ctx, c, nil)
	})
}

// benchLoop calls op with fresh keys b.N times: in one goroutine when par
// is 0, else with par goroutines per GOMAXPROCS. It reports claims/s.
func benchLoop(b *testing.B, par int, op func(key string) error) {
	var n atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	if par == 0 {
		for i := 0; i < b.N; i++ {
			if err := op("k" + strconv.Itoa(i)); err != nil {
				b.Fatal(err)
			}
		}
	} else {
		b.SetParallelism(par)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := op("k" + strconv.FormatInt(n.Add(1), 10)); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "claims/s")
}
