package hospital

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/cenkalti/backoff/v5"

	"github.com/antidote-mq/antidote/fingerprint"
	"github.com/antidote-mq/antidote/poison"
)

// IngestConfig configures Ingest.
type IngestConfig struct {
	// Subscriber reads the DLQ topics: a broker's letter subscriber
	// (adapters.Open(...).LetterSubscriber(), which believes the letters'
	// envelope keys: a service's Subscriber takes them for a producer's
	// and keeps them as antidote.foreign.*), or any Watermill Subscriber
	// built by hand. Required. On Kafka give it a consumer group of its
	// own, so the hospital's offsets are its own.
	Subscriber message.Subscriber
	// Store receives the letters. Required.
	Store Store
	// Topics are the DLQ topics to ingest, all at once. Required.
	Topics []string
	// Broker names the broker in each letter's identity and in listings
	// ("kafka", "amqp", "postgres"). Required: two brokers' DLQs of one
	// name are different letters.
	Broker string
	// ClaimCheck resolves claim-checked letters, so their payloads are
	// stored whole. If ClaimCheck is nil, such letters are stored as they
	// are, with the missing payload noted in Letter.Problem.
	ClaimCheck poison.ClaimCheck
	// Fingerprint tunes grouping. Its zero value is ready to use.
	Fingerprint fingerprint.Options
	// Idle makes Ingest return once no letter has arrived for Idle, and
	// none is being stored: "drain what is there now". If Idle is 0, Ingest
	// runs until ctx is done (follow). Too short on Kafka stops before the
	// consumer group has even joined; 5s is a safe value.
	Idle time.Duration
	// Workers read each topic's channel at once. If Workers is 0, 4. More
	// than one helps where the subscriber delivers several messages at a
	// time (Kafka: one per partition); a broker that hands out one message
	// at a time per subscription gains nothing.
	Workers int
	// MaxStoreWait bounds how long one letter waits for the Store to come
	// back (retrying with backoff) before it is nacked and Ingest returns
	// the error. If MaxStoreWait is 0, a minute. The letter stays in the
	// DLQ either way.
	MaxStoreWait time.Duration
	// Logger. If Logger is nil, nothing is logged.
	Logger watermill.LoggerAdapter
}

func (c *IngestConfig) setDefaults() {
	if c.Workers == 0 {
		c.Workers = 4
	}
	if c.MaxStoreWait == 0 {
		c.MaxStoreWait = time.Minute
	}
	if c.Logger == nil {
		c.Logger = watermill.NopLogger{}
	}
}

// Validate names every field that cannot work, in field order.
func (c IngestConfig) Validate() error {
	var errs []error
	if c.Subscriber == nil {
		errs = append(errs, errors.New("hospital: IngestConfig.Subscriber is nil; pass the letter subscriber of the broker whose DLQs to ingest (adapters.Open(...).LetterSubscriber())"))
	}
	if c.Store == nil {
		errs = append(errs, errors.New("hospital: IngestConfig.Store is nil; pass a store such as pgstore.NewHospitalStore's"))
	}
	if len(c.Topics) == 0 {
		errs = append(errs, errors.New("hospital: IngestConfig.Topics is empty; name the DLQ topics to ingest (e.g. orders.dlq)"))
	}
	for i, t := range c.Topics {
		if t == "" {
			errs = append(errs, fmt.Errorf("hospital: IngestConfig.Topics[%d] is empty", i))
		}
	}
	if c.Broker == "" {
		errs = append(errs, errors.New("hospital: IngestConfig.Broker is empty; name the broker (kafka, amqp, postgres)"))
	}
	if c.Idle < 0 {
		errs = append(errs, fmt.Errorf("hospital: IngestConfig.Idle %s is negative; use 0 to follow, or e.g. 5s to drain", c.Idle))
	}
	if c.Workers < 0 {
		errs = append(errs, fmt.Errorf("hospital: IngestConfig.Workers %d is negative; use 1 or more", c.Workers))
	}
	if c.MaxStoreWait < 0 {
		errs = append(errs, fmt.Errorf("hospital: IngestConfig.MaxStoreWait %s is negative; use e.g. 1m", c.MaxStoreWait))
	}
	return errors.Join(errs...)
}

// IngestStats counts what Ingest did.
type IngestStats struct {
	// Received letters, Stored as new, Duplicates already stored (a
	// redelivery after a crash), and letters with a Problem (stored too).
	Received, Stored, Duplicates, Problems int64
}

// Ingest consumes cfg.Topics into cfg.Store until ctx is done, or, with
// cfg.Idle, until the DLQs are quiet. Each letter is acked only after the
// Store committed it; if the Store fails for longer than MaxStoreWait the
// letter is nacked and Ingest returns the error (the letter stays in its
// DLQ). A malformed letter is stored with its problem noted, never fatal.
// Returning because ctx is done is not an error.
func Ingest(ctx context.Context, cfg IngestConfig) (IngestStats, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return IngestStats{}, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	in := &ingester{cfg: cfg}
	in.touch()

	var wg sync.WaitGroup
	errc := make(chan error, len(cfg.Topics)*max(1, cfg.Workers))
	for _, topic := range cfg.Topics {
		ch, err := cfg.Subscriber.Subscribe(ctx, topic)
		if err != nil {
			cancel()
			wg.Wait()
			return in.stats(), fmt.Errorf("hospital: subscribe to %s: %w", topic, err)
		}
		for range cfg.Workers {
			wg.Go(func() {
				if err := in.consume(ctx, topic, ch); err != nil {
					errc <- err
					cancel()
				}
			})
		}
	}
	if cfg.Idle > 0 {
		wg.Go(func() { in.stopWhenIdle(ctx, cancel) })
	}
	wg.Wait()
	close(errc)
	return in.stats(), errors.Join(collect(errc)...)
}

type ingester struct {
	cfg                                    IngestConfig
	received, stored, duplicates, problems atomic.Int64
	busy                                   atomic.Int64
	last                                   atomic.Int64 // unix nanos of the last activity
}

func (in *ingester) touch() { in.last.Store(time.Now().UnixNano()) }

func (in *ingester) stats() IngestStats {
	return IngestStats{Received: in.received.Load(), Stored: in.stored.Load(), Duplicates: in.duplicates.Load(), Problems: in.problems.Load()}
}

func (in *ingester) stopWhenIdle(ctx context.Context, stop func()) {
	tick := time.NewTicker(min(in.cfg.Idle/4, 250*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			if in.busy.Load() == 0 && time.Since(time.Unix(0, in.last.Load())) >= in.cfg.Idle {
				stop()
				return
			}
		}
	}
}

func (in *ingester) consume(ctx context.Context, topic string, ch <-chan *message.Message) error {
	for msg := range ch {
		in.busy.Add(1)
		err := in.one(ctx, topic, msg)
		in.touch()
		in.busy.Add(-1)
		if err != nil {
			return err
		}
	}
	return nil
}

func (in *ingester) one(ctx context.Context, topic string, msg *message.Message) error {
	in.received.Add(1)
	l := FromMessage(ctx, msg, in.cfg.Broker, topic, in.cfg.ClaimCheck, in.cfg.Fingerprint)
	inserted, err := backoff.Retry(ctx, func() (bool, error) {
		ok, err := in.cfg.Store.Put(ctx, l)
		if err != nil {
			in.cfg.Logger.Error("Hospital store refused a letter; retrying", err, watermill.LogFields{"topic": topic, "uuid": l.UUID})
		}
		return ok, err
	}, backoff.WithMaxElapsedTime(in.cfg.MaxStoreWait))
	if err != nil {
		msg.Nack()
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("hospital: store letter %s of %s: %w (it stays in the DLQ)", l.UUID, topic, err)
	}
	if inserted {
		in.stored.Add(1)
	} else {
		in.duplicates.Add(1)
	}
	if l.Problem != "" {
		in.problems.Add(1)
		in.cfg.Logger.Info("Stored a letter with a problem", watermill.LogFields{"topic": topic, "uuid": l.UUID, "problem": l.Problem})
	}
	msg.Ack()
	return nil
}

func collect(c <-chan error) []error {
	var out []error
	for err := range c {
		out = append(out, err)
	}
	return out
}
