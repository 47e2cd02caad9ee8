// Package pgstore keeps Antidote's state in PostgreSQL: the crash-loop
// guard's delivery counts (NewDeliveryTracker, a poison.DeliveryTracker),
// idempotency keys (NewIdempotencyStore, an idempotency.TxStore with the
// transactional mode) and claim checks of dead letters too large for their
// DLQ (NewClaimCheckStore, a poison.ClaimCheck).
//
// Every store takes either an existing *pgxpool.Pool (Pool; never closed
// by the store) or a connection string (URL; the store opens its own pool
// and closes it on Close), keeps its rows in one table (Table, optionally
// schema-qualified) and creates that table on start with CREATE TABLE IF
// NOT EXISTS, serialized by an advisory lock so replicas starting together
// do not race, unless SkipCreateTable is set (the DDL is in the store's
// CreateTableSQL, for migrations). Stores whose rows expire delete them
// opportunistically: a call that finds the last cleanup older than
// CleanupInterval starts one batched DELETE pass in a goroutine that Close
// cancels and waits for, so no timer runs and nothing outlives Close.
//
// Times are the database's clock, so consumers on hosts with skewed clocks
// agree on leases and TTLs. Every store is safe for concurrent use, by many
// processes sharing the table too.
package pgstore
