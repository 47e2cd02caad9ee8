package hello

import "fmt"

// The poison --poison-every publishes, in rotation. Each is a real failure
// mode: bad bytes, a schema mismatch, a handler bug, a flaky dependency.
const (
	KindMalformed  = iota // missing closing brace: permanent
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
		return fmt.Appendf(nil, `{"user_id":%d,"msg":"Hello World"`, n)
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
	dead := 0
	for i := 1; i <= n; i++ {
		switch {
		case s > 0 && i%s == 0:
			dead++
		case k > 0 && i%k == 0 && (i/k-1)%numKinds != KindTransient:
			dead++
		}
	}
	return dead
}
