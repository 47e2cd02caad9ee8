// Package pgstore keeps Antidote's state in PostgreSQL: the crash-loop
// guard's delivery counts (NewDeliveryTracker, a poison.DeliveryTracker),
// idempotency keys (NewIdempotencyStore, an idempotency.TxStore with the
// transactional mode) and claim checks of dead letters too large for their
// DLQ (NewClaimCheckStore, a poison.ClaimCheck).
//
// Every store takes either an existing *pgxpool.Pool (Pool; never closed
// by the store) or a connection string (URL; the store opens its own pool
// and closes it on Close), keeps its rows in one table (Table, optionally
// schema-qualified; the hospital store in a few tables named from it) and
// migrates it on start, unless SkipCreateTable is set.
//
// Migrations: each store's schema has versions (Migrations), recorded per
// table in antidote_schema_versions, a table in the same schema. Version 1
// is the CREATE TABLE IF NOT EXISTS the stores ran before versions existed,
// so tables made then are adopted; later versions upgrade them (the
// hospital's version 2 adds the columns its first tables lack). Migrate
// applies the pending ones in one transaction under an advisory lock on
// the table, the one the stores took before, so replicas starting together
// (and older binaries) take turns; a table at a version newer than the
// binary knows is an error wrapping ErrSchemaTooNew, never a downgrade.
// PendingMigrations changes nothing; `antidote migrate --dry-run` prints
// it. See docs/migrations.md.
//
// Stores whose rows expire delete them opportunistically: a call that finds the last cleanup older than
// CleanupInterval starts one batched DELETE pass in a goroutine that Close
// cancels and waits for, so no timer runs and nothing outlives Close.
//
// Times are the database's clock, so consumers on hosts with skewed clocks
// agree on leases and TTLs. Every store is safe for concurrent use, by many
// processes sharing the table too.
package pgstore
