// Command kafka runs the Hello World incident on kafka: a producer floods writes
// through the broker into a consumer that stores them in a sink.
//
//	go run ./examples/kafka --messages 2000 --json
//
// Broker addresses come from ANTIDOTE_* env or --config (see docs/brokers.md).
package main

import (
	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/examples/internal/hello"
)

func main() { hello.Main(adapters.KindKafka) }
