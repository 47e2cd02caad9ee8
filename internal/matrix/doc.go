// Package matrix holds the hostile-input and fault matrix: one table of
// cases (extreme sizes and counts, malformed metadata that Antidote or
// Watermill itself reads, invalid UTF-8 and NUL, identity fields of 100 KB,
// messages held past every deadline, names at each broker's limit, a DLQ
// that is deleted, refusing or slow) run through the whole stack against
// every broker (memory, Kafka, RabbitMQ, PostgreSQL), each also with the
// consumer shut down while the case is in its handler (what SIGTERM does).
//
// Every case asserts one invariant: every published message ends processed
// exactly once, or in the DLQ with a readable envelope, or is refused at
// Publish with an error naming the limit; no queue stays blocked; nothing
// loops hot (handler runs and error log lines per message are bounded).
// docs/reliability.md has the table of outcomes.
//
//	go test -race -run TestMatrix ./internal/matrix/
package matrix
