package redisstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/antidote-mq/antidote/poison"
)

// DefaultClaimCheckStorePrefix prefixes every key a ClaimCheckStore writes
// when the config leaves Prefix empty.
const DefaultClaimCheckStorePrefix = "antidote:claims:"

// ClaimCheckStoreConfig configures NewClaimCheckStore. Set exactly one of
// Client and Addr.
type ClaimCheckStoreConfig struct {
	// Client is an existing go-redis client; the store never closes it. If
	// Client is nil, Addr must be set.
	Client redis.UniversalClient
	// Addr is "host:port"; the store opens its own client and closes it on
	// Close. If Addr is empty, Client must be set.
	Addr string
	// Prefix is prepended to every key. If Prefix is empty, the store uses
	// "antidote:claims:".
	Prefix string
}

func (c *ClaimCheckStoreConfig) setDefaults() {
	if c.Prefix == "" {
		c.Prefix = DefaultClaimCheckStorePrefix
	}
}

// Validate reports every field that cannot work, in field order.
func (c ClaimCheckStoreConfig) Validate() error {
	return errors.Join(validateClient("ClaimCheckStoreConfig", c.Client, c.Addr)...)
}

// ClaimCheckStore is a poison.ClaimCheck that keeps each claim under one
// Redis key, without expiry (a claim is deleted with its letter). A claim
// takes up to 512 MB (Redis's limit for one value). Durability is Redis's
// own: configure persistence (AOF) for claims to survive a Redis restart.
type ClaimCheckStore struct {
	c *conn
}

// NewClaimCheckStore fills cfg's defaults, validates it and, when cfg.Addr
// is set, opens a client (connected lazily: the first call reports an
// unreachable server).
func NewClaimCheckStore(cfg ClaimCheckStoreConfig) (*ClaimCheckStore, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &ClaimCheckStore{c: newConn(cfg.Client, cfg.Addr, cfg.Prefix)}, nil
}

// Put implements poison.ClaimCheck.
func (s *ClaimCheckStore) Put(ctx context.Context, key string, data []byte) error {
	if err := s.c.client.SetNX(ctx, s.c.key(key), data, 0).Err(); err != nil {
		return fmt.Errorf("redisstore: claim-check store: put %q (%d bytes): %w", key, len(data), err)
	}
	return nil
}

// Get implements poison.ClaimCheck.
func (s *ClaimCheckStore) Get(ctx context.Context, key string) ([]byte, error) {
	data, err := s.c.client.Get(ctx, s.c.key(key)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("redisstore: claim-check store: %q: %w", key, poison.ErrClaimNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("redisstore: claim-check store: get %q: %w", key, err)
	}
	return data, nil
}

// Delete implements poison.ClaimCheck.
func (s *ClaimCheckStore) Delete(ctx context.Context, key string) error {
	if err := s.c.client.Del(ctx, s.c.key(key)).Err(); err != nil {
		return fmt.Errorf("redisstore: claim-check store: delete %q: %w", key, err)
	}
	return nil
}

// Close closes the client if the store opened it (never a Client passed in
// the config). Idempotent.
func (s *ClaimCheckStore) Close() error { return s.c.close() }

var _ poison.ClaimCheck = (*ClaimCheckStore)(nil)
