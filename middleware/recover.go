package middleware

import (
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/poison"
)

// Recover turns a panic in h into a *poison.PanicError carrying the stack
// (debug.Stack() taken where the panic was recovered, so the panicking frame
// is in it). The default classifier treats it as permanent, so Retry does not
// re-run code that just panicked and DeadLetter records reason "panic" with
// the stack.
//
// Put it innermost, right around the handler: anything between Recover and
// the handler that panics is not caught. Without Recover the router's own
// recover nacks the message, which redelivers a poison pill forever.
// Messages produced before the panic are dropped.
func Recover(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) (produced []*message.Message, err error) {
		defer func() {
			if v := recover(); v != nil {
				produced = nil
				err = poison.NewPanicError(v)
			}
		}()
		return h(msg)
	}
}
