// Package chaos is the reliability suite's chaos test: it drives the
// examples' consumer, as a separate process, through SIGKILLs at random
// moments, a PostgreSQL crash-restart, a RabbitMQ stop_app/start_app, a
// Kafka broker crash and clean restart, and process-killing messages, then proves from the sink table and the DLQ
// that every healthy message took effect exactly once, every poison message
// was dead-lettered, and nothing was lost.
//
// It owns its servers (a private PostgreSQL cluster and RabbitMQ node, and
// `antidote devkafka --data-dir` for Kafka), so the faults never touch the shared
// servers. Scale is set by env; see chaos_test.go and docs/reliability.md:
//
//	go test -run TestChaos -v ./examples/internal/chaos/                                   # CI scale
//	ANTIDOTE_CHAOS_MESSAGES=50000 go test -run TestChaos -v -timeout 60m ./examples/internal/chaos/
package chaos
