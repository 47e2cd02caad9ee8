package hello

import "fmt"

// The poison --poison-every publishes, in rotation. Each is a real failure
// mode: bad bytes, a schema mismatch, a handler bug, a flaky dependency.
const (
	KindMalformed  = iota // a JSON object missing its closing brace: permanent
	KindWrongTypes        // user_id a string, msg a bool: permanent
	KindPanic             // triggers a handler bug: panic
	KindTransient         // the sink fails twice, then the write succeeds
	numKinds
)

// Magic msg values that make the example handler misbehave.
const (
	PanicMsg     = "PANIC"
	TransientMsg = "TRANSIENT"
	// StuckMsg (--stuck-every) fails transiently on every attempt: a
	// message the breaker holds back until it is judged its own fault and
	// dead-lettered as retries_exhausted.
	StuckMsg = "STUCK"
)

// StuckPayload is the --stuck-every payload for user n.
func StuckPayload(n int) []byte {
	return fmt.Appendf(nil, `{"user_id":%d,"msg":%q}`, n, StuckMsg)
}

// PoisonPayload is the kth poison payload for user n.
func PoisonPayload(kind, n int) []byte {
	switch kind % numKinds {
	case KindMalformed:
		// As such a payload is usually met: hand-written, cut short.
		return fmt.Appendf(nil, `{"user_id":%d, "msg":"Hello World"`, n)
	case KindWrongTypes:
		return fmt.Appendf(nil, `{"user_id":"%d","msg":true}`, n)
	case KindPanic:
		return fmt.Appendf(nil, `{"user_id":%d,"msg":%q}`, n, PanicMsg)
	default:
		return fmt.Appendf(nil, `{"user_id":%d,"msg":%q}`, n, TransientMsg)
	}
}

// payloadFor is the ith (1-based) generated payload: stuck every
// stuckEvery (first), poison every poisonEvery, else a valid write.
func payloadFor(i, poisonEvery, stuckEvery int) []byte {
	if stuckEvery > 0 && i%stuckEvery == 0 {
		return StuckPayload(i)
	}
	if poisonEvery > 0 && i%poisonEvery == 0 {
		return PoisonPayload(i/poisonEvery-1, i)
	}
	return Payload(i)
}

// ExpectedDeadLetters is how many of n generated messages end in the DLQ
// with --poison-every k: every poison kind but the transient one.
func ExpectedDeadLetters(n, k int) int { return ExpectedDeadLettersStuck(n, k, 0) }

// ExpectedDeadLettersStuck is ExpectedDeadLetters with --stuck-every s too:
// every stuck message, and every poison message not replaced by a stuck one.
func ExpectedDeadLettersStuck(n, k, s int) int {
	p := CountPills(n, k, s)
	return p.Total() - p.Kinds[KindTransient]
}

// KindNames describe the poison kinds, indexed by kind, in the words of the
// run's summary.
var KindNames = [numKinds]string{
	KindMalformed:  "malformed JSON (an object missing its closing brace)",
	KindWrongTypes: "with wrong types",
	KindPanic:      "triggering a handler panic",
	KindTransient:  "failing transiently twice (retried, then processed)",
}

// Pills is what the producer of n generated messages mixes into the flood
// with --poison-every k and --stuck-every s: how many of each poison kind,
// and how many stuck messages.
type Pills struct {
	Kinds [numKinds]int
	Stuck int
}

// Total is the number of poison and stuck messages.
func (p Pills) Total() int {
	n := p.Stuck
	for _, c := range p.Kinds {
		n += c
	}
	return n
}

// CountPills counts the pills payloadFor makes among messages 1..n.
func CountPills(n, k, s int) Pills {
	var p Pills
	for i := 1; i <= n; i++ {
		switch {
		case s > 0 && i%s == 0:
			p.Stuck++
		case k > 0 && i%k == 0:
			p.Kinds[(i/k-1)%numKinds]++
		}
	}
	return p
}
