// Package poisontest checks, from a team's own tests, that its handler
// survives poison under Antidote's full stack.
//
// Run builds the stack with router.New on the in-process memory broker
// (adapters.Open with KindMemory), with short retry backoffs so the battery
// takes seconds, and sends the handler one input at a time: malformed JSON
// (truncated, wrong types, empty, null, deeply nested), a 10 MB payload,
// invalid UTF-8, a huge metadata value, an injected handler panic, and the
// team's own valid samples (WithValid) and inputs (WithInputs). After each
// input it publishes a sentinel message and checks that:
//
//   - the queue is not blocked: the sentinel is through the stack within
//     the per-message timeout (WithTimeout). A handler that runs longer than
//     the timeout on an input blocks the queue;
//   - the input does not loop: the handler runs at most the configured
//     attempts (WithMaxAttempts) for it;
//   - the input settles: it is acked and either processed (the handler
//     returned nil) or in the DLQ topic with a reason. A valid sample must be
//     processed.
//
// Each broken promise is reported with t.Errorf, one line per input, and Run
// returns a Report listing every input's outcome.
//
// The kit delivers one message at a time and waits for its ack or nack
// before the next, like a Kafka partition or a RabbitMQ queue with prefetch
// 1, so a message that holds the handler holds the queue as on a real
// broker (Watermill's gochannel alone would hand the next message over).
// Every input gets a fresh broker and router, so one blocked input does not
// hide what the others do. At teardown the handler's message context is
// cancelled; a handler that ignores it keeps its goroutine until it returns.
//
// A fresh stack is a quiet stream for the breaker: fewer outcomes than its
// MinRequests, so it cannot tell a poison message that fails transiently
// from an outage and holds it back (nacks it) instead of dead-lettering it.
// A handler that reports malformed input as transient is therefore reported
// as looping, which is what it does in production when traffic is low: mark
// such errors with poison.Invalid or poison.Permanent.
//
// # Usage
//
//	func TestOrderHandlerSurvivesPoison(t *testing.T) {
//		rep := poisontest.Run(t, handleOrder, poisontest.WithValid([]byte(`{"id":1}`)))
//		for _, r := range rep.Results {
//			t.Logf("%s: %s %s", r.Input, r.Outcome, r.Reason)
//		}
//	}
//
// # Options
//
// WithTimeout is the per-message timeout (default 5s, DefaultTimeout);
// WithMaxAttempts sets Retry's attempts and the most handler runs an input
// may take before it counts as looping (default 3, DefaultMaxAttempts);
// WithValid adds samples that must be processed; WithInputs adds inputs of
// your own, sent after the battery; WithoutBattery leaves the built-in bad
// inputs out (Battery lists them); WithRouterConfig adjusts the
// router.Config before router.New, e.g. to use the service's own Breaker or
// Classifier settings.
//
// # See also
//
// Package router builds the stack under test; poison has the markers that
// make a handler's failures permanent or transient. For a whole service on
// a real broker, see the examples (go run ./examples/kafka) and
// internal/matrix.
package poisontest
