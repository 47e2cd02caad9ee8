// Command antidote is Antidote's command-line tool: the message hospital for
// the dead letters the services' DLQs hold, and an embedded Kafka-protocol
// broker for development.
//
//	antidote dlq list|group|show|replay|purge --topic orders
//	antidote hospital ingest --topics orders.dlq [--follow]
//	antidote hospital serve --addr 127.0.0.1:8080
//	antidote devkafka --addr 127.0.0.1:9092 --partitions 4
//	antidote migrate [--dry-run]
//	antidote --version
//
// Install it with
//
//	go install github.com/antidote-mq/antidote/cmd/antidote@latest
//
// or run it from a clone with go run ./cmd/antidote.
//
// # Configuration
//
// The broker comes from the same ANTIDOTE_* environment and --config YAML
// file as the services (package adapters: ANTIDOTE_BROKER,
// ANTIDOTE_KAFKA_BROKERS, ANTIDOTE_AMQP_URL, ANTIDOTE_POSTGRES_URL, ...),
// or --broker kafka|amqp|postgres. The hospital store is
// ANTIDOTE_HOSPITAL_URL (a PostgreSQL URL, or hospital.url in --config);
// with it set, antidote dlq reads the letters ingested there instead of the
// broker's DLQ. ANTIDOTE_HOSPITAL_TOKEN (at least 16 characters) guards the
// web UI; without it, serve listens on loopback only. Letters whose payload
// went to a claim-check store are read whole with --claim-check
// postgres|redis (or ANTIDOTE_CLAIM_CHECK, or claim_check.store in --config).
//
// # Commands
//
// antidote dlq inspects and treats one topic's DLQ ("<topic>.dlq"): list and
// group (by cause, the fingerprint) with --reason, --handler, --error-type,
// --since and --until filters; show one letter (--full: its whole payload); replay (to the original
// topic, or --to one in --allow-replay-to, at --rate, default 100/s) and
// purge, both with --dry-run and a confirmation unless --yes. On RabbitMQ
// and PostgreSQL replay and purge remove letters; on Kafka they move the
// hospital's own consumer-group offset on the DLQ topic.
//
// antidote hospital ingest consumes DLQ topics into the store (a letter is
// acked once its row is committed; on Kafka as its own consumer group,
// --group antidote-hospital); without --follow it returns once no letter
// arrived for --idle (5s). antidote hospital serve serves the web UI and
// JSON API of package hospital/web (default 127.0.0.1:8080).
//
// antidote devkafka runs franz-go's kfake until interrupted, printing one
// "devkafka listening on ADDR" line; --data-dir keeps its data across
// restarts, --brokers N makes a cluster, --sasl-* and --tls-* secure it.
//
// antidote migrate applies the pending versioned migrations of the tables
// Antidote owns in PostgreSQL (docs/migrations.md), for teams that run
// migrations themselves; --dry-run prints the SQL and changes nothing.
//
// # Exit codes
//
//	0  success
//	1  any other failure
//	2  bad usage: unknown command, unknown flag, bad flag value, bad config
//	3  nothing matched: list, group or show found no letter, replay or purge selected none
//	4  broker unreachable: no broker answered within connect_timeout
//	5  partly done: some selected letters were left dead, each reported with why,
//	   or another treatment of the same DLQ took over
//
// Each command's --help has its flags and examples.
package main
