// Package lru is the bounded least-recently-used map behind the memory
// idempotency store, the memory delivery tracker and the keyed limiter.
//
// It follows the API of hashicorp/golang-lru's simplelru (not safe for
// concurrent use; callers hold their own lock), with one difference that
// is why it exists: the node of an evicted or removed key is reused for
// the next new key, so a full map (the steady state of a busy consumer)
// takes a new key without allocating. With simplelru every new key
// allocated a node: +1 allocation and +27% time per message for the memory
// idempotency store in the overhead benchmark (docs/benchmarks.md).
package lru

// LRU holds at most its size's keys; adding one more evicts the least
// recently used.
type LRU[K comparable, V any] struct {
	size  int
	items map[K]*node[K, V]
	root  node[K, V] // root.next is the most recently used, root.prev the least
	free  *node[K, V]
}

type node[K comparable, V any] struct {
	key        K
	value      V
	prev, next *node[K, V]
}

// New returns an empty LRU holding at most size keys; size below 1 is
// taken as 1.
func New[K comparable, V any](size int) *LRU[K, V] {
	l := &LRU[K, V]{size: max(size, 1), items: make(map[K]*node[K, V])}
	l.root.next, l.root.prev = &l.root, &l.root
	return l
}

// Add sets key's value and makes it the most recently used; it reports
// whether the least recently used key was evicted to make room.
func (l *LRU[K, V]) Add(key K, value V) (evicted bool) {
	if n, ok := l.items[key]; ok {
		n.value = value
		l.toFront(n)
		return false
	}
	return l.Insert(key, value)
}

// Insert is Add for a key the caller knows is absent (its Get just missed,
// under the caller's lock): it saves Add's map lookup, one cache miss on a
// large map, on the path every new message takes. Inserting a key that is
// present corrupts the LRU.
func (l *LRU[K, V]) Insert(key K, value V) (evicted bool) {
	if len(l.items) >= l.size {
		l.removeNode(l.root.prev)
		evicted = true
	}
	n := l.free
	if n != nil {
		l.free = n.next
	} else {
		n = &node[K, V]{}
	}
	n.key, n.value = key, value
	l.items[key] = n
	l.insertFront(n)
	return evicted
}

// Get returns key's value and makes it the most recently used.
func (l *LRU[K, V]) Get(key K) (value V, ok bool) {
	n, ok := l.items[key]
	if !ok {
		return value, false
	}
	l.toFront(n)
	return n.value, true
}

// Update finds key with one lookup and lets f change its value in place;
// if f returns true the key becomes the most recently used. It reports
// whether key was there (f is not called when it was not).
func (l *LRU[K, V]) Update(key K, f func(*V) bool) bool {
	n, ok := l.items[key]
	if !ok {
		return false
	}
	if f(&n.value) {
		l.toFront(n)
	}
	return true
}

// Peek returns key's value without making it the most recently used.
func (l *LRU[K, V]) Peek(key K) (value V, ok bool) {
	n, ok := l.items[key]
	if !ok {
		return value, false
	}
	return n.value, true
}

// Remove drops key; it reports whether key was there.
func (l *LRU[K, V]) Remove(key K) bool {
	n, ok := l.items[key]
	if ok {
		l.removeNode(n)
	}
	return ok
}

// GetOldest returns the least recently used key and its value.
func (l *LRU[K, V]) GetOldest() (key K, value V, ok bool) {
	if n := l.root.prev; n != &l.root {
		return n.key, n.value, true
	}
	return key, value, false
}

// RemoveOldest drops the least recently used key and returns it.
func (l *LRU[K, V]) RemoveOldest() (key K, value V, ok bool) {
	n := l.root.prev
	if n == &l.root {
		return key, value, false
	}
	key, value = n.key, n.value
	l.removeNode(n)
	return key, value, true
}

// Contains reports whether key is held, without making it the most
// recently used.
func (l *LRU[K, V]) Contains(key K) bool {
	_, ok := l.items[key]
	return ok
}

// Keys lists the keys from the least to the most recently used.
func (l *LRU[K, V]) Keys() []K {
	ks := make([]K, 0, len(l.items))
	for n := l.root.prev; n != &l.root; n = n.prev {
		ks = append(ks, n.key)
	}
	return ks
}

// Len is the number of keys held.
func (l *LRU[K, V]) Len() int { return len(l.items) }

// Purge drops every key (and the spare nodes).
func (l *LRU[K, V]) Purge() {
	clear(l.items)
	l.root.next, l.root.prev = &l.root, &l.root
	l.free = nil
}

func (l *LRU[K, V]) insertFront(n *node[K, V]) {
	n.prev, n.next = &l.root, l.root.next
	l.root.next.prev = n
	l.root.next = n
}

func (l *LRU[K, V]) toFront(n *node[K, V]) {
	if l.root.next == n {
		return
	}
	n.prev.next, n.next.prev = n.next, n.prev
	l.insertFront(n)
}

// removeNode unlinks n and keeps it for the next new key, zeroed so it
// holds on to nothing (a stored result, a limiter).
func (l *LRU[K, V]) removeNode(n *node[K, V]) {
	n.prev.next, n.next.prev = n.next, n.prev
	delete(l.items, n.key)
	var zero node[K, V]
	*n = zero
	n.next = l.free
	l.free = n
}
