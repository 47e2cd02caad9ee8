package lru

import (
	"testing"
)

func keysNewestFirst[K comparable, V any](l *LRU[K, V]) []K {
	var ks []K
	for n := l.root.next; n != &l.root; n = n.next {
		ks = append(ks, n.key)
	}
	return ks
}

func equal[K comparable](a, b []K) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestOrderAndEviction(t *testing.T) {
	l := New[string, int](3)
	for i, k := range []string{"a", "b", "c"} {
		if l.Add(k, i) {
			t.Fatalf("evicted while not full (%s)", k)
		}
	}
	if _, ok := l.Get("a"); !ok { // a becomes the most recent
		t.Fatal("a missing")
	}
	if _, ok := l.Peek("b"); !ok { // Peek does not move b
		t.Fatal("b missing")
	}
	if got := keysNewestFirst(l); !equal(got, []string{"a", "c", "b"}) {
		t.Fatalf("order %v", got)
	}
	if got := l.Keys(); !equal(got, []string{"b", "c", "a"}) || !l.Contains("c") || l.Contains("z") {
		t.Fatalf("Keys %v (want oldest first), Contains", got)
	}
	if !l.Add("d", 3) { // full: b, the least recent, goes
		t.Fatal("no eviction when full")
	}
	if _, ok := l.Peek("b"); ok || l.Len() != 3 {
		t.Fatalf("b kept or len %d", l.Len())
	}
	if l.Add("a", 10) { // an existing key is updated, nothing evicted
		t.Fatal("evicted on update")
	}
	if v, _ := l.Get("a"); v != 10 {
		t.Fatalf("a = %d", v)
	}
	if k, v, ok := l.GetOldest(); !ok || k != "c" || v != 2 {
		t.Fatalf("oldest %s %d %t", k, v, ok)
	}
	if k, _, ok := l.RemoveOldest(); !ok || k != "c" {
		t.Fatalf("removed oldest %s %t", k, ok)
	}
	if !l.Remove("d") || l.Remove("d") {
		t.Fatal("Remove reports wrongly")
	}
	if got := keysNewestFirst(l); !equal(got, []string{"a"}) {
		t.Fatalf("order %v", got)
	}
	l.Purge()
	if l.Len() != 0 {
		t.Fatal("Purge kept keys")
	}
	if _, _, ok := l.RemoveOldest(); ok {
		t.Fatal("RemoveOldest on empty")
	}
	l.Add("x", 1) // usable after Purge
	if v, ok := l.Get("x"); !ok || v != 1 {
		t.Fatal("not usable after Purge")
	}
}

// A full map takes a new key without allocating: the evicted key's node is
// reused, zeroed first so it holds nothing of the old value.
func TestFullMapReusesNodes(t *testing.T) {
	l := New[int, *[]byte](100)
	for i := range 100 {
		b := make([]byte, 8)
		l.Add(i, &b)
	}
	next := 100
	allocs := testing.AllocsPerRun(1000, func() {
		l.Add(next, nil)
		next++
	})
	if allocs != 0 {
		t.Fatalf("%.1f allocations per new key on a full map", allocs)
	}
	if l.free != nil {
		t.Fatal("a spare node left while full")
	}
	l.Remove(next - 1)
	if l.free == nil || l.free.value != nil || l.free.key != 0 {
		t.Fatal("a removed node is not zeroed and kept")
	}
}

func TestSizeBelowOne(t *testing.T) {
	l := New[int, int](0)
	l.Add(1, 1)
	l.Add(2, 2)
	if l.Len() != 1 {
		t.Fatalf("len %d, want 1", l.Len())
	}
}

// Insert is Add for an absent key: same eviction, same order.
func TestInsert(t *testing.T) {
	l := New[string, int](2)
	l.Insert("a", 1)
	l.Insert("b", 2)
	if !l.Insert("c", 3) {
		t.Fatal("no eviction when full")
	}
	if got := l.Keys(); !equal(got, []string{"b", "c"}) {
		t.Fatalf("Keys %v", got)
	}
}

func TestUpdate(t *testing.T) {
	l := New[string, int](3)
	l.Add("a", 1)
	l.Add("b", 2)
	if l.Update("z", func(*int) bool { t.Fatal("f called for an absent key"); return false }) {
		t.Fatal("found an absent key")
	}
	l.Update("a", func(v *int) bool { *v = 10; return false }) // changed, not moved
	if got := l.Keys(); !equal(got, []string{"a", "b"}) {
		t.Fatalf("Keys %v: a moved", got)
	}
	l.Update("a", func(v *int) bool { *v++; return true }) // changed and moved
	if v, _ := l.Peek("a"); v != 11 {
		t.Fatalf("a = %d", v)
	}
	if got := l.Keys(); !equal(got, []string{"b", "a"}) {
		t.Fatalf("Keys %v: a not moved", got)
	}
}
