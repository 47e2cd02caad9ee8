package adapters

import (
	"errors"
	"sync"
)

// ErrPublisherClosed is returned by a Broker's publisher after Close.
var ErrPublisherClosed = errors.New("publisher is closed")

// closeGate lets Close run while publishes are still in flight: a publish
// abandoned after its timeout (DeadLetter, the retry relays) keeps running
// in its own goroutine and can still be inside the client when the service
// shuts down. watermill-kafka's and watermill-sql's publishers read and
// write their closed flag without synchronisation, so the gate, not the
// client, decides: close waits for the publishes that entered, and no
// publish enters after it.
type closeGate struct {
	mu       sync.Mutex
	closed   bool
	inflight sync.WaitGroup
}

// enter admits a publish; it fails once the gate is closed. Call leave
// when the publish returns.
func (g *closeGate) enter() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return ErrPublisherClosed
	}
	g.inflight.Add(1)
	return nil
}

func (g *closeGate) leave() { g.inflight.Done() }

// isClosed reports whether close has been called.
func (g *closeGate) isClosed() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.closed
}

// close shuts the gate and waits for the publishes inside. It reports
// false if the gate was already closed.
func (g *closeGate) close() bool {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return false
	}
	g.closed = true
	g.mu.Unlock()
	g.inflight.Wait()
	return true
}
