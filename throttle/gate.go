package throttle

import (
	"container/list"
	"context"
	"sync"
)

// gate is a FIFO counting semaphore whose capacity can change while it is in
// use (the adaptive limiter moves it). Waiters are served in arrival order,
// so a steady stream of newcomers cannot starve an early waiter.
type gate struct {
	mu       sync.Mutex
	capacity int
	inFlight int
	waiters  list.List // of chan struct{}, closed when granted
}

// acquire takes a slot, waiting until one is free or ctx ends. It returns
// the number in flight right after the grant.
// An ended ctx gets no slot even when one is free: the caller is shutting
// down and must not start new work.
func (g *gate) acquire(ctx context.Context) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	g.mu.Lock()
	if g.inFlight < g.capacity && g.waiters.Len() == 0 {
		g.inFlight++
		n := g.inFlight
		g.mu.Unlock()
		return n, nil
	}
	ready := make(chan struct{})
	elem := g.waiters.PushBack(ready)
	g.mu.Unlock()

	select {
	case <-ready:
		g.mu.Lock()
		n := g.inFlight
		g.mu.Unlock()
		return n, nil
	case <-ctx.Done():
		g.mu.Lock()
		select {
		case <-ready:
			// Granted while giving up: pass the slot on rather than leak it.
			g.inFlight--
			g.grantLocked()
		default:
			g.waiters.Remove(elem)
		}
		g.mu.Unlock()
		return 0, ctx.Err()
	}
}

func (g *gate) release() {
	g.mu.Lock()
	g.inFlight--
	g.grantLocked()
	g.mu.Unlock()
}

func (g *gate) setCapacity(n int) {
	g.mu.Lock()
	g.capacity = n
	g.grantLocked()
	g.mu.Unlock()
}

// grantLocked hands free slots to the oldest waiters. When the capacity
// shrank below inFlight, nobody is granted until enough slots are released.
func (g *gate) grantLocked() {
	for g.inFlight < g.capacity {
		front := g.waiters.Front()
		if front == nil {
			return
		}
		g.waiters.Remove(front)
		g.inFlight++
		close(front.Value.(chan struct{}))
	}
}

func (g *gate) load() (inFlight, waiting int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.inFlight, g.waiters.Len()
}
