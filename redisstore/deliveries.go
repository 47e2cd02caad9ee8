package redisstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/antidote-mq/antidote/poison"
)

// DefaultDeliveryTrackerPrefix prefixes every key a DeliveryTracker writes
// when the config leaves Prefix empty.
const DefaultDeliveryTrackerPrefix = "antidote:deliveries:"

// DeliveryTrackerConfig configures NewDeliveryTracker. Set exactly one of
// Client and Addr.
type DeliveryTrackerConfig struct {
	// Client is an existing go-redis client (*redis.Client,
	// *redis.ClusterClient, ...); the tracker never closes it. If Client is
	// nil, Addr must be set.
	Client redis.UniversalClient
	// Addr is "host:port"; the tracker opens its own client and closes it on
	// Close. If Addr is empty, Client must be set.
	Addr string
	// Prefix is prepended to every key. If Prefix is empty, the tracker uses
	// "antidote:deliveries:".
	Prefix string
	// TTL is how long a count lives after its last Incr (Redis PEXPIRE,
	// refreshed by every Incr). If TTL is zero, the tracker uses
	// poison.DefaultDeliveryTrackerTTL (24h). Keep it longer than the
	// longest plausible outage of the consumer.
	TTL time.Duration
}

func (c *DeliveryTrackerConfig) setDefaults() {
	if c.Prefix == "" {
		c.Prefix = DefaultDeliveryTrackerPrefix
	}
	if c.TTL == 0 {
		c.TTL = poison.DefaultDeliveryTrackerTTL
	}
}

// Validate reports every field that cannot work, in field order.
func (c DeliveryTrackerConfig) Validate() error {
	errs := validateClient("DeliveryTrackerConfig", c.Client, c.Addr)
	errs = append(errs, validateDuration("DeliveryTrackerConfig.TTL", c.TTL, poison.DefaultDeliveryTrackerTTL))
	return errors.Join(errs...)
}

// DeliveryTracker is a poison.DeliveryTracker that keeps one Redis counter
// per unsettled delivery target. Incr is INCR followed by PEXPIRE in one
// MULTI/EXEC transaction (one round trip), so a counter never exists without
// its TTL; Forget is DEL.
//
// Durability is Redis's: a count survives any number of consumer crashes
// while Redis is up, but a Redis restart keeps only what its persistence
// (RDB snapshots, AOF with appendfsync) wrote. Losing counts only delays
// quarantine, it never drops a message. Safe for concurrent use.
type DeliveryTracker struct {
	c   *conn
	ttl time.Duration
}

// NewDeliveryTracker fills cfg's defaults, validates it and, when cfg.Addr
// is set, opens a client (lazily connected: the first Incr reports an
// unreachable server).
func NewDeliveryTracker(cfg DeliveryTrackerConfig) (*DeliveryTracker, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &DeliveryTracker{c: newConn(cfg.Client, cfg.Addr, cfg.Prefix), ttl: cfg.TTL}, nil
}

// Incr counts one more delivery of key and returns the new count.
func (t *DeliveryTracker) Incr(ctx context.Context, key string) (int, error) {
	if t.c.closed() {
		return 0, poison.ErrDeliveryTrackerClosed
	}
	k := t.c.key(key)
	var incr *redis.IntCmd
	_, err := t.c.client.TxPipelined(ctx, func(p redis.Pipeliner) error {
		incr = p.Incr(ctx, k)
		p.PExpire(ctx, k, t.ttl)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("redisstore: delivery tracker: incr %q: %w", k, err)
	}
	return int(incr.Val()), nil
}

// Forget deletes key's counter.
func (t *DeliveryTracker) Forget(ctx context.Context, key string) error {
	if t.c.closed() {
		return poison.ErrDeliveryTrackerClosed
	}
	k := t.c.key(key)
	if err := t.c.client.Del(ctx, k).Err(); err != nil {
		return fmt.Errorf("redisstore: delivery tracker: forget %q: %w", k, err)
	}
	return nil
}

// decrScript takes one count back without creating the key or going below
// 0 (a counter that expired meanwhile stays absent).
var decrScript = redis.NewScript(`local n = redis.call('GET', KEYS[1])
if not n then return 0 end
if tonumber(n) <= 0 then return 0 end
return redis.call('DECR', KEYS[1])`)

// Count implements poison.DeliveryPeeker.
func (t *DeliveryTracker) Count(ctx context.Context, key string) (int, error) {
	if t.c.closed() {
		return 0, poison.ErrDeliveryTrackerClosed
	}
	k := t.c.key(key)
	n, err := t.c.client.Get(ctx, k).Int()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("redisstore: delivery tracker: count %q: %w", k, err)
	}
	return max(n, 0), nil
}

// Decr implements poison.DeliveryDecrementer.
func (t *DeliveryTracker) Decr(ctx context.Context, key string) (int, error) {
	if t.c.closed() {
		return 0, poison.ErrDeliveryTrackerClosed
	}
	k := t.c.key(key)
	n, err := decrScript.Run(ctx, t.c.client, []string{k}).Int()
	if err != nil {
		return 0, fmt.Errorf("redisstore: delivery tracker: decr %q: %w", k, err)
	}
	return n, nil
}

// Close closes the client if the tracker opened it (never a Client passed
// in the config). Idempotent.
func (t *DeliveryTracker) Close() error { return t.c.close() }

var (
	_ poison.DeliveryTracker     = (*DeliveryTracker)(nil)
	_ poison.DeliveryDecrementer = (*DeliveryTracker)(nil)
)
