package idempotency

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// DefaultRedisStorePrefix prefixes every key a RedisStore writes when the
// config leaves Prefix empty.
const DefaultRedisStorePrefix = "antidote:idempotency:"

// redisClaimAttempts bounds how often Claim retries when the key it found
// taken vanished before it could read it.
const redisClaimAttempts = 5

// Values of a RedisStore key: "c:<token>" while claimed (with the lease as
// its TTL), "d:<token>:<result>" once completed (TTL = retention). The token
// stays in the completed value so completing twice is recognised as the
// same claim.
const (
	redisClaimedPrefix = "c:"
	redisDonePrefix    = "d:"
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

// RedisStoreConfig configures NewRedisStore. Set exactly one of Client and
// Addr.
type RedisStoreConfig struct {
	// Client is an existing go-redis client (*redis.Client,
	// *redis.ClusterClient, ...). The store never closes it.
	Client redis.UniversalClient
	// Addr is "host:port"; the store opens its own client and closes it on
	// Close.
	Addr string
	// Prefix is prepended to every key. Default "antidote:idempotency:".
	Prefix string
	// Retention is how long a completed key is remembered (its TTL).
	// Default 24h. Longer catches later duplicates and uses more memory.
	Retention time.Duration
}

func (c *RedisStoreConfig) setDefaults() {
	if c.Prefix == "" {
		c.Prefix = DefaultRedisStorePrefix
	}
	if c.Retention == 0 {
		c.Retention = DefaultRetention
	}
}

// Validate reports a config that cannot work.
func (c RedisStoreConfig) Validate() error {
	switch {
	case c.Client == nil && c.Addr == "":
		return errors.New("idempotency: RedisStoreConfig needs a server: set Client to a go-redis client or Addr to \"host:port\" such as 127.0.0.1:6379")
	case c.Client != nil && c.Addr != "":
		return errors.New("idempotency: RedisStoreConfig has both Client and Addr set; set only one (Client to share an existing client, Addr to let the store open and close its own)")
	}
	return validRetention("RedisStoreConfig", c.Retention)
}

// RedisStore is a Store in Redis, one string key per idempotency key. Claim
// is SET key "c:<token>" NX PX <lease>: atomic, and a claim can never exist
// without its expiry, so a consumer that dies leaves nothing behind longer
// than its lease. Complete and Release are Lua scripts that check the claim
// owner token before they write. Keys expire by Redis TTL; nothing to clean
// up.
//
// Durability is Redis's: a Redis restart keeps only what its persistence
// (RDB, AOF) wrote, so completed keys can be forgotten and duplicates after
// that processed again. Safe for concurrent use.
type RedisStore struct {
	cfg        RedisStoreConfig
	client     redis.UniversalClient
	ownsClient bool
	closed     atomic.Bool
}

// NewRedisStore validates cfg and, when cfg.Addr is set, opens a client
// (lazily connected: the first call reports an unreachable server).
func NewRedisStore(cfg RedisStoreConfig) (*RedisStore, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	s := &RedisStore{cfg: cfg, client: cfg.Client}
	if s.client == nil {
		s.client = redis.NewClient(&redis.Options{Addr: cfg.Addr})
		s.ownsClient = true
	}
	return s, nil
}

// Claim implements Store.
func (s *RedisStore) Claim(ctx context.Context, key string, lease time.Duration) (Claim, error) {
	if s.closed.Load() {
		return Claim{}, fmt.Errorf("idempotency: claim %q: %w", key, ErrClosed)
	}
	if err := validLease(lease); err != nil {
		return Claim{}, err
	}
	k := s.cfg.Prefix + key
	for attempt := 0; attempt < redisClaimAttempts; attempt++ {
		token := newToken()
		// SET NX PX: go-redis picks PX for sub-second precision leases.
		ok, err := s.client.SetNX(ctx, k, redisClaimedPrefix+token, lease).Result()
		if err != nil {
			return Claim{}, fmt.Errorf("idempotency: redis store: claim %q: %w", k, err)
		}
		if ok {
			return Claim{Key: key, Status: StatusClaimed, Token: token}, nil
		}
		var get *redis.StringCmd
		var ttl *redis.DurationCmd
		if _, err := s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			get = p.Get(ctx, k)
			ttl = p.PTTL(ctx, k)
			return nil
		}); err != nil && !errors.Is(err, redis.Nil) {
			return Claim{}, fmt.Errorf("idempotency: redis store: read status of %q: %w", k, err)
		}
		v, err := get.Result()
		if errors.Is(err, redis.Nil) {
			continue // released or expired in between: try again
		}
		if err != nil {
			return Claim{}, fmt.Errorf("idempotency: redis store: read status of %q: %w", k, err)
		}
		if rest, ok := strings.CutPrefix(v, redisDonePrefix); ok {
			var result []byte
			if _, r, found := strings.Cut(rest, ":"); found && r != "" {
				result = []byte(r)
			}
			return Claim{Key: key, Status: StatusCompleted, Result: result}, nil
		}
		return Claim{Key: key, Status: StatusInProgress, LeaseLeft: max(ttl.Val(), 0)}, nil
	}
	return Claim{}, fmt.Errorf("idempotency: redis store: claim %q: the key changed hands %d times while claiming; try again", k, redisClaimAttempts)
}

// Complete implements Store.
func (s *RedisStore) Complete(ctx context.Context, c Claim, result []byte) error {
	if err := checkClaimed(c); err != nil {
		return err
	}
	if s.closed.Load() {
		return fmt.Errorf("idempotency: complete %q: %w", c.Key, ErrClosed)
	}
	k := s.cfg.Prefix + c.Key
	n, err := completeScript.Run(ctx, s.client, []string{k},
		redisClaimedPrefix+c.Token, redisDonePrefix+c.Token+":", result, s.cfg.Retention.Milliseconds()).Int()
	if err != nil {
		return fmt.Errorf("idempotency: redis store: complete %q: %w", k, err)
	}
	if n != 1 {
		return fmt.Errorf("idempotency: redis store: complete %q: %w", k, ErrClaimLost)
	}
	return nil
}

// Release implements Store.
func (s *RedisStore) Release(ctx context.Context, c Claim) error {
	if err := checkClaimed(c); err != nil {
		return err
	}
	if s.closed.Load() {
		return fmt.Errorf("idempotency: release %q: %w", c.Key, ErrClosed)
	}
	k := s.cfg.Prefix + c.Key
	if err := releaseScript.Run(ctx, s.client, []string{k}, redisClaimedPrefix+c.Token).Err(); err != nil {
		return fmt.Errorf("idempotency: redis store: release %q: %w", k, err)
	}
	return nil
}

// Close closes the client if the store opened it (never a Client passed in
// the config). Idempotent.
func (s *RedisStore) Close() error {
	if s.closed.Swap(true) || !s.ownsClient {
		return nil
	}
	return s.client.Close()
}

var _ Store = (*RedisStore)(nil)
