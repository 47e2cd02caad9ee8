package adapters_test

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/adapters"

	// kafka.embedded needs the in-process broker linked in.
	_ "github.com/antidote-mq/antidote/devkafka"
)

// One Config, one broker: here the in-process Kafka broker of package
// devkafka (kafka.embedded), for demos and tests. With kafka.brokers set
// instead (or broker: amqp / postgres), the same code runs on a real one.
func ExampleOpen() {
	ctx := context.Background()
	b, err := adapters.Open(ctx, adapters.Config{
		Broker: adapters.KindKafka,
		Kafka:  adapters.KafkaConfig{Embedded: true, ConsumerGroup: "example"},
	}, nil)
	if err != nil {
		panic(err)
	}
	defer b.Close()

	msgs, err := b.Subscriber.Subscribe(ctx, "orders")
	if err != nil {
		panic(err)
	}
	if err := b.Publisher.Publish("orders", message.NewMessage("order-1", []byte(`{"user_id":1}`))); err != nil {
		panic(err)
	}
	msg := <-msgs
	msg.Ack()
	_, offset, ok := antidote.PositionFromCtx(msg.Context())
	fmt.Println(b.Kind, b.Embedded, msg.UUID, string(msg.Payload), ok, offset)
	// Output: kafka true order-1 {"user_id":1} true 0
}

// Limits are checked before anything reaches the broker: a topic whose DLQ
// topic could not exist is refused at Subscribe and Publish, naming the
// rule, so a handler never starts on a topic it could not dead-letter.
func ExampleOpen_limits() {
	b, err := adapters.Open(context.Background(), adapters.Config{
		Broker: adapters.KindKafka,
		Kafka:  adapters.KafkaConfig{Embedded: true},
	}, nil)
	if err != nil {
		panic(err)
	}
	defer b.Close()

	err = b.Publisher.Publish(strings.Repeat("t", 247), message.NewMessage("1", nil))
	fmt.Println(errors.Is(err, antidote.ErrInvalidTopic))
	err = b.Publisher.Publish("orders", message.NewMessage("2", make([]byte, 2<<20)))
	fmt.Println(errors.Is(err, antidote.ErrMessageTooLarge))
	// Output:
	// true
	// true
}
