// Command postgres runs the Hello World incident on postgres: a producer floods writes
// through the broker into a consumer that stores them in a sink.
//
//	go run ./examples/postgres --messages 2000 --json
//
// Broker addresses come from ANTIDOTE_* env or --config (see docs/brokers.md).
package main

import (
	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/examples/internal/hello"
)

func main() { hello.Main(adapters.KindPostgres) }
