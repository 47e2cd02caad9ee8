package poison

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// DefaultRedisDeliveryTrackerPrefix prefixes every key a RedisDeliveryTracker
// writes when the config leaves Prefix empty.
const DefaultRedisDeliveryTrackerPrefix = "antidote:deliveries:"

// RedisDeliveryTrackerConfig configures NewRedisDeliveryTracker. Set exactly
// one of Client and Addr.
type RedisDeliveryTrackerConfig struct {
	// Client is an existing go-redis client (*redis.Client, *redis.ClusterClient,
	// ...). The tracker never closes it.
	Client redis.UniversalClient
	// Addr is "host:port"; the tracker opens its own client and closes it on
	// Close.
	Addr string
	// Prefix is prepended to every key. Default "antidote:deliveries:".
	Prefix string
	// TTL is how long a count lives after its last Incr (Redis PEXPIRE,
	// refreshed by every Incr). Default 24h. Keep it longer than the longest
	// plausible outage of the consumer.
	TTL time.Duration
}

func (c *RedisDeliveryTrackerConfig) setDefaults() {
	if c.Prefix == "" {
		c.Prefix = DefaultRedisDeliveryTrackerPrefix
	}
	if c.TTL == 0 {
		c.TTL = DefaultDeliveryTrackerTTL
	}
}

// Validate reports a config that cannot work.
func (c RedisDeliveryTrackerConfig) Validate() error {
	switch {
	case c.Client == nil && c.Addr == "":
		return errors.New("poison: RedisDeliveryTrackerConfig needs a server: set Client to a go-redis client or Addr to \"host:port\" such as 127.0.0.1:6379")
	case c.Client != nil && c.Addr != "":
		return errors.New("poison: RedisDeliveryTrackerConfig has both Client and Addr set; set only one (Client to share an existing client, Addr to let the tracker open and close its own)")
	}
	if c.TTL < 0 || (c.TTL > 0 && c.TTL < time.Millisecond) {
		return fmt.Errorf("poison: RedisDeliveryTrackerConfig.TTL is %s; set it to at least 1ms, or 0 for the default %s", c.TTL, DefaultDeliveryTrackerTTL)
	}
	return nil
}

// RedisDeliveryTracker is a DeliveryTracker that keeps one Redis counter per
// unsettled delivery target. Incr is INCR followed by PEXPIRE in one
// MULTI/EXEC transaction (one round trip), so a counter never exists without
// its TTL; Forget is DEL.
//
// Durability is Redis's: a count survives any number of consumer crashes
// while Redis is up, but a Redis restart keeps only what its persistence
// (RDB snapshots, AOF with appendfsync) wrote. Losing counts only delays
// quarantine, it never drops a message. Safe for concurrent use.
type RedisDeliveryTracker struct {
	cfg        RedisDeliveryTrackerConfig
	client     redis.UniversalClient
	ownsClient bool
	closed     atomic.Bool
}

// NewRedisDeliveryTracker validates cfg and, when cfg.Addr is set, opens a
// client (lazily connected: the first Incr reports an unreachable server).
func NewRedisDeliveryTracker(cfg RedisDeliveryTrackerConfig) (*RedisDeliveryTracker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	t := &RedisDeliveryTracker{cfg: cfg, client: cfg.Client}
	if t.client == nil {
		t.client = redis.NewClient(&redis.Options{Addr: cfg.Addr})
		t.ownsClient = true
	}
	return t, nil
}

// Incr counts one more delivery of key and returns the new count.
func (t *RedisDeliveryTracker) Incr(ctx context.Context, key string) (int, error) {
	if t.closed.Load() {
		return 0, ErrDeliveryTrackerClosed
	}
	k := t.cfg.Prefix + key
	var incr *redis.IntCmd
	_, err := t.client.TxPipelined(ctx, func(p redis.Pipeliner) error {
		incr = p.Incr(ctx, k)
		p.PExpire(ctx, k, t.cfg.TTL)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("poison: redis delivery tracker: incr %q: %w", k, err)
	}
	return int(incr.Val()), nil
}

// Forget deletes key's counter.
func (t *RedisDeliveryTracker) Forget(ctx context.Context, key string) error {
	if t.closed.Load() {
		return ErrDeliveryTrackerClosed
	}
	if err := t.client.Del(ctx, t.cfg.Prefix+key).Err(); err != nil {
		return fmt.Errorf("poison: redis delivery tracker: forget %q: %w", t.cfg.Prefix+key, err)
	}
	return nil
}

// decrScript takes one count back without creating the key or going below
// 0 (a counter that expired meanwhile stays absent).
var decrScript = redis.NewScript(`local n = redis.call('GET', KEYS[1])
if not n then return 0 end
if tonumber(n) <= 0 then return 0 end
return redis.call('DECR', KEYS[1])`)

// Decr implements DeliveryDecrementer.
func (t *RedisDeliveryTracker) Decr(ctx context.Context, key string) (int, error) {
	if t.closed.Load() {
		return 0, ErrDeliveryTrackerClosed
	}
	n, err := decrScript.Run(ctx, t.client, []string{t.cfg.Prefix + key}).Int()
	if err != nil {
		return 0, fmt.Errorf("poison: redis delivery tracker: decr %q: %w", t.cfg.Prefix+key, err)
	}
	return n, nil
}

// Close closes the client if the tracker opened it (never a Client passed in
// the config). Idempotent.
func (t *RedisDeliveryTracker) Close() error {
	if t.closed.Swap(true) || !t.ownsClient {
		return nil
	}
	return t.client.Close()
}

var (
	_ DeliveryTracker     = (*RedisDeliveryTracker)(nil)
	_ DeliveryDecrementer = (*RedisDeliveryTracker)(nil)
)
