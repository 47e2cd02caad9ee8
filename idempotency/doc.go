// Package idempotency makes at-least-once delivery safe for handlers whose
// effects must happen once: it extracts an idempotency key from each message
// (KeyFunc) and remembers, in a Store, which keys are being processed and
// which are done.
//
// Unlike Watermill's Deduplicator, which marks a key before the handler runs
// (so a message whose first attempt failed is dropped as a duplicate when it
// comes back: lost), a key here goes through three states:
//
//	absent --Claim--> claimed --Complete--> completed (kept for Retention)
//	                     |
//	                     +--Release (the handler failed) or lease expiry--> absent
//
// so only a success makes later copies duplicates; a failed attempt gives the
// key back and its retry runs. middleware.Idempotency drives a Store this way.
//
// Stores: NewMemoryStore here (one process, bounded);
// pgstore.NewIdempotencyStore (shared, durable; also the transactional mode
// in which the handler's writes and the key's completion commit in one
// transaction, see pgstore.IdempotencyStore.RunTx) and
// redisstore.NewIdempotencyStore (shared; SET NX PX claims).
//
// On the producer side, NewPublisher stamps each message with its business
// idempotency key and the producer's identity (poison.KeyProducer), so
// re-sent copies are recognised as the same message and a flood can be traced
// to whoever sends it.
//
// # Usage
//
// The consumer side is router.Config.Idempotency (middleware.Idempotency)
// with a store shared by every replica:
//
//	store, err := pgstore.NewIdempotencyStore(ctx, pgstore.IdempotencyStoreConfig{URL: pgURL})
//	...
//	r, err := router.New(router.Config{
//		...
//		Idempotency: &middleware.IdempotencyConfig{Store: store},
//	})
//
// The producer side stamps the key the consumer dedupes on:
//
//	pub, err := idempotency.NewPublisher(b.Publisher, idempotency.ProducerConfig{
//		Service: "billing",
//		Key:     idempotency.FromJSONField("invoice_id"),
//	})
//
// # Defaults
//
// A message's key is its Idempotency-Key metadata (MetadataKey) when the
// producer set one, else its UUID (DefaultKey); FromMetadata, FromJSONField,
// FromUUID and FirstOf build others. A completed key is remembered for 24h
// (DefaultRetention); the memory store holds at most 100,000 keys
// (DefaultMemoryStoreMaxKeys), evicting expired keys first, then the least
// recently used. A producer's Instance defaults to "<hostname>-<pid>".
// middleware.IdempotencyConfig has the consumer's options: a 30s claim
// lease, the scope (default: the handler name), the transactional mode.
//
// # See also
//
// Package middleware (Idempotency, FloodGuard, which reads the producer
// identity); pgstore and redisstore for shared stores; outbox for producers
// that write to PostgreSQL.
package idempotency
