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
)

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

// payloadFor is the ith (1-based) generated payload.
func payloadFor(i, poisonEvery int) []byte {
	if poisonEvery > 0 && i%poisonEvery == 0 {
		return PoisonPayload(i/poisonEvery-1, i)
	}
	return Payload(i)
}

// ExpectedDeadLetters is how many of n generated messages end in the DLQ
// with --poison-every k: every poison kind but the transient one.
func ExpectedDeadLetters(n, k int) int {
	if k <= 0 {
		return 0
	}
	dead := 0
	for j := 0; j < n/k; j++ {
		if j%numKinds != KindTransient {
			dead++
		}
	}
	return dead
}
