package adapters

import (
	"io"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/antidote-mq/antidote/internal/testenv"
)

// tcpProxy forwards listen to target until cut closes everything.
type tcpProxy struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func startTCPProxy(t *testing.T, listen, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				_ = c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(u, c); _ = u.Close() }()
			go func() { _, _ = io.Copy(c, u); _ = c.Close() }()
		}
	}()
	t.Cleanup(p.cut)
	return p
}

func (p *tcpProxy) cut() {
	_ = p.ln.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
}

// The publisher's connection is lost (a network cut): Publish fails, never
// reports success, and once RabbitMQ is reachable again the next Publish
// dials a new connection and goes through. Only the publisher runs here
// (watermill-amqp's subscriber reconnect has a data race under -race).
func TestAMQPPublisherReconnectsAfterConnectionLoss(t *testing.T) {
	direct := testenv.AMQPURL(t)
	u, err := url.Parse(direct)
	if err != nil {
		t.Fatal(err)
	}
	proxy := startTCPProxy(t, "127.0.0.1:0", u.Host)
	addr := proxy.ln.Addr().String()
	via := *u
	via.Host = addr
	cfg := Config{Broker: KindAMQP, ConnectTimeout: 2 * time.Second, AMQP: AMQPConfig{URL: via.String()}}
	cfg.SetDefaults()
	p, err := newAMQPPublisher(AMQPConfigFor(cfg), cfg.AMQP.MaxMessageBytes, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	topic := "antidote_test_reconnect_" + watermill.NewShortUUID()
	conn, err := amqp.Dial(direct)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if ch, err := conn.Channel(); err == nil {
			_, _ = ch.QueueDelete(topic, false, false, false)
			_ = ch.Close()
		}
		_ = conn.Close()
	})

	if err := p.Publish(topic, message.NewMessage("before", []byte("x"))); err != nil {
		t.Fatal(err)
	}
	proxy.cut()
	if err := p.Publish(topic, message.NewMessage("during", []byte("x"))); err == nil {
		t.Fatal("Publish reported success with RabbitMQ unreachable")
	}
	startTCPProxy(t, addr, u.Host)
	var lastErr error
	deadline := time.Now().Add(20 * time.Second)
	for {
		if lastErr = p.Publish(topic, message.NewMessage("after", []byte("x"))); lastErr == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Publish still fails with RabbitMQ back: %v", lastErr)
		}
		time.Sleep(100 * time.Millisecond)
	}
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	got := map[string]bool{}
	for {
		d, ok, err := ch.Get(topic, true)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		id, _ := d.Headers["_watermill_message_uuid"].(string)
		got[id] = true
	}
	if !got["before"] || !got["after"] {
		t.Fatalf("in the queue: %v; want before and after", got)
	}
}
