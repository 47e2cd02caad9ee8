package adapters_test

import (
	"context"
	"net/url"
	"strings"
	"testing"

	wamqp "github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/internal/testenv/brokers"
	"github.com/antidote-mq/antidote/poison"
)

// A private RabbitMQ whose frame_max is 1 MiB, and a foreign publisher that
// negotiated it and sends headers near it. A consumer at amqp091-go's
// default frame (128 KiB) had its connection dropped by the client at
// every delivery of such a message: watermill-amqp connected again, the
// message came again, forever, and the message behind it never settled.
//
//   - Every connection Antidote dials takes the server's frame_max, so the
//     message is read and handled.
//   - frame_max lowered since (new connections get 128 KiB): no client can
//     read the header whole; the frame guard rewrites it, the message goes
//     to the DLQ (undecodable, its body kept) and the one behind it is
//     handled.
//
// Each without a connection made again while consuming: counted at a proxy
// in front of the server.
func TestAMQPHeaderFramesLargerThanTheDefault(t *testing.T) {
	testenv.Integration(t)
	r := testenv.StartRabbitMQWith(t, testenv.RabbitMQOptions{Conf: []string{"frame_max = 1048576"}})
	u, err := url.Parse(r.URL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := startCutProxy(t, u.Host)
	pub, err := amqp.DialConfig(r.URL, amqp.Config{FrameSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	if pub.Config.FrameSize != 1<<20 {
		t.Fatalf("the publisher negotiated %d, want 1 MiB", pub.Config.FrameSize)
	}
	ch, err := pub.Channel()
	if err != nil {
		t.Fatal(err)
	}
	publish := func(topic, id string, big int) {
		t.Helper()
		h := amqp.Table{wamqp.DefaultMessageUUIDHeaderKey: id}
		if big > 0 {
			h["big"] = strings.Repeat("h", big)
		}
		if err := ch.PublishWithContext(context.Background(), "", topic, false, false, amqp.Publishing{Headers: h, Body: []byte("body of " + id), DeliveryMode: amqp.Persistent}); err != nil {
			t.Fatal(err)
		}
	}
	open := func() *adapters.Broker {
		return brokers.Open(t, adapters.Config{Broker: adapters.KindAMQP, AMQP: adapters.AMQPConfig{URL: viaProxy(t, r.URL, proxy)}})
	}
	declare := func(topic string) {
		if _, err := ch.QueueDeclare(topic, true, false, false, false, nil); err != nil {
			t.Fatal(err)
		}
	}

	// Near the frame: 1 MiB less what the rest of the frame takes.
	read := brokers.Topic("frame_read_")
	declare(read)
	publish(read, "big", 1<<20-1024)
	publish(read, "last", 0)
	b := open()
	s := startService(t, b, b, read, nil)
	before := proxy.accepted()
	s.await([]string{"big", "last"}, nil)
	if got := len(s.handled["big"][0]["big"]); got != 1<<20-1024 {
		t.Fatalf("the large header reached the handler with %d bytes", got)
	}
	if after := proxy.accepted(); after != before {
		t.Fatalf("%d connections while consuming (%d before): the consumer reconnected", after, before)
	}

	lowered := brokers.Topic("frame_lowered_")
	declare(lowered)
	publish(lowered, "big", 600<<10)
	publish(lowered, "last", 0)
	if _, err := r.Eval("application:set_env(rabbit, frame_max, 131072)."); err != nil {
		t.Fatal(err)
	}
	b = open()
	s = startService(t, b, b, lowered, nil)
	before = proxy.accepted()
	s.await([]string{"last"}, []string{"big"})
	letter := s.letters["big"][0]
	l, err := poison.ReadEnvelope(letter)
	if err != nil {
		t.Fatal(err)
	}
	if l.Reason != poison.ReasonUndecodable || !strings.Contains(l.Error, "over the connection's frame_max of 131072") || !strings.Contains(l.Error, lowered) ||
		string(letter.Payload) != "body of big" {
		t.Fatalf("letter: %s %q, payload %q", l.Reason, l.Error, letter.Payload)
	}
	if after := proxy.accepted(); after != before {
		t.Fatalf("%d connections while consuming (%d before): the consumer reconnected", after, before)
	}
}
