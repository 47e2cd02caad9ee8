// Package adapters turns one Config into a Watermill Publisher and Subscriber
// for memory (gochannel), Kafka, RabbitMQ (AMQP) or a PostgreSQL-backed queue,
// so the same handler runs on any of them, picked by configuration.
//
// # Usage
//
// A service reads its Config from a YAML file and the ANTIDOTE_* environment
// (the environment wins), then opens the broker it names:
//
//	cfg, err := adapters.ConfigFromEnv("antidote.yaml") // "" for env only
//	...
//	b, err := adapters.Open(ctx, cfg, logger)
//	...
//	defer b.Close()
//	msgs, err := b.Subscriber.Subscribe(ctx, "orders")
//
// ConfigFromEnv is LoadConfig (file, then environment) followed by
// SetDefaults and Validate; a program that sets fields itself (the broker,
// say) calls LoadConfig, sets them, and lets Open fill the defaults and
// validate. The README's configuration table lists every key with its
// environment variable and default (EnvVars is its source).
//
// A Broker holds the Publisher, the Subscriber and everything they started;
// Broker.Scheduler is the broker's way of delivering a message later (for
// middleware.DelayedRetry), Broker.LetterSubscriber the way the hospital
// reads DLQ topics, and OpenLagSource reads a topic's backlog for the
// consumer-lag gauge.
//
// # Defaults
//
// Broker has no default: the one broker that needs nothing (memory) loses its
// messages on exit, so it is chosen explicitly. Every other field has one:
// ConnectTimeout 5s; Kafka consumer group "antidote", protocol version
// 2.1.0, partition key metadata "partition_key", one message of a partition
// at a time (kafka.concurrency 1); RabbitMQ at
// amqp://guest:guest@127.0.0.1:5672/ with classic durable queues; PostgreSQL
// at postgres://postgres@127.0.0.1:5432/test?sslmode=disable, a 30s ack
// deadline. kafka.embedded starts an in-process broker (package devkafka must
// be imported) for tests and demos; it is logged as not durable.
//
// Open fails within ConnectTimeout with an error wrapping ErrUnreachable
// when no broker answers, and with ErrAuthentication on bad credentials.
// Topic names, payload and metadata sizes are checked before anything
// reaches the broker (antidote.ErrMessageTooLarge, antidote.ErrInvalidTopic),
// so a handler never starts on a topic it could not dead-letter.
//
// # See also
//
// Package router stacks Antidote's middleware over a Broker's Subscriber;
// devkafka is the embedded Kafka broker; telemetry wraps the Publisher for
// producer spans; docs/reliability.md has what each broker guarantees.
package adapters
