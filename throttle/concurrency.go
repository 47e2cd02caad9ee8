package throttle

import (
	"context"
	"fmt"
	"sync/atomic"
)

// ConcurrencyLimiter lets at most Limit callers hold a slot at once; the
// others wait in arrival order.
type ConcurrencyLimiter struct {
	g gate
}

// NewConcurrencyLimiter returns a limiter with limit slots (limit >= 1).
func NewConcurrencyLimiter(limit int) (*ConcurrencyLimiter, error) {
	if limit < 1 {
		return nil, fmt.Errorf("throttle: concurrency limit is %d: set 1 or more", limit)
	}
	l := &ConcurrencyLimiter{}
	l.g.capacity = limit
	return l, nil
}

// Acquire waits for a slot or for ctx to end (the error then wraps
// ctx.Err()). Call release exactly once when the work is done; extra calls
// are ignored.
func (l *ConcurrencyLimiter) Acquire(ctx context.Context) (release func(), err error) {
	if _, err := l.g.acquire(ctx); err != nil {
		return nil, fmt.Errorf("throttle: concurrency wait: %w", err)
	}
	var once atomic.Bool
	return func() {
		if once.CompareAndSwap(false, true) {
			l.g.release()
		}
	}, nil
}

// InFlight is how many slots are held now.
func (l *ConcurrencyLimiter) InFlight() int {
	n, _ := l.g.load()
	return n
}

// Waiting is how many callers wait for a slot now.
func (l *ConcurrencyLimiter) Waiting() int {
	_, w := l.g.load()
	return w
}
