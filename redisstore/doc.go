// Package redisstore keeps Antidote's state in Redis: the crash-loop
// guard's delivery counts (NewDeliveryTracker, a poison.DeliveryTracker),
// idempotency keys (NewIdempotencyStore, an idempotency.Store) and claim
// checks of dead letters too large for their DLQ (NewClaimCheckStore, a
// poison.ClaimCheck).
//
// Every store takes either an existing go-redis client (Client: a
// *redis.Client, *redis.ClusterClient, ...; never closed by the store) or
// an address (Addr: the store opens its own client, connected lazily, and
// closes it on Close), and writes its keys under a Prefix. Keys that expire
// do so by Redis TTL: nothing runs in the background.
//
// Durability is Redis's: a Redis restart keeps only what its persistence
// (RDB snapshots, AOF with appendfsync) wrote. Every store is safe for
// concurrent use, by many processes sharing the server too.
package redisstore
