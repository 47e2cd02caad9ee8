// Package throttle limits how fast and how many messages a consumer handles,
// and makes producers feel a stalled consumer before the broker's disk fills.
//
// Consumer side (usually through middleware.Throttle):
//
//   - RateLimiter: a token bucket (golang.org/x/time/rate) with a burst.
//   - KeyedLimiter: one token bucket per key (a tenant, a producer, a
//     partition key), the set of buckets bounded by an LRU.
//   - ConcurrencyLimiter: at most N handlers at once.
//   - AdaptiveLimiter: a concurrency limit that finds itself: it grows while
//     the downstream stays fast and backs off when its latency or error rate
//     rises (AIMD driven by a latency gradient; see AdaptiveLimiter for why).
//
// Producer side: BackpressurePublisher wraps any message.Publisher and reads
// the consumer's backlog from a LagSource (Kafka consumer-group lag, RabbitMQ
// queue depth, PostgreSQL queue rows). Above a high watermark it blocks, or
// rejects with ErrBackpressure, until the backlog is back under a low
// watermark.
//
// Every wait in this package honours a context (the message's), so a
// shutting-down router never hangs on a throttle. The only goroutine the
// package starts is the BackpressurePublisher's poller, which Close stops.
package throttle
