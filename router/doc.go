// Package router builds a Watermill message.Router with Antidote's standard
// middleware stack from one Config. Handlers stay plain Watermill handlers:
// register them on the returned router as usual, and every one of them is
// guarded.
//
// The stack, outermost first (see docs/design.md for why this order):
//
//	Tracing → Metrics → [FloodGuard] → CrashLoopGuard → DeadLetter → Breaker
//	  → [DelayedRetry] → Retry → [Idempotency] → [Throttle] → Recover → handler
//
// (bracketed pieces are on when configured). Config.Consumer names the
// consumer (system, group, address, version) once for every piece; a
// piece's own field overrides it. Above Tracing sit Watermill's
// Recoverer and a private step (internal/stack) that grows each message
// goroutine's stack once instead of step by step deep in the chain.
// The breaker sits above DelayedRetry: a message moved to a retry stage is
// settled, not failed, so only a message that exhausted every stage counts
// against the breaker, and only that one is ever held back.
//
// A handler that fails permanently, panics, exhausts its retries, comes from
// an undecodable record, or keeps killing the process ends in the DLQ topic
// with an envelope saying why; the original is acked only once the letter is
// published. Nothing else acks a failed message.
//
// # Usage
//
// A consumer on any broker adapters.Open builds, with a durable crash-loop
// tracker:
//
//	b, err := adapters.Open(ctx, cfg, logger)
//	...
//	tracker, err := pgstore.NewDeliveryTracker(ctx, pgstore.DeliveryTrackerConfig{URL: pgURL})
//	...
//	r, err := router.New(router.Config{
//		Logger:         logger,
//		Consumer:       b.ConsumerIdentity(), // once: spans, metrics, letters, tracker keys
//		DeadLetter:     middleware.DeadLetterConfig{Publisher: b.Publisher},
//		CrashLoopGuard: middleware.CrashLoopGuardConfig{Tracker: tracker},
//	})
//	...
//	r.AddConsumerHandler("charge", "orders", b.Subscriber, handle)
//	err = r.Run(ctx)
//
// The handler reports bad input with poison.Invalid or poison.Permanent (a
// *json.SyntaxError and the like are permanent already, see
// poison.DefaultClassifier) and a flaky dependency with poison.Transient;
// any other error is retried like a transient one (middleware.Retry), then
// judged by the breaker (middleware.Breaker).
//
// # Defaults
//
// Only DeadLetter.Publisher and, unless DisableCrashLoopGuard, a
// CrashLoopGuard.Tracker are required; every other zero field takes its
// default:
//
//   - DLQ topic "<topic>.dlq" (antidote.DLQTopic);
//   - Retry: 3 attempts, 100ms doubling backoff with jitter, capped at 10s;
//   - CrashLoopGuard: a message's 4th unsettled delivery (MaxDeliveries 3)
//     is dead-lettered as crash_loop without running the handler;
//   - Breaker: opens when half the outcomes of a 30s window (10 at least)
//     are transient failures, holds a message at most 1m before it is
//     dead-lettered as retries_exhausted;
//   - Tracing and Metrics on the global OpenTelemetry providers (no-ops until
//     the program installs some, see package telemetry);
//   - CloseTimeout 30s; Idempotency, Throttle, FloodGuard and DelayedRetry
//     off (nil).
//
// New checks the Config first (Config.Validate) and names what is missing
// or wrong. With DelayedRetry, call AddRetryRelays for each topic
// so Kafka gets the relays of its retry stages.
//
// # See also
//
// Package middleware has each piece and its options; poison the error
// classes, reasons and the DLQ envelope; adapters the brokers; pgstore and
// redisstore the durable trackers and idempotency stores; poisontest checks a
// handler against poison under this stack; dlq and the antidote command treat
// what lands in the DLQ.
package router
