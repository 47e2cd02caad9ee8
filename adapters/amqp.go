package adapters

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wamqp "github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/antidote-mq/antidote/poison"
)

// AMQPConfigFor returns the watermill-amqp configuration Open uses: a durable
// queue per topic on the default exchange, persistent messages, publisher
// confirms, and the QoS prefetch of cfg. CrashLoopGuard are decoded by
// TolerantAMQPMarshaler. With Quorum, queues are declared as quorum queues;
// with SingleActiveConsumer, topic queues (not DLQs: see amqpDLQArguments)
// with x-single-active-consumer. A queue that exists with other arguments
// is an ErrQueueArguments naming it and the settings that match.
// Open's subscriber is watermill-amqp's; its publisher is the adapter's own
// (mandatory publishes whose returns fail or repeat the publish, limits
// checked before sending), built from the same configuration.
//
// amqp.tls becomes the connection's TLS config (for amqps:// URLs) and
// amqp.external_auth its SASL EXTERNAL mechanism. A TLS file that cannot
// be loaded leaves TLS to the URL's defaults: Validate and Open report it.
//
// Every connection takes the largest frame the server allows (FrameSize
// unlimited: amqp091-go then settles on the server's frame_max), so any
// content header RabbitMQ took from a publisher fits in a frame its
// consumers read; at amqp091-go's default, 128 KiB, a header from a
// publisher that negotiated more made the consumer's connection drop at
// every delivery, forever. What still cannot be read (headers amqp091-go
// refuses, a frame_max lowered since) is rewritten by the frame guard on
// every connection it dials (see amqpFrameGuard) and reaches the
// subscriber as undecodable, to be dead-lettered. For an amqps:// URL the
// dial does the TLS handshake itself, so that the guard sees the AMQP
// stream: Connection.AmqpURI is then the URL with scheme amqp:// and the
// TLS port. Dialling the amqps:// URL with this AmqpConfig still works
// (amqp091-go's TLS, without the guard).
func AMQPConfigFor(cfg Config) wamqp.Config {
	a := cfg.AMQP
	c := wamqp.NewDurableQueueConfig(a.URL)
	c.Connection.AmqpConfig = &amqp.Config{
		FrameSize: amqp.FrameSizeUnlimited,
		Heartbeat: 10 * time.Second,
		Locale:    "en_US",
	}
	tc, err := a.TLS.Build("amqp.tls")
	if err == nil && tc != nil {
		c.Connection.AmqpConfig.TLSClientConfig = tc
	}
	var dialTLS *tls.Config
	if uri, own, ok := amqpOwnTLS(a.URL, tc); ok {
		c.Connection.AmqpURI, dialTLS = uri, own
	}
	c.Connection.AmqpConfig.Dial = amqpDial(cfg.ConnectTimeout, dialTLS)
	if a.ExternalAuth {
		c.Connection.AmqpConfig.SASL = []amqp.Authentication{&amqp.ExternalAuth{}}
	}
	c.Marshaler = TolerantAMQPMarshaler{Inner: wamqp.DefaultMarshaler{}}
	c.Publish.ConfirmDelivery = true
	c.Consume.Qos.PrefetchCount = a.Prefetch
	c.Queue.Arguments = amqpQueueArguments(a)
	c.TopologyBuilder = &amqpTopology{}
	return c
}

// amqpOwnTLS returns, for an amqps:// URL, the amqp:// URL on the same
// (TLS) port and the TLS config the dial uses in amqp091-go's place:
// tc, or when amqp.tls sets none amqp091-go's default (system roots), with
// the URL's host as server name when tc names none. ok is false for other
// URLs, and for one that sets TLS files in its query with no amqp.tls
// (amqp091-go reads those; the connection is then unguarded).
func amqpOwnTLS(raw string, tc *tls.Config) (uri string, own *tls.Config, ok bool) {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "amqps" {
		return "", nil, false
	}
	q := u.Query()
	if tc == nil && (q.Has("certfile") || q.Has("keyfile") || q.Has("cacertfile") || q.Has("server_name_indication")) {
		return "", nil, false
	}
	if tc == nil {
		tc = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	own = tc.Clone()
	if own.ServerName == "" {
		own.ServerName = u.Hostname()
	}
	if u.Port() == "" {
		u.Host = net.JoinHostPort(u.Hostname(), "5671")
	}
	u.Scheme = "amqp"
	return u.String(), own, true
}

// amqpDialHint says what a failed RabbitMQ connection most likely means,
// without quoting the client's error (which can hold the URL).
func amqpDialHint(err error) string {
	var certErr *tls.CertificateVerificationError
	var unknownAuth x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	switch {
	case errors.As(err, &certErr), errors.As(err, &unknownAuth):
		return "its TLS certificate is not signed by a trusted CA: set amqp.tls.ca_file to the CA that signed it"
	case errors.As(err, &hostErr):
		return "its TLS certificate is not for this host: set amqp.tls.server_name to the name it carries"
	case errors.Is(err, amqp.ErrSASL), errors.Is(err, amqp.ErrCredentials):
		return "authentication refused: check user and password, or the client certificate with amqp.external_auth"
	}
	var tlsAlert tls.AlertError
	if errors.As(err, &tlsAlert) {
		return "TLS handshake refused by the server (" + tlsAlert.Error() + "): check amqp.tls.cert_file and key_file"
	}
	return "check user, password and vhost"
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

// validateTLS reports what cannot work in amqp.tls and amqp.external_auth.
func (a AMQPConfig) validateTLS() []error {
	errs := a.TLS.validate("amqp.tls")
	tlsURL := strings.HasPrefix(a.URL, "amqps://")
	if a.TLS.Enabled && !tlsURL {
		errs = append(errs, fmt.Errorf("amqp.tls.enabled: is true but amqp.url is not amqps://; RabbitMQ takes TLS on its own port: write amqps://user:password@host:5671/"))
	}
	if a.ExternalAuth {
		if !tlsURL {
			errs = append(errs, fmt.Errorf("amqp.external_auth: needs TLS: write amqp.url as amqps://host:5671/"))
		}
		if !a.TLS.Enabled || a.TLS.CertFile == "" {
			errs = append(errs, fmt.Errorf("amqp.external_auth: RabbitMQ takes the user from the client certificate: set amqp.tls.enabled, amqp.tls.cert_file and amqp.tls.key_file"))
		}
	}
	return errs
}

func openAMQP(ctx context.Context, b *Broker, cfg Config, logger watermill.LoggerAdapter) error {
	b.Addr = Redact(cfg.AMQP.URL)
	if _, err := cfg.AMQP.TLS.Build("amqp.tls"); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	if cfg.AMQP.TLS.Enabled && cfg.AMQP.TLS.InsecureSkipVerify {
		logger.Error("amqp.tls.insecure_skip_verify is true: RabbitMQ's certificate is not checked; never use this in production", ErrInsecureTLS, watermill.LogFields{"addr": b.Addr})
	}
	if err := dialCheck(ctx, KindAMQP, amqpHostPort(cfg.AMQP.URL), cfg.ConnectTimeout); err != nil {
		return err
	}
	wc := AMQPConfigFor(cfg)
	conn, err := wamqp.NewConnection(wc.Connection, logger)
	if err != nil {
		// The client's error can quote the URL; say where without the password.
		return fmt.Errorf("%w: amqp at %s: connection refused by RabbitMQ (%s)", ErrUnreachable, b.Addr, amqpDialHint(err))
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
	// The hospital's, on the same connection: believes letter keys.
	lwc := wc
	lwc.Marshaler = TolerantAMQPMarshaler{Inner: wamqp.DefaultMarshaler{}, Reader: poison.LetterReader}
	lwc.Queue.Arguments = amqpDLQArguments(wc.Queue.Arguments)
	lsub, err := wamqp.NewSubscriberWithConnection(lwc, logger, conn)
	if err != nil {
		return fmt.Errorf("amqp subscriber at %s: %w", b.Addr, err)
	}
	b.letters = &amqpSubscriber{Subscriber: lsub, queueName: wc.Queue.GenerateName}
	b.onClose(lsub.Close)
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
	ch, err := s.Subscriber.Subscribe(ctx, topic)
	return ch, amqpTopologyError(err)
}

// SubscribeInitialize declares topic's queue without consuming.
func (s *amqpSubscriber) SubscribeInitialize(topic string) error {
	if err := checkTopic(s.CheckName, topic); err != nil {
		return err
	}
	return amqpTopologyError(s.Subscriber.SubscribeInitialize(topic))
}

// amqpTopologyError is err, or the ErrQueueArguments in it alone:
// watermill-amqp wraps it together with the error of closing the channel
// RabbitMQ had closed.
func amqpTopologyError(err error) error {
	var ae *amqpArgsError
	if errors.As(err, &ae) {
		return ae
	}
	return err
}
