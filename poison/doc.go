// Package poison defines what a poison message is: how errors are classified
// (permanent vs transient), why a message was dead-lettered (Reason), and the
// DLQ envelope that records where it came from and what went wrong.
//
// The package only describes; it never retries, publishes or sleeps. The
// middleware package acts on these descriptions.
//
// # Marking errors
//
// A handler says what kind of failure it met; the middleware does the rest:
//
//	var order Order
//	if err := json.Unmarshal(msg.Payload, &order); err != nil {
//		return err // *json.SyntaxError: permanent, dead-lettered at once
//	}
//	if order.UserID <= 0 {
//		return poison.Invalidf("user_id %d is not > 0", order.UserID) // permanent
//	}
//	if err := db.Save(ctx, order); err != nil {
//		return poison.Transient(err) // retried, then judged by the breaker
//	}
//
// Permanent, Transient, Invalid and WithReason mark an error explicitly; the
// outermost marker in the error's chain wins. DefaultClassifier places the rest: the
// encoding packages' errors are permanent, network, deadline and
// PostgreSQL connection-class errors transient, anything else ClassUnknown
// (retried like a transient one). Chain(yours, DefaultClassifier()) puts
// rules of your own first: the first answer that is not ClassUnknown wins. Defer says "not this message's fault, and not now": nacked and
// delivered later, never dead-lettered.
//
// # Dead letters
//
// Envelope writes a letter's metadata (the Key* constants: original topic,
// partition and offset, handler, consumer group, reason, error, error type,
// stack, attempts, first and last failure, producer, trace); ReadEnvelope
// parses one back into a Letter; Replay makes the message to send back.
// Reasons are permanent, retries_exhausted, crash_loop, undecodable, panic
// and rejected_by_flood_guard. A letter too large for its DLQ moves its
// payload to a ClaimCheck store (ResolveClaim reads it back).
//
// # Trackers
//
// DeliveryTracker counts a message's deliveries for the crash-loop guard.
// NewMemoryDeliveryTracker is in-process (at most 100,000 counts, each kept
// 24h): not durable, so a message that kills the process is counted from
// zero again and loops; it is for tests and demos (the crash-loop guard logs
// it as not durable). The durable ones are pgstore.NewDeliveryTracker and
// redisstore.NewDeliveryTracker. NewFloodDetector counts arrivals for the
// flood guard (more than 20 of one message within 10s by default).
//
// # See also
//
// Package middleware acts on these descriptions; router stacks it; dlq,
// hospital and fingerprint read the letters; claimcheck, pgstore and
// redisstore store what does not fit in one.
package poison
