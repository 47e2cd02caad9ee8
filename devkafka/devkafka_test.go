package devkafka_test

import (
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/devkafka"
)

func TestStartValidates(t *testing.T) {
	if _, err := devkafka.Start(devkafka.Config{Partitions: -1}); err == nil || !strings.Contains(err.Error(), "negative") {
		t.Fatalf("negative partitions: %v", err)
	}
	if _, err := devkafka.Start(devkafka.Config{Addr: "no-port"}); err == nil || !strings.Contains(err.Error(), "host:port") {
		t.Fatalf("bad address: %v", err)
	}
}

// Importing devkafka makes adapters.Open honour kafka.embedded: the broker
// starts, messages go through it, Close stops it.
func TestOpenEmbedded(t *testing.T) {
	b, err := adapters.Open(t.Context(), adapters.Config{Broker: adapters.KindKafka,
		Kafka: adapters.KafkaConfig{Embedded: true, ConsumerGroup: "devkafka-test"}}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	if !b.Embedded || len(b.Config.Kafka.Brokers) == 0 || b.Config.Kafka.Embedded {
		t.Fatalf("Embedded %t, brokers %v, config still embedded %t", b.Embedded, b.Config.Kafka.Brokers, b.Config.Kafka.Embedded)
	}
	msgs, err := b.Subscriber.Subscribe(t.Context(), "devkafka_topic")
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Publisher.Publish("devkafka_topic", message.NewMessage("1", []byte("x"))); err != nil {
		t.Fatal(err)
	}
	msg := <-msgs
	msg.Ack()
	if msg.UUID != "1" {
		t.Fatalf("got %s", msg.UUID)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Publisher.Publish("devkafka_topic", message.NewMessage("2", nil)); !errors.Is(err, adapters.ErrPublisherClosed) {
		t.Fatalf("publish after Close: %v", err)
	}
}

func TestStartValidatesSecurity(t *testing.T) {
	for _, tc := range []struct {
		cfg  devkafka.Config
		want string
	}{
		{devkafka.Config{SASLMechanism: "GSSAPI", SASLUser: "u", SASLPassword: "p"}, "unknown SASL mechanism"},
		{devkafka.Config{SASLMechanism: "PLAIN", SASLUser: "u"}, "needs a user and a password"},
		{devkafka.Config{SASLUser: "u"}, "without a SASL mechanism"},
		{devkafka.Config{TLSCertFile: "cert.pem"}, "give both files"},
		{devkafka.Config{TLSCertFile: "/nonexistent/c.pem", TLSKeyFile: "/nonexistent/k.pem"}, "/nonexistent/c.pem"},
		{devkafka.Config{Brokers: -1}, "brokers -1"},
	} {
		if _, err := devkafka.Start(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.cfg, err, tc.want)
		}
	}
}

// A cluster listens on consecutive ports; StopBroker closes one of them
// and refuses the last one standing.
func TestClusterStopBroker(t *testing.T) {
	ports := freePorts(t, 3)
	if ports == 0 {
		t.Skip("no three consecutive free ports")
	}
	k, err := devkafka.Start(devkafka.Config{Addr: "127.0.0.1:" + strconv.Itoa(ports), Brokers: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	addrs := k.Addrs()
	for i, a := range addrs {
		if want := "127.0.0.1:" + strconv.Itoa(ports+i); a != want {
			t.Fatalf("broker %d at %s, want %s", i, a, want)
		}
	}
	if err := k.StopBroker(0); err != nil {
		t.Fatal(err)
	}
	if c, err := net.Dial("tcp", addrs[0]); err == nil {
		c.Close()
		t.Fatal("stopped broker still listens")
	}
	if c, err := net.Dial("tcp", addrs[1]); err != nil {
		t.Fatalf("the others stopped too: %v", err)
	} else {
		c.Close()
	}
	if err := k.StopBroker(1); err != nil {
		t.Fatal(err)
	}
	if err := k.StopBroker(2); err == nil {
		t.Fatal("stopped the last broker")
	}
	if err := k.StopBroker(7); err == nil {
		t.Fatal("stopped a broker that does not exist")
	}
}

// freePorts finds n consecutive free loopback ports, or returns 0.
func freePorts(t *testing.T, n int) int {
	for try := 0; try < 20; try++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		base := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		ok := true
		for i := 0; i < n && ok; i++ {
			l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(base+i))
			if err != nil {
				ok = false
				continue
			}
			l.Close()
		}
		if ok {
			return base
		}
	}
	return 0
}
