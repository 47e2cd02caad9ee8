package redisstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/antidote-mq/antidote/idempotency"
)

// DefaultIdempotencyStorePrefix prefixes every key an IdempotencyStore
// writes when the config leaves Prefix empty.
const DefaultIdempotencyStorePrefix = "antidote:idempotency:"

// claimAttempts bounds how often Claim retries when the key it found taken
// vanished before it could read it.
const claimAttempts = 5

// Values of an IdempotencyStore key: "c:<token>" while claimed (with the
// lease as its TTL), "d:<token>:<result>" once completed (TTL = retention).
// The token stays in the completed value so completing twice is recognised
// as the same claim.
const (
	claimedPrefix = "c:"
	donePrefix    = "d:"
)

// completeScript sets the completed value only while the key is held by
// the caller's token, or absent (the lease ran out and nobody claimed it
// since), or already completed by the same token.
var completeScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[1] or string.sub(v, 1, string.len(ARGV[2])) == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[2] .. ARGV[3], 'PX', ARGV[4])
  return 1
end
return 0
`)

// releaseScript deletes the key only while it is held by the caller's token.
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`)

// IdempotencyStoreConfig configures NewIdempotencyStore. Set exactly one of
// Client and Addr.
type IdempotencyStoreConfig struct {
	// Client is an existing go-redis client (*redis.Client,
	// *redis.ClusterClient, ...); the store never closes it. If Client is
	// nil, Addr must be set.
	Client redis.UniversalClient
	// Addr is "host:port"; the store opens its own client and closes it on
	// Close. If Addr is empty, Client must be set.
	Addr string
	// Prefix is prepended to every key. If Prefix is empty, the store uses
	// "antidote:idempotency:".
	Prefix string
	// Retention is how long a completed key is remembered (its TTL). If
	// Retention is zero, the store uses idempotency.DefaultRetention (24h).
	// Longer catches later duplicates and uses more memory.
	Retention time.Duration
}

func (c *IdempotencyStoreConfig) setDefaults() {
	if c.Prefix == "" {
		c.Prefix = DefaultIdempotencyStorePrefix
	}
	if c.Retention == 0 {
		c.Retention = idempotency.DefaultRetention
	}
}

// Validate reports every field that cannot work, in field order.
func (c IdempotencyStoreConfig) Validate() error {
	errs := validateClient("IdempotencyStoreConfig", c.Client, c.Addr)
	errs = append(errs, validateDuration("IdempotencyStoreConfig.Retention", c.Retention, idempotency.DefaultRetention))
	return errors.Join(errs...)
}

// IdempotencyStore is an idempotency.Store in Redis, one string key per
// idempotency key. Claim is SET key "c:<token>" NX PX <lease>: atomic, and
// a claim can never exist without its expiry, so a consumer that dies
// leaves nothing behind longer than its lease. Complete and Release are Lua
// scripts that check the claim owner token before they write. Keys expire
// by Redis TTL; nothing to clean up.
//
// Durability is Redis's: a Redis restart keeps only what its persistence
// (RDB, AOF) wrote, so completed keys can be forgotten and duplicates after
// that processed again. Safe for concurrent use.
type IdempotencyStore struct {
	c         *conn
	retention time.Duration
}

// NewIdempotencyStore fills cfg's defaults, validates it and, when cfg.Addr
// is set, opens a client (lazily connected: the first call reports an
// unreachable server).
func NewIdempotencyStore(cfg IdempotencyStoreConfig) (*IdempotencyStore, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &IdempotencyStore{c: newConn(cfg.Client, cfg.Addr, cfg.Prefix), retention: cfg.Retention}, nil
}

// Claim implements idempotency.Store.
func (s *IdempotencyStore) Claim(ctx context.Context, key string, lease time.Duration) (idempotency.Claim, error) {
	if s.c.closed() {
		return idempotency.Claim{}, fmt.Errorf("redisstore: idempotency store: claim %q: %w", key, idempotency.ErrClosed)
	}
	if err := idempotency.CheckLease(lease); err != nil {
		return idempotency.Claim{}, err
	}
	k := s.c.key(key)
	for attempt := 0; attempt < claimAttempts; attempt++ {
		token := idempotency.NewToken()
		// SET NX PX: go-redis picks PX for sub-second precision leases.
		ok, err := s.c.client.SetNX(ctx, k, claimedPrefix+token, lease).Result()
		if err != nil {
			return idempotency.Claim{}, fmt.Errorf("redisstore: idempotency store: claim %q: %w", k, err)
		}
		if ok {
			return idempotency.Claim{Key: key, Status: idempotency.StatusClaimed, Token: token}, nil
		}
		var get *redis.StringCmd
		var ttl *redis.DurationCmd
		if _, err := s.c.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			get = p.Get(ctx, k)
			ttl = p.PTTL(ctx, k)
			return nil
		}); err != nil && !errors.Is(err, redis.Nil) {
			return idempotency.Claim{}, fmt.Errorf("redisstore: idempotency store: read status of %q: %w", k, err)
		}
		v, err := get.Result()
		if errors.Is(err, redis.Nil) {
			continue // released or expired in between: try again
		}
		if err != nil {
			return idempotency.Claim{}, fmt.Errorf("redisstore: idempotency store: read status of %q: %w", k, err)
		}
		if rest, ok := strings.CutPrefix(v, donePrefix); ok {
			var result []byte
			if _, r, found := strings.Cut(rest, ":"); found && r != "" {
				result = []byte(r)
			}
			return idempotency.Claim{Key: key, Status: idempotency.StatusCompleted, Result: result}, nil
		}
		return idempotency.Claim{Key: key, Status: idempotency.StatusInProgress, LeaseLeft: max(ttl.Val(), 0)}, nil
	}
	return idempotency.Claim{}, fmt.Errorf("redisstore: idempotency store: claim %q: the key changed hands %d times while claiming; try again", k, claimAttempts)
}

// Complete implements idempotency.Store.
func (s *IdempotencyStore) Complete(ctx context.Context, c idempotency.Claim, result []byte) error {
	if err := idempotency.CheckClaimed(c); err != nil {
		return err
	}
	if s.c.closed() {
		return fmt.Errorf("redisstore: idempotency store: complete %q: %w", c.Key, idempotency.ErrClosed)
	}
	k := s.c.key(c.Key)
	n, err := completeScript.Run(ctx, s.c.client, []string{k},
		claimedPrefix+c.Token, donePrefix+c.Token+":", result, s.retention.Milliseconds()).Int()
	if err != nil {
		return fmt.Errorf("redisstore: idempotency store: complete %q: %w", k, err)
	}
	if n != 1 {
		return fmt.Errorf("redisstore: idempotency store: complete %q: %w", k, idempotency.ErrClaimLost)
	}
	return nil
}

// Release implements idempotency.Store.
func (s *IdempotencyStore) Release(ctx context.Context, c idempotency.Claim) error {
	if err := idempotency.CheckClaimed(c); err != nil {
		return err
	}
	if s.c.closed() {
		return fmt.Errorf("redisstore: idempotency store: release %q: %w", c.Key, idempotency.ErrClosed)
	}
	k := s.c.key(c.Key)
	if err := releaseScript.Run(ctx, s.c.client, []string{k}, claimedPrefix+c.Token).Err(); err != nil {
		return fmt.Errorf("redisstore: idempotency store: release %q: %w", k, err)
	}
	return nil
}

// Close closes the client if the store opened it (never a Client passed in
// the config). Idempotent.
func (s *IdempotencyStore) Close() error { return s.c.close() }

var _ idempotency.Store = (*IdempotencyStore)(nil)
