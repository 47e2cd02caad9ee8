package adapters

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/cenkalti/backoff/v5"

	"github.com/antidote-mq/antidote"
)

// ErrUnreachable is wrapped by Open's error when a broker does not answer
// within Config.ConnectTimeout.
var ErrUnreachable = errors.New("broker unreachable")

// Broker is an opened broker: a Publisher, a Subscriber and everything they
// started (connections, pools, an embedded Kafka broker), released by Close.
type Broker struct {
	Kind       Kind
	Publisher  message.Publisher
	Subscriber message.Subscriber

	// Addr is where the broker is, for logs: host:port list or redacted URL.
	Addr string

	// Embedded is true when Open started an in-process Kafka broker
	// (kafka.embedded); it stops, with its data, on Close.
	Embedded bool

	// Config is the validated configuration the broker was opened with. For
	// an embedded Kafka broker, Kafka.Brokers holds its address (and
	// Kafka.Embedded is false), so Open(b.Config) connects to it.
	Config Config

	// letters is LetterSubscriber's.
	letters message.Subscriber

	closeOnce sync.Once
	closers   []func() error
	closeErr  error
}

// LetterSubscriber consumes DLQ topics as the hospital must: it believes
// the letter keys (poison.LetterKeys) the dead-letter envelope wrote, which
// Subscriber, a service's, takes for a producer's and renames under
// antidote.MetadataForeignPrefix. Decoder keys arriving in a record are
// foreign to both (poison.Reader). Use it only to read DLQs: on a
// service's own topics a producer could pass anything off as a letter.
// It shares the broker's connections and settings (consumer group,
// polling) and is closed with the broker; on Kafka it consumes one message
// at a time whatever kafka.concurrency says.
func (b *Broker) LetterSubscriber() message.Subscriber { return b.letters }

// ConsumerIdentity is the broker's part of who consumes, for
// router.Config.Consumer: System is Kind.MessagingSystem(), Group the
// Kafka consumer group (kafka.consumer_group; empty on RabbitMQ and
// PostgreSQL, whose workers share one queue or table per topic and have no
// group), ServerAddress is Addr (empty for the in-process broker, which
// has no address). Version is left empty, so letters carry the build's
// version; set it if the binary does not know its own.
func (b *Broker) ConsumerIdentity() antidote.ConsumerIdentity {
	id := antidote.ConsumerIdentity{System: b.Kind.MessagingSystem(), ServerAddress: b.Addr}
	switch b.Kind {
	case KindKafka:
		id.Group = b.Config.Kafka.ConsumerGroup
	case KindMemory:
		id.ServerAddress = ""
	}
	return id
}

// Close closes the subscriber (ending its subscriptions), then the publisher,
// then whatever Open started, in reverse order. Safe to call more than once.
func (b *Broker) Close() error {
	b.closeOnce.Do(func() {
		var errs []error
		for i := len(b.closers) - 1; i >= 0; i-- {
			if err := b.closers[i](); err != nil {
				errs = append(errs, err)
			}
		}
		b.closeErr = errors.Join(errs...)
	})
	return b.closeErr
}

func (b *Broker) onClose(f func() error) { b.closers = append(b.closers, f) }

// Open validates cfg (after filling defaults) and connects to its broker. An
// unreachable broker fails within cfg.ConnectTimeout with an error wrapping
// ErrUnreachable that names the broker and the address. logger may be nil.
func Open(ctx context.Context, cfg Config, logger watermill.LoggerAdapter) (*Broker, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	b := &Broker{Kind: cfg.Broker, Config: cfg}
	var err error
	switch cfg.Broker {
	case KindMemory:
		logger.Error("Memory broker: messages live in this process only", antidote.ErrNotDurable, nil)
		err = openMemory(b, cfg.Memory, logger)
	case KindKafka:
		err = openKafka(ctx, b, cfg, logger)
	case KindAMQP:
		err = openAMQP(ctx, b, cfg, logger)
	case KindPostgres:
		err = openPostgres(ctx, b, cfg, logger)
	}
	if err != nil {
		_ = b.Close()
		return nil, err
	}
	return b, nil
}

// anyAnswers probes every address concurrently with dialCheck and returns
// as soon as one answers, logging those that did not answer (yet); only
// when none answers within timeout does it fail, naming them all. A cluster
// in a rolling restart, or a bootstrap list with a retired broker, starts.
func anyAnswers(ctx context.Context, kind Kind, addrs []string, timeout time.Duration, logger watermill.LoggerAdapter) error {
	if len(addrs) == 1 {
		return dialCheck(ctx, kind, addrs[0], timeout)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		addr string
		err  error
	}
	results := make(chan result, len(addrs))
	for _, addr := range addrs {
		go func() { results <- result{addr, dialCheck(ctx, kind, addr, timeout)} }()
	}
	var failed []result
	answered := false
	var grace <-chan time.Time
	for range addrs {
		var r result
		select {
		case r = <-results:
		case <-grace:
			// One broker answered: the rest get a moment to answer too,
			// not the whole timeout, before start-up goes on.
			cancel()
			r = <-results
		}
		if r.err == nil {
			if !answered {
				answered = true
				grace = time.After(min(250*time.Millisecond, timeout))
			}
			continue
		}
		failed = append(failed, r)
	}
	if !answered {
		if len(failed) > 0 && ctx.Err() == nil {
			msgs := make([]string, len(failed))
			for i, f := range failed {
				msgs[i] = f.err.Error()
			}
			return fmt.Errorf("%w: none of the %d %s bootstrap brokers answered within %s: %s", ErrUnreachable, len(addrs), kind, timeout, strings.Join(msgs, "; "))
		}
		return fmt.Errorf("%w: %s at %s: %v", ErrUnreachable, kind, strings.Join(addrs, ","), ctx.Err())
	}
	if len(failed) > 0 {
		down := make([]string, len(failed))
		for i, f := range failed {
			down[i] = f.addr
		}
		logger.Error(fmt.Sprintf("%s: %d of %d bootstrap brokers did not answer; starting with the others", kind, len(failed), len(addrs)), ErrUnreachable, watermill.LogFields{"not_answering": strings.Join(down, ",")})
	}
	return nil
}

// dialCheck waits up to timeout for something to listen at addr, dialing
// again with backoff while the connection is refused: a consumer restarted
// while its broker restarts connects once the broker is back instead of
// exiting at once (a supervisor would restart it in a hot loop). Past the
// timeout it fails with the broker and address named; client libraries
// would otherwise retry for much longer.
func dialCheck(ctx context.Context, kind Kind, addr string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var lastErr error
	_, err := backoff.Retry(ctx, func() (struct{}, error) {
		conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		if err != nil {
			lastErr = err
			return struct{}{}, err
		}
		return struct{}{}, conn.Close()
	}, backoff.WithBackOff(&backoff.ExponentialBackOff{
		InitialInterval: 50 * time.Millisecond, RandomizationFactor: 0.2, Multiplier: 2, MaxInterval: time.Second,
	}), backoff.WithMaxElapsedTime(timeout))
	if err != nil {
		if lastErr == nil {
			lastErr = err
		}
		return fmt.Errorf("%w: %s at %s did not answer within %s: %v; check that it runs and the address is right", ErrUnreachable, kind, addr, timeout, lastErr)
	}
	return nil
}
