package claimcheck

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/antidote-mq/antidote/poison"
)

// DefaultRedisPrefix is RedisConfig.Prefix when empty.
const DefaultRedisPrefix = "antidote:claims:"

// RedisConfig configures NewRedisStore. Set exactly one of Client and Addr.
type RedisConfig struct {
	// Client is an existing go-redis client; the store never closes it.
	Client redis.UniversalClient
	// Addr is "host:port"; the store opens its own client and closes it on
	// Close.
	Addr string
	// Prefix is prepended to every key. If empty, the store uses
	// "antidote:claims:".
	Prefix string
}

func (c *RedisConfig) setDefaults() {
	if c.Prefix == "" {
		c.Prefix = DefaultRedisPrefix
	}
}

// Validate reports a config that cannot work.
func (c RedisConfig) Validate() error {
	switch {
	case c.Client == nil && c.Addr == "":
		return errors.New("claimcheck: RedisConfig needs a server: set Client to a go-redis client or Addr to \"host:port\" such as 127.0.0.1:6379")
	case c.Client != nil && c.Addr != "":
		return errors.New("claimcheck: RedisConfig has both Client and Addr set; set only one")
	}
	return nil
}

// RedisStore keeps each claim under one Redis key, without expiry (a claim
// is deleted with its letter). A claim takes up to 512 MB (Redis's limit
// for one value). Durability is Redis's own: configure persistence (AOF)
// for claims to survive a Redis restart.
type RedisStore struct {
	cfg        RedisConfig
	client     redis.UniversalClient
	ownsClient bool
}

// NewRedisStore fills defaults, validates cfg and, when Addr is set, opens
// a client (connected lazily: the first call reports an unreachable server).
func NewRedisStore(cfg RedisConfig) (*RedisStore, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &RedisStore{cfg: cfg, client: cfg.Client}
	if s.client == nil {
		s.client, s.ownsClient = redis.NewClient(&redis.Options{Addr: cfg.Addr}), true
	}
	return s, nil
}

// Put implements poison.ClaimCheck.
func (s *RedisStore) Put(ctx context.Context, key string, data []byte) error {
	if err := s.client.SetNX(ctx, s.cfg.Prefix+key, data, 0).Err(); err != nil {
		return fmt.Errorf("claimcheck: put %q (%d bytes): %w", key, len(data), err)
	}
	return nil
}

// Get implements poison.ClaimCheck.
func (s *RedisStore) Get(ctx context.Context, key string) ([]byte, error) {
	data, err := s.client.Get(ctx, s.cfg.Prefix+key).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("claimcheck: %q: %w", key, poison.ErrClaimNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("claimcheck: get %q: %w", key, err)
	}
	return data, nil
}

// Delete implements poison.ClaimCheck.
func (s *RedisStore) Delete(ctx context.Context, key string) error {
	if err := s.client.Del(ctx, s.cfg.Prefix+key).Err(); err != nil {
		return fmt.Errorf("claimcheck: delete %q: %w", key, err)
	}
	return nil
}

// Close closes the client if the store opened it.
func (s *RedisStore) Close() error {
	if s.ownsClient {
		return s.client.Close()
	}
	return nil
}
