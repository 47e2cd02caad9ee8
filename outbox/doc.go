// Package outbox is a transactional outbox for services that write to
// PostgreSQL: Add inserts a message into the outbox table in the same
// transaction as the business write, and a Relay publishes the rows to any
// Watermill Publisher (any broker adapters.Open builds).
//
// It is built against the incident it exists for: a sweeper that read ten
// rows, published them and marked the batch sent in one statement; one
// corrupt row made the marking fail every time, the same ten messages went
// out forever and a catch-all hid the error. Here:
//
//   - each row is marked sent on its own, right after its publish is
//     confirmed; a batch is never marked in one statement;
//   - a row that cannot be decoded, published or marked is retried a bounded
//     number of times (with backoff, without holding the rows behind it) and
//     then moved, with the reason, to the outbox's dead-letter table;
//   - every row carries a unique message id (the message UUID and its
//     idempotency key), so a re-sent row is a duplicate the consumer's
//     idempotency skips;
//   - the relay stamps its producer identity, so a consumer's flood guard
//     and the hospital name it;
//   - several relays can run: rows are claimed with row locks (FOR UPDATE
//     SKIP LOCKED) and a lease, so none is sent twice in the normal case,
//     and a relay killed between publish and mark re-sends at most the rows
//     it had published and not yet marked (32 at most: marks follow the
//     publishes in order, each its own statement).
//
// Backpressure: give the relay a throttle.BackpressurePublisher and it
// pauses while consumers lag, instead of piling on.
package outbox
