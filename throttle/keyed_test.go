package throttle_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/antidote-mq/antidote/throttle"
)

// Beyond MaxKeys the least recently used key's bucket is dropped: a used
// key keeps its (spent) bucket, a dropped one comes back full.
func TestKeyedLimiterDropsLeastRecentlyUsed(t *testing.T) {
	k, err := throttle.NewKeyedLimiter(throttle.KeyedConfig{Rate: 0.01, Burst: 2, MaxKeys: 2})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, key := range []string{"a", "b", "a", "c"} { // c drops b, not a
		if err := k.Wait(ctx, key); err != nil {
			t.Fatal(err)
		}
	}
	if got := k.Evicted(); got != 1 {
		t.Fatalf("Evicted = %d; want 1", got)
	}
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if err := k.Wait(short, "a"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait on a, which spent its burst of 2 = %v; want it to wait (a's bucket kept)", err)
	}
	for i := 0; i < 2; i++ { // b's bucket is new: a full burst
		if err := k.Wait(ctx, "b"); err != nil {
			t.Fatal(err)
		}
	}
}
