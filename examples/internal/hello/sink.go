package hello

import (
	"context"
	"sync"
)

// Sink stores processed writes. Store must be idempotent per message UUID:
// at-least-once delivery hands the same message over more than once.
type Sink interface {
	Store(ctx context.Context, uuid string, h Hello) error
	Close() error
}

// MemorySink keeps writes in a map keyed by message UUID.
type MemorySink struct {
	mu   sync.Mutex
	rows map[string]Hello
}

// NewMemorySink returns an empty MemorySink.
func NewMemorySink() *MemorySink { return &MemorySink{rows: map[string]Hello{}} }

// Store records h under uuid.
func (s *MemorySink) Store(_ context.Context, uuid string, h Hello) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rows[uuid] = h
	return nil
}

// Len is the number of distinct messages stored.
func (s *MemorySink) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.rows)
}

// Close does nothing.
func (s *MemorySink) Close() error { return nil }
