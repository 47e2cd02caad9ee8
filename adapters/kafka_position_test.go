package adapters_test

import (
	"context"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/adapters"
)

// Every message the Kafka subscriber delivers has its partition and offset
// where the policy packages read them (antidote.PositionFromCtx, through
// the reader adapters registers), redeliveries after a nack included
// (watermill-kafka gives those a fresh context).
func TestKafkaPosition(t *testing.T) {
	b, err := adapters.Open(t.Context(), kafkaConfig(t, "position-"+watermill.NewShortUUID()), watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	topic := "position_" + watermill.NewShortUUID()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	msgs, err := b.Subscriber.Subscribe(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := b.Publisher.Publish(topic, message.NewMessage(watermill.NewUUID(), []byte{byte(i)})); err != nil {
			t.Fatal(err)
		}
	}
	type pos struct {
		partition int32
		offset    int64
	}
	seen := map[string]pos{}
	nacked := false
	for len(seen) < 3 {
		var msg *message.Message
		select {
		case msg = <-msgs:
		case <-ctx.Done():
			t.Fatalf("got %d of 3 messages", len(seen))
		}
		p, o, ok := antidote.PositionFromCtx(msg.Context())
		if !ok {
			t.Fatalf("message %s has no position", msg.UUID)
		}
		if prev, again := seen[msg.UUID]; again && prev != (pos{p, o}) {
			t.Fatalf("redelivered %s at %d/%d, first at %d/%d", msg.UUID, p, o, prev.partition, prev.offset)
		}
		if !nacked {
			nacked = true
			seen[msg.UUID] = pos{p, o}
			msg.Nack() // comes back with a fresh context: still positioned
			continue
		}
		seen[msg.UUID] = pos{p, o}
		msg.Ack()
	}
}
