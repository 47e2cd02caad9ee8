package claimcheck

import (
	"context"
	"fmt"
	"sync"

	"github.com/antidote-mq/antidote/poison"
)

// MemoryStore keeps claims in the process: they are gone when it exits, and
// with them the payloads of the letters that refer to them. For tests.
type MemoryStore struct {
	mu     sync.Mutex
	claims map[string][]byte
}

// NewMemoryStore returns an empty store.
func NewMemoryStore() *MemoryStore { return &MemoryStore{claims: map[string][]byte{}} }

// Put implements poison.ClaimCheck.
func (s *MemoryStore) Put(_ context.Context, key string, data []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.claims[key]; !ok {
		s.claims[key] = append([]byte(nil), data...)
	}
	return nil
}

// Get implements poison.ClaimCheck.
func (s *MemoryStore) Get(_ context.Context, key string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	data, ok := s.claims[key]
	if !ok {
		return nil, fmt.Errorf("claimcheck: %q: %w", key, poison.ErrClaimNotFound)
	}
	return append([]byte(nil), data...), nil
}

// Delete implements poison.ClaimCheck.
func (s *MemoryStore) Delete(_ context.Context, key string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.claims, key)
	return nil
}

// Len is how many claims the store holds.
func (s *MemoryStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.claims)
}
