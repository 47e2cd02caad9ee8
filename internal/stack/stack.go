// Package stack grows a message goroutine's stack once, at the top of the
// middleware chain. It is private: router.New installs it, and the
// overhead benchmarks (bench/) measure that it pays (docs/benchmarks.md:
// goroutine stack growth was 16% of CPU end to end).
package stack

import "github.com/ThreeDotsLabs/watermill/message"

// reserveBytes is how much goroutine stack Reserve makes room
// for: Antidote's full stack (router.New's order) with a small handler on
// top of Watermill's own frames, with room to spare.
const reserveBytes = 6 << 10

// Reserve grows the goroutine's stack once, right away, to hold
// reserveBytes more, and then calls h. It changes nothing else.
//
// Watermill runs every message in a new goroutine, which starts on the
// minimal stack (2 KiB). A chain of middleware outgrows it, and the runtime
// then doubles the stack as each limit is hit (2→4→8 KiB...), copying the
// whole stack and adjusting every frame on it each time: done deep in the
// chain, that costs microseconds per message. Growing it once at the top,
// where only a few frames exist, costs a fraction of that; when the stack is
// already large enough (a reused or long-lived goroutine) it costs a
// function call. router.New puts it right below Watermill's Recoverer.
func Reserve(h message.HandlerFunc) message.HandlerFunc {
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
		var pad [reserveBytes]byte
		touchStackReserve(&pad)
	}
}

//go:noinline
func touchStackReserve(p *[reserveBytes]byte) { p[0] = 1 }
