package middleware

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	wmmiddleware "github.com/ThreeDotsLabs/watermill/message/router/middleware"

	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/poison"
)

const (
	heldMsg    = "Message held by the breaker"
	endHeldMsg = "Message no longer held by the breaker"
)

// heldGauge is an OnHold keeping the count, as the gauge does; it fails the
// test if the count ever goes negative (an end reported twice).
type heldGauge struct {
	t  *testing.T
	mu sync.Mutex
	n  int
}

func (g *heldGauge) onHold(_ string, held bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if held {
		g.n++
	} else if g.n--; g.n < 0 {
		g.t.Error("held count went negative")
	}
}

func (g *heldGauge) get() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.n
}

// lineLogger keeps Info lines with their fields.
type lineLogger struct {
	watermill.NopLogger
	mu    sync.Mutex
	lines []string
	flds  []watermill.LogFields
}

func (l *lineLogger) Info(msg string, f watermill.LogFields) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, msg)
	l.flds = append(l.flds, f.Copy())
}

func (l *lineLogger) matching(s string) []watermill.LogFields {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []watermill.LogFields
	for i, m := range l.lines {
		if strings.Contains(m, s) {
			out = append(out, l.flds[i])
		}
	}
	return out
}

// failing is a handler that fails transiently for every UUID not in ok.
func failing(ok *sync.Map) message.HandlerFunc {
	return func(m *message.Message) ([]*message.Message, error) {
		if _, yes := ok.Load(m.UUID); yes {
			return nil, nil
		}
		return nil, poison.Transient(errors.New("timeout"))
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testenv.Eventually(t, 10*time.Second, what, cond)
}

// Past maxHolds the breaker forgets every hold at once: each counted one is
// reported ended (the gauge drops by all of them, not to a stale value), one
// line says so, and a forgotten message that comes back is a new hold.
func TestBreakerForgetAllKeepsHeldCountExact(t *testing.T) {
	g := &heldGauge{t: t}
	logs := &lineLogger{}
	b, err := NewBreaker(BreakerConfig{Backoff: time.Nanosecond, MaxHoldTime: time.Hour, MinRequests: 1000, OnHold: g.onHold, Logger: logs})
	if err != nil {
		t.Fatal(err)
	}
	b.maxHolds = 5
	var ok sync.Map
	h := b.Middleware(failing(&ok))
	for i := range 5 {
		if _, err := h(message.NewMessage(fmt.Sprint("m-", i), nil)); !errors.Is(err, poison.ErrDeferred) {
			t.Fatalf("m-%d: %v, want held", i, err)
		}
	}
	if g.get() != 5 {
		t.Fatalf("%d held, want 5", g.get())
	}
	_, _ = h(message.NewMessage("m-5", nil)) // the sixth: all others forgotten
	if g.get() != 1 {
		t.Fatalf("%d held after forgetting all, want 1 (m-5)", g.get())
	}
	if f := logs.matching("forgot every held message"); len(f) != 1 || f[0]["forgotten"] != 5 {
		t.Fatalf("forget lines: %v", f)
	}
	_, _ = h(message.NewMessage("m-0", nil)) // comes back: held anew
	if g.get() != 2 {
		t.Fatalf("%d held, want 2", g.get())
	}
	if n := len(logs.matching(heldMsg)); n != 7 {
		t.Errorf("%d held lines, want 7 (m-0 twice)", n)
	}
	for _, id := range []string{"m-0", "m-5", "m-1"} { // m-1 was forgotten: no end
		ok.Store(id, true)
		if _, err := h(message.NewMessage(id, nil)); err != nil {
			t.Fatal(err)
		}
	}
	if g.get() != 0 {
		t.Fatalf("%d held after releasing all, want 0", g.get())
	}
	if n := len(logs.matching(endHeldMsg)); n != 2 {
		t.Errorf("%d end lines, want 2 (m-0, m-5)", n)
	}
}

// A held message not delivered again for staleAfter (settled by another
// consumer) stops counting, once; if it comes back it counts again with its
// first hold kept (so MaxHoldTime is not restarted), and its end is not
// reported twice. The sweeper stops once nothing is counted.
func TestBreakerStaleHoldsStopCounting(t *testing.T) {
	g := &heldGauge{t: t}
	logs := &lineLogger{}
	b, err := NewBreaker(BreakerConfig{Backoff: time.Nanosecond, MaxHoldTime: time.Hour, MinRequests: 1000, OnHold: g.onHold, Logger: logs})
	if err != nil {
		t.Fatal(err)
	}
	b.staleAfter = 20 * time.Millisecond
	var ok sync.Map
	h := b.Middleware(failing(&ok))
	for _, id := range []string{"a", "b", "c"} {
		_, _ = h(message.NewMessage(id, nil))
	}
	if g.get() != 3 {
		t.Fatalf("%d held, want 3", g.get())
	}
	staleLogged := func() int {
		n := 0
		for _, f := range logs.matching("no longer count as held") {
			n += f["messages"].(int)
		}
		return n
	}
	// The sweep logs after it released the gauge (outside its lock): wait
	// for both.
	waitUntil(t, "the stale holds to stop counting", func() bool { return g.get() == 0 && staleLogged() >= 3 })
	if stale := staleLogged(); stale != 3 {
		t.Errorf("stale lines count %d messages, want 3", stale)
	}
	first := logs.matching(heldMsg)[0]["held_since"]

	_, _ = h(message.NewMessage("a", nil)) // back
	if g.get() != 1 {
		t.Fatalf("%d held after a came back, want 1", g.get())
	}
	again := logs.matching("held by the breaker again")
	if len(again) != 1 || again[0]["holds"] != 2 || again[0]["held_since"] != first {
		t.Fatalf("lines for a coming back: %v (first held %v)", again, first)
	}
	// b ends (a permanent failure) while not counted: nothing to report.
	bh := b.Middleware(func(*message.Message) ([]*message.Message, error) {
		return nil, poison.Permanent(errors.New("bad"))
	})
	_, _ = bh(message.NewMessage("b", nil))
	if g.get() != 1 {
		t.Fatalf("%d held, want 1 (a)", g.get())
	}
	ok.Store("a", true)
	if _, err := h(message.NewMessage("a", nil)); err != nil {
		t.Fatal(err)
	}
	if g.get() != 0 {
		t.Fatalf("%d held, want 0", g.get())
	}
	if n := len(logs.matching(endHeldMsg)); n != 2 {
		t.Errorf("%d end lines, want 2 (b, a)", n)
	}
	waitUntil(t, "the sweeper to stop", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return !b.sweepArmed
	})
}

// Holds, releases, verdicts, permanent failures, forget-all and stale
// sweeps racing from many goroutines: at every quiet point the count
// reported through OnHold equals the holds counted in the map, and once
// everything is released it is 0.
func TestBreakerHeldCountExactUnderRaces(t *testing.T) {
	g := &heldGauge{t: t}
	b, err := NewBreaker(BreakerConfig{Backoff: time.Nanosecond, MaxHoldTime: time.Hour, MinRequests: 1 << 30, OnHold: g.onHold})
	if err != nil {
		t.Fatal(err)
	}
	b.maxHolds = 16
	b.staleAfter = 2 * time.Millisecond
	var wg sync.WaitGroup
	var ops atomic.Int64
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for i := range 300 {
				id := fmt.Sprintf("w%d-m%d", w, rng.IntN(6))
				var err error
				switch rng.IntN(10) {
				case 0:
					err = poison.Permanent(errors.New("bad"))
				case 1, 2:
				default:
					err = poison.Transient(errors.New("timeout"))
				}
				h := b.Middleware(func(*message.Message) ([]*message.Message, error) { return nil, err })
				_, _ = h(message.NewMessage(id, nil))
				ops.Add(1)
				if i%50 == 0 {
					time.Sleep(3 * time.Millisecond) // let some go stale
				}
			}
		}()
	}
	wg.Wait()
	b.mu.Lock() // OnHold runs under it: the gauge cannot move meanwhile
	counted := 0
	for _, r := range b.holds {
		if r.counted {
			counted++
		}
	}
	got := g.get()
	b.mu.Unlock()
	if got != counted {
		t.Fatalf("gauge %d, counted holds %d after %d deliveries", got, counted, ops.Load())
	}
	release := b.Middleware(func(*message.Message) ([]*message.Message, error) { return nil, nil })
	for w := range 8 {
		for m := range 6 {
			_, _ = release(message.NewMessage(fmt.Sprintf("w%d-m%d", w, m), nil))
		}
	}
	if got := g.get(); got != 0 {
		t.Fatalf("gauge %d after releasing every message, want 0", got)
	}
}

// On Kafka a delivery is keyed by its partition and offset: a foreign
// producer's messages without a UUID (or all with the same one) are each
// held on their own, and the redeliveries of one are one hold.
func TestBreakerKafkaDeliveriesAreKeyedByOffset(t *testing.T) {
	g := &heldGauge{t: t}
	logs := &lineLogger{}
	b, err := NewBreaker(BreakerConfig{Backoff: time.Nanosecond, MaxHoldTime: time.Hour, MinRequests: 1000, OnHold: g.onHold, Logger: logs})
	if err != nil {
		t.Fatal(err)
	}
	b.originOf = func(m *message.Message) poison.Origin {
		return poison.Origin{Topic: "orders", Handler: "h", Partition: 3, Offset: int64(len(m.Payload)), HasOffset: true}
	}
	var fixed sync.Map // offsets (payload lengths) that succeed
	h := b.Middleware(func(m *message.Message) ([]*message.Message, error) {
		if _, yes := fixed.Load(len(m.Payload)); yes {
			return nil, nil
		}
		return nil, poison.Transient(errors.New("timeout"))
	})
	at := func(uuid string, offset int) *message.Message { return message.NewMessage(uuid, make([]byte, offset)) }
	for range 3 {
		for _, m := range []*message.Message{at("", 10), at("", 11), at("same", 12), at("same", 13)} {
			if _, err := h(m); !errors.Is(err, poison.ErrDeferred) {
				t.Fatalf("offset %d: %v, want held", len(m.Payload), err)
			}
		}
	}
	if g.get() != 4 {
		t.Fatalf("%d held, want 4: one per offset", g.get())
	}
	if n := len(logs.matching(heldMsg)); n != 4 {
		t.Fatalf("%d held lines, want 4", n)
	}
	fixed.Store(12, true)
	if _, err := h(at("same", 12)); err != nil {
		t.Fatal(err)
	}
	if g.get() != 3 {
		t.Fatalf("%d held after offset 12 succeeded, want 3 (13 has the same UUID but is another message)", g.get())
	}
	end := logs.matching(endHeldMsg)
	if len(end) != 1 || end[0]["offset"] != int64(12) || end[0]["partition"] != int32(3) || end[0]["holds"] != 3 {
		t.Fatalf("end lines %v", end)
	}
}

// A verdict reached in a delivery the subscriber already ended waits for
// the next delivery; a message sent to the DLQ that comes back (its ack
// lost, or the DLQ refused the letter) goes there again at its next
// transient failure instead of starting another MaxHoldTime; its record
// goes once it stops coming back, and its end is logged once.
func TestBreakerLetteredMessageIsNotHeldAgain(t *testing.T) {
	g := &heldGauge{t: t}
	logs := &lineLogger{}
	const maxHold = 30 * time.Millisecond
	b, err := NewBreaker(BreakerConfig{Backoff: time.Nanosecond, MaxHoldTime: maxHold, MinRequests: 1000, OnHold: g.onHold, Logger: logs})
	if err != nil {
		t.Fatal(err)
	}
	b.staleAfter = 300 * time.Millisecond
	var ok sync.Map
	h := b.Middleware(failing(&ok))
	held := func(id string) bool {
		_, err := h(message.NewMessage(id, nil))
		return errors.Is(err, poison.ErrDeferred)
	}
	if !held("a") || !held("b") {
		t.Fatal("a first transient failure is not held")
	}
	time.Sleep(2 * maxHold)

	// b's verdict comes in a delivery that ended: not given.
	ended := message.NewMessage("b", nil)
	endDelivery(ended)
	if _, err := h(ended); err == nil || errors.Is(err, poison.ErrDeferred) {
		t.Fatalf("ended delivery: %v, want the handler's error, for DeadLetter to nack", err)
	}
	if g.get() != 2 || len(logs.matching(endHeldMsg)) != 0 {
		t.Fatalf("after an ended delivery: %d held, end lines %v; want both still held", g.get(), logs.matching(endHeldMsg))
	}
	for _, id := range []string{"a", "b"} {
		if held(id) {
			t.Fatalf("%s held past MaxHoldTime", id)
		}
	}
	if g.get() != 0 || len(logs.matching(endHeldMsg)) != 2 {
		t.Fatalf("after the verdicts: %d held, %d end lines; want 0 and 2", g.get(), len(logs.matching(endHeldMsg)))
	}
	heldLines := len(logs.matching(heldMsg))

	// a comes back, its ack lost: to the DLQ at once, again and again.
	for range 3 {
		if held("a") {
			t.Fatal("a sent to the DLQ before is held again")
		}
	}
	// b comes back and succeeds: its record goes, silently.
	ok.Store("b", true)
	if _, err := h(message.NewMessage("b", nil)); err != nil {
		t.Fatal(err)
	}
	if g.get() != 0 || len(logs.matching(heldMsg)) != heldLines || len(logs.matching(endHeldMsg)) != 2 {
		t.Fatalf("redeliveries: %d held, %d held lines (want %d), %d end lines (want 2)", g.get(), len(logs.matching(heldMsg)), heldLines, len(logs.matching(endHeldMsg)))
	}
	waitUntil(t, "the lettered record to go and the sweeper to stop", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return len(b.holds) == 0 && b.nholds.Load() == 0 && !b.sweepArmed
	})
	// Gone: a new failure of a is a new hold.
	if !held("a") {
		t.Fatal("a, forgotten, is not held at its next first failure")
	}
}

// Watermill's Timeout below the breaker leaves its own context on the
// message, cancelled once the handler returned: the breaker still holds a
// first transient failure and gives its verdict later.
func TestBreakerBelowAWatermillTimeout(t *testing.T) {
	b, err := NewBreaker(BreakerConfig{Backoff: time.Nanosecond, MaxHoldTime: 30 * time.Millisecond, MinRequests: 1000})
	if err != nil {
		t.Fatal(err)
	}
	var ok sync.Map
	h := b.Middleware(wmmiddleware.Timeout(time.Minute)(failing(&ok)))
	if _, err := h(message.NewMessage("a", nil)); !errors.Is(err, poison.ErrDeferred) {
		t.Fatalf("first transient failure: %v, want held", err)
	}
	time.Sleep(60 * time.Millisecond)
	msg := message.NewMessage("a", nil)
	if _, err := h(msg); err == nil || errors.Is(err, poison.ErrDeferred) {
		t.Fatalf("past MaxHoldTime: %v, want the handler's error for DeadLetter", err)
	}
	if msg.Context().Err() != nil {
		t.Fatal("the message left the breaker with the Timeout's cancelled context")
	}
}

// endDelivery ends msg's delivery as a subscriber does when it stops
// waiting for the answer.
func endDelivery(msg *message.Message) {
	ctx, cancel := context.WithCancel(msg.Context())
	msg.SetContext(ctx)
	cancel()
}
