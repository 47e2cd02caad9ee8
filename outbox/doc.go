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
//     number of times (with backoff) and then moved, with the reason, to the
//     outbox's dead-letter table;
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
// # Order
//
// A message's ordering key is its "partition_key" metadata
// (Config.KeyMetadata), the Kafka adapter's record key: the key it is
// published with, as Debezium's outbox uses the aggregate id. Rows of one key
// are sent in the order they were added (by id): a row goes out only after
// every earlier row of its key was sent or dead-lettered, however many
// relays run and whichever dies (one relay holds a key's rows at a time,
// claimed from the key's oldest unsent row on and published in order; a key
// with many rows goes a batch at a time).
//
//   - A row that failed and waits for its retry holds back the later rows
//     of its key, and only those: other keys and keyless rows go on.
//   - A row that is dead-lettered (MaxAttempts used up, or refused by the
//     broker for a limit) lets its key go on: it is in the dead-letter table
//     and the later rows are sent, as a consumer's DLQ does. Holding the key
//     until an operator acts (per-key quarantine) is a later issue.
//   - A relay that dies holding rows leaves their keys waiting until its
//     lease runs out (at most Lease, 10s by default; a live relay renews its
//     lease every Lease/4, so a slow publish does not lose it); then the
//     rows it held go out first. A relay shut down (ctx cancelled) gives its
//     rows back at once.
//   - Order is that of each row's first copy. A copy sent again (a row
//     published and not yet marked when its relay died, a mark that failed,
//     a publish that hung past a lease its relay could not renew) can land
//     after later rows of its key; it has the message id of the first, for
//     the consumer's idempotency to skip.
//   - Keyless rows (no key, or an empty one) are sent oldest first but with
//     no order promised among them, and never wait for anything.
//   - Order is that of the ids, so of the commits only when the writers of
//     a key are serialized (as they are when each locks the aggregate's row:
//     the account, the order). Two transactions adding rows of one key at
//     once are not ordered: the one with the lower id can commit after the
//     other's row was sent.
//   - Rows written by SQL of your own are keyless unless they set key_hash
//     to sha256(convert_to(key, 'UTF8')); a table of the previous schema
//     gets the column from its migration (Migrate, CreateTables; NewRelay
//     runs it unless RelayConfig.SkipCreateTables). During a rolling
//     upgrade, relays of the previous version claim by id alone: order holds
//     once they are gone.
//
// Schema: the tables have versions (Migrations), recorded in
// antidote_schema_versions; NewRelay applies the pending ones under an
// advisory lock unless RelayConfig.SkipCreateTables, and `antidote migrate`
// applies or prints them (docs/migrations.md).
//
// Backpressure: give the relay a throttle.BackpressurePublisher and it
// pauses while consumers lag, instead of piling on.
package outbox
