// Package ledger is the reliability suite's keyed end-to-end test, shaped
// like a payments ledger: an API writes each transfer (an account and its
// per-account sequence number) and its event in one PostgreSQL transaction
// (outbox.Add), outbox.Relay processes publish the events to the broker,
// and worker processes built with router.New apply each transfer with
// transactional idempotency, in the same transaction as its effect. Relays,
// workers and the broker are SIGKILLed (RabbitMQ: stop_app/start_app) and
// restarted, repeatedly, while the API writes; at the end the test counts,
// from the tables, the transfers lost, applied twice, and applied after a
// later transfer of the same account (per-key inversions), measured from
// the business commit to the effect. See docs/reliability.md:
//
//	go test -run TestLedger -v ./examples/internal/ledger/
//	ANTIDOTE_LEDGER_UNORDERED=all go test -run TestLedger -v ./examples/internal/ledger/   # order protections off: must fail
//
// ANTIDOTE_LEDGER_UNORDERED=outbox turns off only the outbox's order
// (keyless rows), =consumer only the consumer's (kafka.ordering unordered;
// RabbitMQ without single active consumer).
package ledger
