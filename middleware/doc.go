// Package middleware turns each Antidote concern into a Watermill
// message.HandlerMiddleware, each built by its New function from a Config
// whose zero fields take their defaults (setDefaults, then Validate):
//
//   - Recover: a panic becomes a *poison.PanicError with its stack
//     (permanent), instead of a nack that redelivers the pill forever;
//   - Retry: in-process retries of transient errors with backoff; a
//     permanent error returns at once;
//   - DeadLetter: a message that failed for good goes to its DLQ topic in a
//     poison envelope (reason, error, origin, attempts), and only then is the
//     original acked;
//   - CrashLoopGuard: counts deliveries in a durable poison.DeliveryTracker,
//     so a message that kills the process is dead-lettered (crash_loop)
//     after MaxDeliveries instead of crash-looping the consumer;
//   - Breaker: when most messages fail transiently (an outage, not poison),
//     pauses and holds messages back instead of dead-lettering them all;
//   - DelayedRetry: non-blocking retries through the broker's Scheduler
//     (stages such as 10s, 1m, 10m), the original acked;
//   - Idempotency: skips a message whose key was completed, with a claim
//     that a failed attempt gives back (see package idempotency);
//   - FloodGuard: reports, and with Drop dead-letters, a message arriving
//     far too often, naming its producer;
//   - Throttle: rate, per-key rate, concurrency or adaptive concurrency
//     limits that honour the message context;
//   - Tracing and Metrics: an OpenTelemetry consumer span per delivery, the
//     messaging.* and antidote.* metrics, each delivery's Outcome as a span
//     attribute and a metric label.
//
// # Usage
//
// router.New stacks all of them in the order they are meant to be used
// (docs/design.md, "Middleware order"), and is how most services use this
// package. Built by hand, on any Watermill router, DeadLetter goes outside
// Retry, outside Recover:
//
//	deadLetter, err := middleware.NewDeadLetter(middleware.DeadLetterConfig{
//		Publisher:     b.Publisher,
//		ConsumerGroup: "order-sink",
//	})
//	...
//	retry, err := middleware.NewRetry(middleware.RetryConfig{})
//	...
//	r.AddConsumerHandler("store-orders", "orders", b.Subscriber, handle).
//		AddMiddleware(deadLetter.Middleware, retry.Middleware, middleware.Recover)
//
// # Defaults
//
// Retry: 3 attempts, 100ms doubling to at most 10s, jitter 0.5. DeadLetter:
// topic "<topic>.dlq" (antidote.DLQTopic), Publisher required.
// CrashLoopGuard: MaxDeliveries 3, Tracker required. Breaker: a 30s window,
// at least 10 outcomes, opens at a 0.5 transient-failure ratio, open 5s,
// holds one message at most 1m (MaxHoldTime) before dead-lettering it as
// retries_exhausted. Idempotency: Store required, lease 30s, keys scoped by
// handler name. FloodGuard: more than 20 arrivals of one message within 10s.
// Throttle: nothing limited until a limit is set. Tracing and Metrics: the
// global OpenTelemetry providers. Each Config's fields document their
// default and its trade-off.
//
// # See also
//
// Package poison classifies errors and defines the envelope and reasons;
// router builds the stack; pgstore and redisstore have the durable trackers
// and stores; throttle the limiters behind Throttle; telemetry the providers
// Tracing and Metrics record to.
package middleware
