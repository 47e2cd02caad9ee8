package adapters

import (
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote"
)

// receive waits for the next message out of the claims.
func (tc *testClaims) receive(t *testing.T) *message.Message {
	t.Helper()
	select {
	case m := <-tc.out:
		return m
	case <-time.After(30 * time.Second):
		t.Fatal("no message handed out")
		return nil
	}
}

// none checks that nothing is handed out (a slow machine can only make
// this pass wrongly, never fail wrongly).
func (tc *testClaims) none(t *testing.T, why string) {
	t.Helper()
	select {
	case m := <-tc.out:
		t.Fatalf("%s: %s handed out", why, m.Payload)
	case <-time.After(300 * time.Millisecond):
	}
}

// A session ends (a rebalance, a broker restart) while a handler still
// runs a message, past the drain's bound: the claim gives it up. The next
// claim of the partition in this process must not hand that message, or
// a later one of its key, out beside it: it waits for the handler's
// answer. Other keys go on meanwhile.
func TestKafkaGivenUpDeliveryFencesItsKey(t *testing.T) {
	tc := newTestClaims(t, 4, 1<<20)
	records, _, end := tc.claim()
	mustRead(t, records, 0, 1, "k", 10)
	slow := tc.receive(t) // its handler runs on, unanswered
	end()                 // the drain gives it up after SessionTimeout

	records, sess, end := tc.claim()
	defer end()
	mustRead(t, records, 0, 1, "k", 10) // the given-up one, read again
	mustRead(t, records, 1, 2, "k", 10) // the key's next one
	mustRead(t, records, 2, 3, "j", 10) // another key
	other := tc.receive(t)
	if o := offsetOf(t, other); o != 2 {
		t.Fatalf("first out of the new claim: offset %d, want 2 (key j)", o)
	}
	other.Ack()
	tc.none(t, "while the given-up delivery of key k still runs")

	// Its handler answers: the key goes on, in order, from the message
	// given up.
	slow.Ack()
	again := tc.receive(t)
	if o := offsetOf(t, again); o != 0 {
		t.Fatalf("after the fence: offset %d first, want 0", o)
	}
	again.Ack()
	next := tc.receive(t)
	if o := offsetOf(t, next); o != 1 {
		t.Fatalf("then offset %d, want 1", o)
	}
	next.Ack()
	waitMarked(t, sess, 3)
}

// A record without a key is fenced by its offset: the same record waits,
// the others do not.
func TestKafkaGivenUpUnkeyedDeliveryFencesItsOffset(t *testing.T) {
	tc := newTestClaims(t, 4, 1<<20)
	records, _, end := tc.claim()
	mustRead(t, records, 0, 1, "", 10)
	slow := tc.receive(t)
	end()

	records, sess, end := tc.claim()
	defer end()
	mustRead(t, records, 0, 2, "", 10)
	m := tc.receive(t)
	if o := offsetOf(t, m); o != 1 {
		t.Fatalf("offset %d handed out beside its given-up delivery, want only 1", o)
	}
	m.Ack()
	tc.none(t, "while offset 0's given-up delivery still runs")
	slow.Nack() // its handler failed: the record runs again, now
	m = tc.receive(t)
	if o := offsetOf(t, m); o != 0 {
		t.Fatalf("after the fence: offset %d, want 0", o)
	}
	m.Ack()
	waitMarked(t, sess, 2)
}

func offsetOf(t *testing.T, m *message.Message) int64 {
	t.Helper()
	_, o, ok := antidote.PositionFromCtx(m.Context())
	if !ok {
		t.Fatal("no position")
	}
	return o
}

func waitMarked(t *testing.T, sess *fakeSession, want int64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		sess.mu.Lock()
		got := sess.marked
		sess.mu.Unlock()
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("marked %d, want %d", got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
