package main

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/adapters"
)

// devkafka serves real Kafka clients: publish and consume through it.
func TestDevKafkaServesClients(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out syncBuffer
	cmd := newRootCmd()
	cmd.SetArgs([]string{"devkafka", "--addr", "127.0.0.1:0", "--partitions", "2"})
	cmd.SetOut(&out)
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()

	re := regexp.MustCompile(`listening on (\S+)`)
	var addr string
	for deadline := time.Now().Add(10 * time.Second); addr == "" && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if m := re.FindStringSubmatch(out.String()); m != nil {
			addr = m[1]
		}
	}
	if addr == "" {
		t.Fatalf("no listening line; output: %q", out.String())
	}
	b, err := adapters.Open(ctx, adapters.Config{Broker: adapters.KindKafka, Kafka: adapters.KafkaConfig{Brokers: []string{addr}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	msgs, err := b.Subscriber.Subscribe(ctx, "dev")
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Publisher.Publish("dev", message.NewMessage("u1", []byte("hi"))); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-msgs:
		if string(m.Payload) != "hi" {
			t.Fatalf("payload %q", m.Payload)
		}
		m.Ack()
	case <-time.After(30 * time.Second):
		t.Fatal("message not consumed through devkafka")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "stopping") {
		t.Errorf("no stop line: %q", out.String())
	}
}

func TestDevKafkaRejectsBadFlags(t *testing.T) {
	for _, args := range [][]string{{"devkafka", "--partitions", "0"}, {"devkafka", "--addr", "nope"}} {
		cmd := newRootCmd()
		cmd.SetArgs(args)
		cmd.SetOut(&bytes.Buffer{})
		if err := cmd.ExecuteContext(context.Background()); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}

func TestDevKafkaRejectsBadSecurityFlags(t *testing.T) {
	for _, args := range [][]string{
		{"devkafka", "--brokers", "0"},
		{"devkafka", "--addr", "127.0.0.1:0", "--sasl-mechanism", "BOGUS", "--sasl-user", "u", "--sasl-password", "p"},
		{"devkafka", "--addr", "127.0.0.1:0", "--sasl-mechanism", "PLAIN"},
		{"devkafka", "--addr", "127.0.0.1:0", "--tls-cert", "only-cert.pem"},
	} {
		cmd := newRootCmd()
		cmd.SetArgs(args)
		cmd.SetOut(&bytes.Buffer{})
		cmd.SetErr(&bytes.Buffer{})
		if err := cmd.ExecuteContext(context.Background()); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}
