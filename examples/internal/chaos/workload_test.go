package chaos_test

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/antidote-mq/antidote/examples/internal/hello"
	"github.com/antidote-mq/antidote/poison"
)

// kind is what a line of the workload is, and so what must become of it.
type kind int

const (
	healthy    kind = iota // one effect in the sink, not in the DLQ
	transient              // fails twice, then one effect
	malformed              // DLQ, permanent
	wrongTypes             // DLQ, permanent
	panics                 // DLQ, panic
	killer                 // kills the consumer process: DLQ, crash_loop
	stuck                  // fails transiently on every attempt: held, then DLQ, retries_exhausted
	oversized              // a 990 KB write (msg far over 280 characters): DLQ, permanent, its letter near Kafka's 1 MiB limit
)

var kindNames = [...]string{"healthy", "transient", "malformed", "wrong-types", "panic", "process-killing", "stuck", "oversized"}

func (k kind) String() string { return kindNames[k] }

// wantReason is the DLQ reason a poison kind must carry ("" for kinds that
// must take effect instead).
func (k kind) wantReason() poison.Reason {
	switch k {
	case malformed, wrongTypes, oversized:
		return poison.ReasonPermanent
	case stuck:
		return poison.ReasonRetriesExhausted
	case panics:
		return poison.ReasonPanic
	case killer:
		return poison.ReasonCrashLoop
	}
	return ""
}

// killMarker in a payload makes the examples' consumer (--crash-on) exit.
const killMarker = "CHAOS-KILL"

// workload is the run's messages: line i (0-based) is user i+1's write.
type workload struct {
	payloads [][]byte
	kinds    []kind
	foreign  []bool         // published by a foreign producer (raw broker client, no Watermill)
	byText   map[string]int // payload -> line
	dupEvery int
}

// newWorkload makes n writes: every 100th (1%) poison, rotating malformed,
// wrong types, panic, transient and stuck; every 1000th an oversized one;
// killers process-killing ones spread evenly over the rest. Every 100th
// (offset 50) healthy write comes from a foreign producer: no Watermill
// UUID, odd headers. The examples' producer sends the others and re-sends
// every dupEvery-th of them with the same idempotency key.
func newWorkload(n, killers, dupEvery int) *workload {
	w := &workload{payloads: make([][]byte, n), kinds: make([]kind, n), foreign: make([]bool, n), byText: make(map[string]int, n), dupEvery: dupEvery}
	type poisonKind struct {
		k    kind
		kind int
	}
	rotation := [...]poisonKind{{malformed, hello.KindMalformed}, {wrongTypes, hello.KindWrongTypes}, {panics, hello.KindPanic}, {transient, hello.KindTransient}, {stuck, -1}}
	for i := range n {
		user := i + 1
		w.payloads[i], w.kinds[i] = hello.Payload(user), healthy
		switch {
		case user%1000 == 500:
			w.payloads[i], w.kinds[i] = fmt.Appendf(nil, `{"user_id":%d,"msg":%q}`, user, strings.Repeat("o", 990_000)), oversized
		case user%100 == 50:
			w.foreign[i] = true
		case user%100 == 0:
			r := rotation[(user/100-1)%len(rotation)]
			if r.k == stuck {
				w.payloads[i], w.kinds[i] = hello.StuckPayload(user), stuck
			} else {
				w.payloads[i], w.kinds[i] = hello.PoisonPayload(r.kind, user), r.k
			}
		}
	}
	for j := range killers {
		i := (2*j + 1) * n / (2 * killers)
		for w.kinds[i] != healthy || w.foreign[i] {
			i = (i + 1) % n
		}
		w.payloads[i], w.kinds[i] = fmt.Appendf(nil, `{"user_id":%d,"msg":%q}`, i+1, killMarker), killer
	}
	for i, p := range w.payloads {
		w.byText[string(p)] = i
	}
	return w
}

func (w *workload) count(k kind) int {
	n := 0
	for _, got := range w.kinds {
		if got == k {
			n++
		}
	}
	return n
}

// effects is how many lines must take effect (healthy and transient).
func (w *workload) effects() int { return w.count(healthy) + w.count(transient) }

// native is how many lines the examples' producer sends (the others come
// from the foreign producer).
func (w *workload) native() int {
	n := 0
	for _, f := range w.foreign {
		if !f {
			n++
		}
	}
	return n
}

// published is how many messages the examples' producer sends, re-sends
// included.
func (w *workload) published() int { return w.native() + w.native()/w.dupEvery }

// writeInput writes the examples' producer's lines (not the foreign ones).
func (w *workload) writeInput(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for i, p := range w.payloads {
		if w.foreign[i] {
			continue
		}
		b.Write(p)
		b.WriteByte('\n')
	}
	path := filepath.Join(t.TempDir(), "input.txt")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// letter is one dead letter as read back from the broker's DLQ.
type letter struct {
	uuid    string
	payload string
	reason  poison.Reason
	err     string // the envelope's error text
	meta    map[string]string
}

// verdict is what the sink and the DLQ say about the run.
type verdict struct {
	effectsRows     int // rows in hello_effects
	letters         int // dead letters read
	dlqRepeats      int // letters beyond the first for a line: its re-send, or a kill between DLQ publish and ack
	dlqResent       int // of dlqRepeats, re-sends of a poison message (a new message with the same key)
	lost            int // lines neither in effect nor in the DLQ
	doubled         int // lines that took effect more than once
	problems        []string
	deadLetteredBy  map[poison.Reason]int
	effectsUnknown  int
	healthyInDLQ    int
	poisonInEffects int
}

// check holds the sink's effect counts per user and the DLQ's letters
// against the workload.
func (w *workload) check(effects map[int64]int, letters []letter) verdict {
	v := verdict{letters: len(letters), deadLetteredBy: map[poison.Reason]int{}}
	problem := func(format string, args ...any) {
		if len(v.problems) < 20 {
			v.problems = append(v.problems, fmt.Sprintf(format, args...))
		}
	}
	for _, n := range effects {
		v.effectsRows += n
	}
	lettersOf := make([][]letter, len(w.payloads))
	for _, l := range letters {
		i, ok := w.byText[l.payload]
		if !ok {
			problem("a dead letter (%s, %s) is none of the run's messages: %.80q", l.uuid, l.reason, l.payload)
			continue
		}
		lettersOf[i] = append(lettersOf[i], l)
	}
	for i, k := range w.kinds {
		user := int64(i + 1)
		got, dead := effects[user], lettersOf[i]
		delete(effects, user)
		if len(dead) > 1 {
			v.dlqRepeats += len(dead) - 1
			if (i+1)%w.dupEvery == 0 {
				v.dlqResent++
			}
		}
		if want := k.wantReason(); want == "" {
			switch {
			case len(dead) > 0:
				v.healthyInDLQ++
				problem("%s message of user %d was dead-lettered (%s): %.300s %v", k, user, dead[0].reason, dead[0].err, dead[0].meta)
			case got == 0:
				v.lost++
				problem("%s message of user %d is missing: no effect, no dead letter", k, user)
			case got > 1:
				v.doubled++
				problem("%s message of user %d took effect %d times", k, user, got)
			}
			continue
		}
		if got > 0 {
			v.poisonInEffects++
			problem("%s message of user %d took effect %d times", k, user, got)
		}
		if len(dead) == 0 {
			v.lost++
			problem("%s message of user %d is missing from the DLQ", k, user)
			continue
		}
		v.deadLetteredBy[dead[0].reason]++
		if dead[0].reason != k.wantReason() {
			problem("%s message of user %d dead-lettered as %s, want %s", k, user, dead[0].reason, k.wantReason())
		}
	}
	var unknown []int64
	for user := range effects {
		unknown = append(unknown, user)
		v.effectsUnknown++
	}
	sort.Slice(unknown, func(i, j int) bool { return unknown[i] < unknown[j] })
	if len(unknown) > 0 {
		problem("effects for users the run never sent: %v", unknown[:min(len(unknown), 10)])
	}
	return v
}
