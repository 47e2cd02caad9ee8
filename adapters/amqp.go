package adapters

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wamqp "github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp "github.com/rabbitmq/amqp091-go"
)

// AMQPConfigFor returns the watermill-amqp configuration Open uses: a durable
// queue per topic on the default exchange, persistent messages, publisher
// confirms, and the QoS prefetch of cfg. CrashLoopGuard are decoded by
// TolerantAMQPMarshaler. With Quorum, queues are declared as quorum queues.
// Open's subscriber is watermill-amqp's; its publisher is the adapter's own
// (mandatory publishes whose returns fail or repeat the publish, limits
// checked before sending), built from the same configuration.
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
	pub, err := newAMQPPublisher(wc, cfg.AMQP.MaxMessageBytes, logger)
	if err != nil {
		return err
	}
	b.Publisher = pub
	b.onClose(pub.Close)
	sub, err := wamqp.NewSubscriberWithConnection(wc, logger, conn)
	if err != nil {
		return fmt.Errorf("amqp subscriber at %s: %w", b.Addr, err)
	}
	b.Subscriber = &amqpSubscriber{Subscriber: sub, queueName: wc.Queue.GenerateName}
	b.onClose(sub.Close)
	return nil
}

// amqpSubscriber refuses, before touching RabbitMQ, a topic whose queue
// (or DLQ queue) RabbitMQ cannot declare.
type amqpSubscriber struct {
	*wamqp.Subscriber
	queueName func(string) string
}

// CheckName implements antidote.NameChecker.
func (s *amqpSubscriber) CheckName(name string) error {
	return amqpCheckName(name, s.queueName)
}

func (s *amqpSubscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	if err := checkTopic(s.CheckName, topic); err != nil {
		return nil, err
	}
	return s.Subscriber.Subscribe(ctx, topic)
}

// SubscribeInitialize declares topic's queue without consuming.
func (s *amqpSubscriber) SubscribeInitialize(topic string) error {
	if err := checkTopic(s.CheckName, topic); err != nil {
		return err
	}
	return s.Subscriber.SubscribeInitialize(topic)
}
