// Package storetest holds the behaviour every store implementation must
// have (delivery trackers, idempotency stores, claim checks), run by the
// tests of the packages that implement them: the memory stores next to
// their interfaces, pgstore and redisstore.
package storetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/antidote-mq/antidote/idempotency"
	"github.com/antidote-mq/antidote/poison"
)

// Suffix returns 12 random hex digits, to name a test's own table or key
// prefix.
func Suffix(t testing.TB) string {
	t.Helper()
	b := make([]byte, 6)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return hex.EncodeToString(b)
}

// DeliveryTracker runs the behaviour every poison.DeliveryTracker must
// have against trackers that open returns (one per subtest).
func DeliveryTracker(t *testing.T, open func(t *testing.T) poison.DeliveryTracker) {
	ctx := context.Background()

	t.Run("counts and forgets", func(t *testing.T) {
		tr := open(t)
		for want := 1; want <= 3; want++ {
			n, err := tr.Incr(ctx, "a")
			require.NoError(t, err)
			assert.Equal(t, want, n)
		}
		n, err := tr.Incr(ctx, "b")
		require.NoError(t, err)
		assert.Equal(t, 1, n, "keys are independent")

		require.NoError(t, tr.Forget(ctx, "a"))
		n, err = tr.Incr(ctx, "a")
		require.NoError(t, err)
		assert.Equal(t, 1, n, "a forgotten key starts again at 1")
		require.NoError(t, tr.Forget(ctx, "never-seen"), "forgetting an unknown key is not an error")
	})

	t.Run("takes a count back", func(t *testing.T) {
		tr := open(t)
		d, ok := tr.(poison.DeliveryDecrementer)
		require.True(t, ok, "the tracker can take a count back")
		for want := 1; want <= 2; want++ {
			_, err := tr.Incr(ctx, "d")
			require.NoError(t, err)
		}
		n, err := d.Decr(ctx, "d")
		require.NoError(t, err)
		assert.Equal(t, 1, n)
		n, err = tr.Incr(ctx, "d")
		require.NoError(t, err)
		assert.Equal(t, 2, n, "the next count follows the one taken back")
		for i := 0; i < 3; i++ {
			_, err = d.Decr(ctx, "d")
			require.NoError(t, err)
		}
		n, err = tr.Incr(ctx, "d")
		require.NoError(t, err)
		assert.Equal(t, 1, n, "never below 0")
		n, err = d.Decr(ctx, "never-seen")
		require.NoError(t, err)
		assert.Equal(t, 0, n, "an unknown key is 0")
	})

	t.Run("reads a count without changing it", func(t *testing.T) {
		tr := open(t)
		p, ok := tr.(poison.DeliveryPeeker)
		require.True(t, ok, "the tracker can read a count")
		n, err := p.Count(ctx, "p")
		require.NoError(t, err)
		assert.Equal(t, 0, n, "an unknown key is 0")
		for range 2 {
			_, err = tr.Incr(ctx, "p")
			require.NoError(t, err)
		}
		for range 2 { // reading twice changes nothing
			n, err = p.Count(ctx, "p")
			require.NoError(t, err)
			assert.Equal(t, 2, n)
		}
		_, err = tr.(poison.DeliveryDecrementer).Decr(ctx, "p")
		require.NoError(t, err)
		n, err = p.Count(ctx, "p")
		require.NoError(t, err)
		assert.Equal(t, 1, n, "after a count taken back")
		require.NoError(t, tr.Forget(ctx, "p"))
		n, err = p.Count(ctx, "p")
		require.NoError(t, err)
		assert.Equal(t, 0, n, "after Forget")
		n, err = tr.Incr(ctx, "p")
		require.NoError(t, err)
		assert.Equal(t, 1, n, "Count created nothing")
	})

	t.Run("concurrent increments are not lost", func(t *testing.T) {
		tr := open(t)
		const workers, each = 8, 25
		var wg sync.WaitGroup
		seen := make(chan int, workers*each)
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < each; i++ {
					n, err := tr.Incr(ctx, "shared")
					if !assert.NoError(t, err) {
						return
					}
					seen <- n
				}
			}()
		}
		wg.Wait()
		close(seen)
		got := map[int]bool{}
		for n := range seen {
			assert.False(t, got[n], "count %d returned twice", n)
			got[n] = true
		}
		assert.Len(t, got, workers*each, "every Incr returns a distinct count 1..N")
		n, err := tr.Incr(ctx, "shared")
		require.NoError(t, err)
		assert.Equal(t, workers*each+1, n)
	})

	t.Run("close", func(t *testing.T) {
		tr := open(t)
		require.NoError(t, tr.Close())
		require.NoError(t, tr.Close(), "Close is idempotent")
		_, err := tr.Incr(ctx, "a")
		assert.ErrorIs(t, err, poison.ErrDeliveryTrackerClosed)
		assert.ErrorIs(t, tr.Forget(ctx, "a"), poison.ErrDeliveryTrackerClosed)
		if p, ok := tr.(poison.DeliveryPeeker); ok {
			_, err = p.Count(ctx, "a")
			assert.ErrorIs(t, err, poison.ErrDeliveryTrackerClosed)
		}
	})
}

// IdempotencyStore runs the behaviour every idempotency.Store must have
// against stores that open returns (one per subtest, with the retention
// given; 0 for the default).
func IdempotencyStore(t *testing.T, open func(testing.TB, time.Duration) idempotency.Store) {
	ctx := context.Background()
	const lease = 5 * time.Second

	t.Run("claim, complete, duplicate", func(t *testing.T) {
		s := open(t, 0)
		c, err := s.Claim(ctx, "k1", lease)
		require.NoError(t, err)
		assert.Equal(t, idempotency.StatusClaimed, c.Status)
		assert.NotEmpty(t, c.Token)

		busy, err := s.Claim(ctx, "k1", lease)
		require.NoError(t, err)
		assert.Equal(t, idempotency.StatusInProgress, busy.Status, "a live claim is not handed out twice")
		assert.Empty(t, busy.Token)
		assert.Greater(t, busy.LeaseLeft, time.Duration(0))
		assert.LessOrEqual(t, busy.LeaseLeft, lease)

		require.NoError(t, s.Complete(ctx, c, []byte("output\x00bytes")))
		require.NoError(t, s.Complete(ctx, c, []byte("output\x00bytes")), "completing the same claim twice is fine")
		dup, err := s.Claim(ctx, "k1", lease)
		require.NoError(t, err)
		assert.Equal(t, idempotency.StatusCompleted, dup.Status)
		assert.Equal(t, []byte("output\x00bytes"), dup.Result, "the stored result comes back byte for byte")

		other, err := s.Claim(ctx, "k2", lease)
		require.NoError(t, err)
		assert.Equal(t, idempotency.StatusClaimed, other.Status, "keys are independent")
		require.NoError(t, s.Complete(ctx, other, nil))
		dup, err = s.Claim(ctx, "k2", lease)
		require.NoError(t, err)
		assert.Equal(t, idempotency.StatusCompleted, dup.Status)
		assert.Empty(t, dup.Result)
	})

	t.Run("release gives the key back for the retry", func(t *testing.T) {
		s := open(t, 0)
		first, err := s.Claim(ctx, "k", lease)
		require.NoError(t, err)
		require.NoError(t, s.Release(ctx, first))
		retry, err := s.Claim(ctx, "k", lease)
		require.NoError(t, err)
		assert.Equal(t, idempotency.StatusClaimed, retry.Status, "a failed attempt is not a duplicate")
		assert.NotEqual(t, first.Token, retry.Token)

		// The first holder's stale release must not free the retry's claim.
		require.NoError(t, s.Release(ctx, first))
		busy, err := s.Claim(ctx, "k", lease)
		require.NoError(t, err)
		assert.Equal(t, idempotency.StatusInProgress, busy.Status)
		// Nor can a release undo a completion.
		require.NoError(t, s.Complete(ctx, retry, nil))
		require.NoError(t, s.Release(ctx, retry))
		dup, err := s.Claim(ctx, "k", lease)
		require.NoError(t, err)
		assert.Equal(t, idempotency.StatusCompleted, dup.Status)
	})

	t.Run("expired lease is taken over and the overrunner loses", func(t *testing.T) {
		s := open(t, 0)
		slow, err := s.Claim(ctx, "k", 50*time.Millisecond)
		require.NoError(t, err)
		time.Sleep(150 * time.Millisecond)
		takeover, err := s.Claim(ctx, "k", lease)
		require.NoError(t, err)
		require.Equal(t, idempotency.StatusClaimed, takeover.Status, "a claim past its lease counts as absent")
		assert.ErrorIs(t, s.Complete(ctx, slow, nil), idempotency.ErrClaimLost)
		require.NoError(t, s.Release(ctx, slow))
		busy, err := s.Claim(ctx, "k", lease)
		require.NoError(t, err)
		assert.Equal(t, idempotency.StatusInProgress, busy.Status, "the overrunner's release leaves the new claim alone")
		require.NoError(t, s.Complete(ctx, takeover, nil))
	})

	t.Run("complete past the lease while nobody took over", func(t *testing.T) {
		s := open(t, 0)
		c, err := s.Claim(ctx, "k", 50*time.Millisecond)
		require.NoError(t, err)
		time.Sleep(150 * time.Millisecond)
		require.NoError(t, s.Complete(ctx, c, nil))
		dup, err := s.Claim(ctx, "k", lease)
		require.NoError(t, err)
		assert.Equal(t, idempotency.StatusCompleted, dup.Status)
	})

	t.Run("retention ends", func(t *testing.T) {
		s := open(t, 100*time.Millisecond)
		c, err := s.Claim(ctx, "k", lease)
		require.NoError(t, err)
		require.NoError(t, s.Complete(ctx, c, nil))
		dup, err := s.Claim(ctx, "k", lease)
		require.NoError(t, err)
		assert.Equal(t, idempotency.StatusCompleted, dup.Status)
		time.Sleep(250 * time.Millisecond)
		again, err := s.Claim(ctx, "k", lease)
		require.NoError(t, err)
		assert.Equal(t, idempotency.StatusClaimed, again.Status, "a completion past its retention counts as absent")
	})

	t.Run("concurrent claims: one winner per key", func(t *testing.T) {
		s := open(t, 0)
		const workers, keys = 8, 40
		var mu sync.Mutex
		claimed := map[string]int{}
		var wg sync.WaitGroup
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for k := 0; k < keys; k++ {
					key := "key-" + string(rune('A'+k%26)) + string(rune('a'+k/26))
					c, err := s.Claim(ctx, key, lease)
					if !assert.NoError(t, err) {
						return
					}
					if c.Status == idempotency.StatusClaimed {
						mu.Lock()
						claimed[key]++
						mu.Unlock()
						assert.NoError(t, s.Complete(ctx, c, nil))
					}
				}
			}()
		}
		wg.Wait()
		assert.Len(t, claimed, keys, "every key was claimed")
		for k, n := range claimed {
			assert.Equal(t, 1, n, "key %s claimed %d times", k, n)
		}
	})

	t.Run("misuse and close", func(t *testing.T) {
		s := open(t, 0)
		_, err := s.Claim(ctx, "k", 0)
		assert.Error(t, err, "a zero lease is refused")
		busy := idempotency.Claim{Key: "k", Status: idempotency.StatusInProgress}
		assert.ErrorIs(t, s.Complete(ctx, busy, nil), idempotency.ErrNotClaimed)
		assert.ErrorIs(t, s.Release(ctx, busy), idempotency.ErrNotClaimed)

		c, err := s.Claim(ctx, "k", lease)
		require.NoError(t, err)
		require.NoError(t, s.Close())
		require.NoError(t, s.Close(), "Close is idempotent")
		_, err = s.Claim(ctx, "k", lease)
		assert.ErrorIs(t, err, idempotency.ErrClosed)
		assert.ErrorIs(t, s.Complete(ctx, c, nil), idempotency.ErrClosed)
		assert.ErrorIs(t, s.Release(ctx, c), idempotency.ErrClosed)
	})
}

// ClaimCheck checks cc with a letter too large for its DLQ: claimed,
// stored and read back whole, payload byte for byte (8 MB, every byte
// value) and every metadata entry; storing it again is idempotent; its
// reference copied into another letter (another UUID, or the same UUID
// with another handler) reads nothing (ErrClaimMismatch); a missing claim
// is ErrClaimNotFound, never an empty payload.
func ClaimCheck(t *testing.T, cc poison.ClaimCheck) {
	t.Helper()
	ctx := context.Background()
	letter := BigLetter()
	payload := letter.Payload
	key, data, claimed, err := poison.ClaimLetter(letter)
	if err != nil {
		t.Fatal(err)
	}
	if len(claimed.Payload) != 0 || claimed.Metadata.Get("big") != "" || claimed.Metadata.Get(poison.KeyReason) != "permanent" ||
		claimed.Metadata.Get("partition_key") != "k" {
		t.Fatalf("claimed letter keeps %d bytes, big=%d, reason %q, partition_key %q (small entries stay)", len(claimed.Payload),
			len(claimed.Metadata.Get("big")), claimed.Metadata.Get(poison.KeyReason), claimed.Metadata.Get("partition_key"))
	}
	for i := 0; i < 2; i++ {
		if err := cc.Put(ctx, key, data); err != nil {
			t.Fatalf("put %d: %v", i, err)
		}
	}
	back, err := poison.ResolveClaim(ctx, cc, claimed)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back.Payload, payload) {
		t.Fatalf("payload came back %d bytes, want the original %d", len(back.Payload), len(payload))
	}
	for k, v := range letter.Metadata {
		if back.Metadata[k] != v {
			t.Errorf("metadata %q came back %d bytes, want %d", k, len(back.Metadata[k]), len(v))
		}
	}
	if len(back.Metadata) != len(letter.Metadata) {
		t.Errorf("metadata has %d keys, want %d", len(back.Metadata), len(letter.Metadata))
	}
	for _, forged := range []*message.Message{copyLetter(claimed, "u-forged"), copyLetter(claimed, claimed.UUID, poison.KeyHandler, "other")} {
		if got, err := poison.ResolveClaim(ctx, cc, forged); got != nil || !errors.Is(err, poison.ErrClaimMismatch) {
			t.Errorf("the reference in letter %s (handler %q): %v, want nothing and ErrClaimMismatch", forged.UUID, forged.Metadata.Get(poison.KeyHandler), err)
		}
	}
	if err := cc.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	if _, err := poison.ResolveClaim(ctx, cc, claimed); !errors.Is(err, poison.ErrClaimNotFound) {
		t.Fatalf("after Delete: %v, want ErrClaimNotFound", err)
	}
	if err := cc.Delete(ctx, key); err != nil {
		t.Fatalf("deleting a missing claim: %v", err)
	}
}

// copyLetter is m's metadata (with set applied) under uuid, no payload:
// what someone writing straight to the DLQ can make of a letter they saw.
func copyLetter(m *message.Message, uuid string, set ...string) *message.Message {
	out := message.NewMessage(uuid, nil)
	for k, v := range m.Metadata {
		out.Metadata.Set(k, v)
	}
	for i := 0; i+1 < len(set); i += 2 {
		out.Metadata.Set(set[i], set[i+1])
	}
	return out
}

// BigLetter is the letter ClaimCheck stores: an 8 MB payload of every
// byte value, envelope keys, small and large metadata entries, a NUL in a
// key and a value.
func BigLetter() *message.Message {
	payload := make([]byte, 8<<20)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	letter := message.NewMessage("u-1", payload)
	letter.Metadata.Set(poison.KeyReason, "permanent")
	letter.Metadata.Set(poison.KeyError, "bad")
	letter.Metadata.Set("partition_key", "k")
	letter.Metadata.Set("big", string(bytes.Repeat([]byte{'v'}, 100_000)))
	letter.Metadata.Set("nul\x00key", "nul\x00value")
	return letter
}

// BenchClaimComplete measures Claim of a new key plus its Complete on s
// (see BenchLoop for par).
func BenchClaimComplete(b *testing.B, s idempotency.Store, par int) {
	ctx := context.Background()
	BenchLoop(b, par, func(key string) error {
		c, err := s.Claim(ctx, key, time.Minute)
		if err != nil {
			return err
		}
		if c.Status != idempotency.StatusClaimed {
			return fmt.Errorf("a claim of a new key: %s", c.Status)
		}
		return s.Complete(ctx, c, nil)
	})
}

// BenchLoop calls op with fresh keys b.N times: in one goroutine when par
// is 0, else with par goroutines per GOMAXPROCS. It reports claims/s.
func BenchLoop(b *testing.B, par int, op func(key string) error) {
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
