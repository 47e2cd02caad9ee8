package claimcheck_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/antidote-mq/antidote/claimcheck"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/poison"
)

func stores(t *testing.T) map[string]poison.ClaimCheck {
	t.Helper()
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testenv.PostgresURL(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	table := "claims_" + watermill.NewShortUUID()
	pg, err := claimcheck.NewPostgresStore(ctx, claimcheck.PostgresConfig{Pool: pool, Table: table})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = pool.Exec(context.Background(), `DROP TABLE IF EXISTS "`+table+`"`) })
	rd, err := claimcheck.NewRedisStore(claimcheck.RedisConfig{Addr: testenv.RedisAddr(t), Prefix: "test:claims:" + watermill.NewShortUUID() + ":"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rd.Close() })
	return map[string]poison.ClaimCheck{"memory": claimcheck.NewMemoryStore(), "postgres": pg, "redis": rd}
}

// A letter too large for its DLQ is claimed, stored and read back whole:
// payload byte for byte (8 MB, every byte value) and every metadata entry,
// on each store; storing it again is idempotent; a missing claim is
// ErrClaimNotFound, never an empty payload.
func TestClaimRoundTrip(t *testing.T) {
	ctx := context.Background()
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
	for name, cc := range stores(t) {
		t.Run(name, func(t *testing.T) {
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
			if err := cc.Delete(ctx, key); err != nil {
				t.Fatal(err)
			}
			if _, err := poison.ResolveClaim(ctx, cc, claimed); !errors.Is(err, poison.ErrClaimNotFound) {
				t.Fatalf("after Delete: %v, want ErrClaimNotFound", err)
			}
			if err := cc.Delete(ctx, key); err != nil {
				t.Fatalf("deleting a missing claim: %v", err)
			}
		})
	}
	if _, err := poison.ResolveClaim(ctx, nil, mustClaim(t, letter)); err == nil {
		t.Fatal("a claimed letter without a store resolved")
	}
}

func mustClaim(t *testing.T, letter *message.Message) *message.Message {
	t.Helper()
	_, _, c, err := poison.ClaimLetter(letter)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestPostgresConfigValidates(t *testing.T) {
	ctx := context.Background()
	if _, err := claimcheck.NewPostgresStore(ctx, claimcheck.PostgresConfig{}); err == nil {
		t.Error("no database accepted")
	}
	pool, err := pgxpool.New(ctx, testenv.PostgresURL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := claimcheck.NewPostgresStore(ctx, claimcheck.PostgresConfig{Pool: pool, Table: "x; DROP TABLE y"}); err == nil {
		t.Error("table name with SQL accepted")
	}
	if _, err := claimcheck.NewRedisStore(claimcheck.RedisConfig{}); err == nil {
		t.Error("no Redis accepted")
	}
}
