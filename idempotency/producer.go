package idempotency

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/poison"
)

// ProducerConfig configures NewPublisher.
type ProducerConfig struct {
	// Service names the publishing service, e.g. "billing". Required: it is
	// what a flood report or a dead letter names as the source.
	Service string
	// Instance tells replicas of the service apart, e.g. a pod name.
	// Default "<hostname>-<pid>". The stamped identity is
	// "<Service>/<Instance>", e.g. "billing/host-1234".
	Instance string
	// Key computes the business idempotency key of a message: the same
	// operation must give the same key every time it is published, whatever
	// the message UUID (an outbox row id, "invoice/<id>/charge"). It is
	// stamped as MetadataKey unless the message already has one. nil stamps
	// nothing (consumers then fall back to the UUID, which does not survive
	// a re-send as a new message). A Key that returns ErrNoKey leaves that
	// message without a key; any other error fails the Publish.
	Key KeyFunc
	// OverwriteKey replaces an idempotency key the caller already set.
	// Default false: an explicit key wins.
	OverwriteKey bool
}

func (c *ProducerConfig) setDefaults() {
	if c.Instance == "" {
		host, err := os.Hostname()
		if err != nil || host == "" {
			host = "unknown-host"
		}
		c.Instance = host + "-" + strconv.Itoa(os.Getpid())
	}
}

// Validate reports a config that cannot work.
func (c ProducerConfig) Validate() error {
	if strings.TrimSpace(c.Service) == "" {
		return errors.New("idempotency: ProducerConfig.Service is empty; set it to the publishing service's name (e.g. \"billing\"), so floods and dead letters name their source")
	}
	if strings.Contains(c.Service, "/") {
		return fmt.Errorf("idempotency: ProducerConfig.Service %q contains '/'; the producer identity is \"<service>/<instance>\", so use a name without '/'", c.Service)
	}
	return nil
}

// ProducerID is the identity NewPublisher stamps under poison.KeyProducer:
// "<service>/<instance>".
func ProducerID(service, instance string) string { return service + "/" + instance }

// Publisher decorates a message.Publisher: every message it publishes gets
// its business idempotency key (MetadataKey) and the producer's identity
// (poison.KeyProducer). Build it with NewPublisher.
type Publisher struct {
	next message.Publisher
	cfg  ProducerConfig
	id   string
}

// NewPublisher wraps pub. The metadata of the messages passed to Publish is
// modified in place, before pub sees them.
func NewPublisher(pub message.Publisher, cfg ProducerConfig) (*Publisher, error) {
	if pub == nil {
		return nil, errors.New("idempotency: NewPublisher needs a publisher to wrap, got nil")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	return &Publisher{next: pub, cfg: cfg, id: ProducerID(cfg.Service, cfg.Instance)}, nil
}

// PublisherDecorator returns NewPublisher as a message.PublisherDecorator,
// for message.RouterConfig-style composition.
func PublisherDecorator(cfg ProducerConfig) message.PublisherDecorator {
	return func(pub message.Publisher) (message.Publisher, error) { return NewPublisher(pub, cfg) }
}

// Producer returns the identity stamped on every message ("service/instance").
func (p *Publisher) Producer() string { return p.id }

// Publish stamps msgs and publishes them. If Key fails for any message,
// nothing is published and the error names the message.
func (p *Publisher) Publish(topic string, msgs ...*message.Message) error {
	for _, msg := range msgs {
		if msg.Metadata == nil {
			msg.Metadata = message.Metadata{}
		}
		if p.cfg.Key != nil && (p.cfg.OverwriteKey || msg.Metadata.Get(MetadataKey) == "") {
			k, err := p.cfg.Key(msg)
			switch {
			case err == nil && k != "":
				msg.Metadata.Set(MetadataKey, k)
			case err != nil && !errors.Is(err, ErrNoKey):
				return fmt.Errorf("idempotency: publisher %s: idempotency key of message %s for topic %q: %w", p.id, msg.UUID, topic, err)
			}
		}
		msg.Metadata.Set(poison.KeyProducer, p.id)
	}
	return p.next.Publish(topic, msgs...)
}

// Close closes the wrapped publisher.
func (p *Publisher) Close() error { return p.next.Close() }

var _ message.Publisher = (*Publisher)(nil)
