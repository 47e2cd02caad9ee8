// Command rabbitmq runs the Hello World incident on rabbitmq: a producer floods writes
// through the broker into a consumer that stores them in a sink. A few of them
// are poison pills (--poison-every, default 250), dead-lettered; the summary
// says what became of them and which antidote commands show them in the
// hospital.
//
//	go run ./examples/rabbitmq
//	go run ./examples/rabbitmq --messages 2000 --poison-every 0 --json
//
// Broker addresses come from ANTIDOTE_* env or --config (see docs/brokers.md).
package main

import (
	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/examples/internal/hello"
)

func main() { hello.Main(adapters.KindAMQP) }
