package middleware_test

import (
	"context"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/poison"
)

// An undecodable record goes to the DLQ, raw bytes kept, without running the
// handler; a per-handler DLQ topic overrides the default naming.
func TestDeadLetterUndecodableSkipsHandler(t *testing.T) {
	ps := gochannel.NewGoChannel(gochannel.Config{Persistent: true}, watermill.NopLogger{})
	dl, err := middleware.NewDeadLetter(middleware.DeadLetterConfig{Publisher: ps, HandlerTopics: map[string]string{"h": "h-dead"}})
	if err != nil {
		t.Fatal(err)
	}
	r, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	ran := make(chan string, 10)
	h := r.AddConsumerHandler("h", "in", ps, func(m *message.Message) error {
		ran <- m.UUID
		return nil
	})
	h.AddMiddleware(dl.Middleware)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = r.Run(ctx) }()
	<-r.Running()
	dlq, err := ps.Subscribe(ctx, "h-dead")
	if err != nil {
		t.Fatal(err)
	}
	bad := message.NewMessage("bad", []byte{0xff, 0x00, 'x'})
	bad.Metadata.Set(antidote.MetadataUndecodable, "metadata is not a JSON object")
	if err := ps.Publish("in", bad, message.NewMessage("good", []byte("{}"))); err != nil {
		t.Fatal(err)
	}
	select {
	case l := <-dlq:
		l.Ack()
		letter, err := poison.ReadEnvelope(l)
		if err != nil {
			t.Fatal(err)
		}
		if l.UUID != "bad" || letter.Reason != poison.ReasonUndecodable || string(l.Payload) != "\xff\x00x" || letter.OriginalTopic != "in" {
			t.Fatalf("letter %s %+v payload %q", l.UUID, letter, l.Payload)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("undecodable message not dead-lettered")
	}
	select {
	case id := <-ran:
		if id != "good" {
			t.Fatalf("handler ran on %s", id)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the message after the undecodable one was not handled")
	}
	select {
	case id := <-ran:
		t.Fatalf("handler ran again on %s", id)
	case <-time.After(100 * time.Millisecond):
	}
}
