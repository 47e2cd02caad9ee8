package middleware

import "github.com/ThreeDotsLabs/watermill/message"

// StackReserveBytes is how much goroutine stack ReserveStack makes room
// for: Antidote's full stack (router.New's order) with a small handler on
// top of Watermill's own frames, with room to spare.
const StackReserveBytes = 6 << 10

// ReserveStack grows the goroutine's stack once, right away, to hold
// StackReserveBytes more, and then calls h. It changes nothing else.
//
// Watermill runs every message in a new goroutine, which starts on the
// minimal stack (2 KiB). A chain of middleware outgrows it, and the runtime
// then doubles the stack as each limit is hit (2→4→8 KiB...), copying the
// whole stack and adjusting every frame on it each time: done deep in the
// chain, that costs microseconds per message. Growing it once at the top,
// where only a few frames exist, costs a fraction of that; when the stack is
// already large enough (a reused or long-lived goroutine) it costs a
// function call. router.New puts it right below Watermill's Recoverer.
// Put it outermost when composing the middleware by hand.
func ReserveStack(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		reserveStack()
		return h(msg)
	}
}

// stackReserveTouch is never set: reserveStack's frame is never written, but
// the compiler cannot drop it, so the function's stack check makes the
// runtime grow the stack to fit it, once, at this shallow depth.
var stackReserveTouch bool

//go:noinline
func reserveStack() {
	if stackReserveTouch {
		var pad [StackReserveBytes]byte
		touchStackReserve(&pad)
	}
}

//go:noinline
func touchStackReserve(p *[StackReserveBytes]byte) { p[0] = 1 }
