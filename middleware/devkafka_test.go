package middleware_test

// Tests open Kafka with kafka.embedded, which needs the embedded broker
// linked in.
import _ "github.com/antidote-mq/antidote/devkafka"
