package adapters

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wamqp "github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp "github.com/rabbitmq/amqp091-go"
)

// AMQPConfigFor returns the watermill-amqp configuration Open uses: a durable
// queue per topic on the default exchange, persistent messages, publisher
// confirms (Publish returns only once RabbitMQ has the message), and the
// QoS prefetch of cfg. Deliveries are decoded by TolerantAMQPMarshaler. With Quorum, queues are declared as quorum queues.
func AMQPConfigFor(cfg Config) wamqp.Config {
	a := cfg.AMQP
	c := wamqp.NewDurableQueueConfig(a.URL)
	c.Connection.AmqpConfig = &amqp.Config{
		Dial:      amqp.DefaultDial(cfg.ConnectTimeout),
		Heartbeat: 10 * time.Second,
		Locale:    "en_US",
	}
	c.Marshaler = TolerantAMQPMarshaler{Inner: wamqp.DefaultMarshaler{}}
	c.Publish.ConfirmDelivery = true
	c.Consume.Qos.PrefetchCount = a.Prefetch
	if a.Quorum {
		c.Queue.Arguments = amqp.Table{"x-queue-type": "quorum"}
	}
	return c
}

func amqpHostPort(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	if u.Port() != "" {
		return u.Host
	}
	if u.Scheme == "amqps" {
		return net.JoinHostPort(u.Hostname(), "5671")
	}
	return net.JoinHostPort(u.Hostname(), "5672")
}

func openAMQP(ctx context.Context, b *Broker, cfg Config, logger watermill.LoggerAdapter) error {
	b.Addr = Redact(cfg.AMQP.URL)
	if err := dialCheck(ctx, KindAMQP, amqpHostPort(cfg.AMQP.URL), cfg.ConnectTimeout); err != nil {
		return err
	}
	wc := AMQPConfigFor(cfg)
	conn, err := wamqp.NewConnection(wc.Connection, logger)
	if err != nil {
		// The client's error can quote the URL; say where without the password.
		return fmt.Errorf("%w: amqp at %s: connection refused by RabbitMQ (check user, password and vhost)", ErrUnreachable, b.Addr)
	}
	b.onClose(conn.Close)
	pub, err := wamqp.NewPublisherWithConnection(wc, logger, conn)
	if err != nil {
		return fmt.Errorf("amqp publisher at %s: %w", b.Addr, err)
	}
	b.Publisher = &declaringPublisher{Publisher: pub, conn: conn, cfg: wc}
	b.onClose(pub.Close)
	sub, err := wamqp.NewSubscriberWithConnection(wc, logger, conn)
	if err != nil {
		return fmt.Errorf("amqp subscriber at %s: %w", b.Addr, err)
	}
	b.Subscriber = sub
	b.onClose(sub.Close)
	return nil
}

// declaringPublisher declares a topic's queue before the first publish to it.
// RabbitMQ silently drops a message routed to a queue that does not exist
// yet, and watermill-amqp declares queues only when subscribing: a message
// published before any consumer (or to a DLQ nobody consumes) would be lost.
type declaringPublisher struct {
	*wamqp.Publisher
	conn     *wamqp.ConnectionWrapper
	cfg      wamqp.Config
	declared sync.Map // queue name -> struct{}
}

func (p *declaringPublisher) Publish(topic string, msgs ...*message.Message) error {
	if err := p.declare(topic); err != nil {
		return err
	}
	return p.Publisher.Publish(topic, msgs...)
}

func (p *declaringPublisher) declare(topic string) error {
	name := p.cfg.Queue.GenerateName(topic)
	if _, ok := p.declared.Load(name); ok {
		return nil
	}
	conn := p.conn.Connection()
	if conn == nil || conn.IsClosed() {
		return fmt.Errorf("amqp: declare queue %q: not connected", name)
	}
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("amqp: declare queue %q: open channel: %w", name, err)
	}
	defer ch.Close()
	q := p.cfg.Queue
	if _, err := ch.QueueDeclare(name, q.Durable, q.AutoDelete, q.Exclusive, q.NoWait, q.Arguments); err != nil {
		return fmt.Errorf("amqp: declare queue %q: %w", name, err)
	}
	p.declared.Store(name, struct{}{})
	return nil
}
