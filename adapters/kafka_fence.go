package adapters

import (
	"strconv"
	"sync"
	"sync/atomic"
)

// fences keep a key-ordered subscriber from handing out a record while an
// earlier delivery of it, or of its key, is still in a handler of this
// process. That happens after a session ends (rebalance, broker restart)
// and the drain's bound passes: the claim gives the unanswered messages up
// (the next claim reads them again), but their handlers may still run, held
// by a retry, the breaker or the crash-loop guard. A second delivery beside
// the first would break the key's order (the first commits its effect
// after the next message of the key) and count twice in the crash-loop
// guard (healthy messages quarantined as crash loops: the chaos test with a
// broker restart found both). A fence lasts until the handler answers.
type fences struct {
	active atomic.Int64 // fences up: the hot path looks only at this
	mu     sync.Mutex
	m      map[fenceID]*fence
}

type fenceID struct {
	topic     string
	partition int32
	key       string // the record key, or unkeyedFence's for a record without one
}

type fence struct {
	n    int           // deliveries given up and still in a handler
	done chan struct{} // closed when n reaches 0
}

// unkeyedFence is the fence key of a record that has no key to order by:
// its offset, in a form no record key takes (a NUL byte first).
func unkeyedFence(offset int64) string { return "\x00#" + strconv.FormatInt(offset, 10) }

// raise records that a delivery was given up while its handler runs.
func (f *fences) raise(id fenceID) *fence {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.m == nil {
		f.m = make(map[fenceID]*fence)
	}
	fc := f.m[id]
	if fc == nil {
		fc = &fence{done: make(chan struct{})}
		f.m[id] = fc
		f.active.Add(1)
	}
	fc.n++
	return fc
}

// lower records that the handler of a given-up delivery answered.
func (f *fences) lower(id fenceID, fc *fence) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fc.n--
	if fc.n == 0 {
		close(fc.done)
		delete(f.m, id)
		f.active.Add(-1)
	}
}

// up returns the fence on id, nil if there is none.
func (f *fences) up(id fenceID) *fence {
	if f.active.Load() == 0 {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.m[id]
}
