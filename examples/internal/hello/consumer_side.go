package hello

import (
	"context"
	"errors"
	"os"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/idempotency"
	"github.com/antidote-mq/antidote/pgstore"
	"github.com/antidote-mq/antidote/poison"
	"github.com/antidote-mq/antidote/redisstore"
)

// openConsumerSide opens the sink and the delivery tracker the flags ask for.
// The returned close releases whatever was opened, even on error.
func (r *run) openConsumerSide(ctx context.Context, cfg adapters.Config) (func(), error) {
	var closers []func()
	closeAll := func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	if r.opts.Sink == "postgres" {
		pool, err := adapters.OpenPostgresPool(ctx, cfg)
		if err != nil {
			return closeAll, errors.New("--sink postgres: " + err.Error())
		}
		closers = append(closers, pool.Close)
		sink, err := NewPostgresSink(ctx, pool)
		if err != nil {
			return closeAll, err
		}
		r.sink = sink
		r.health = sink.Ping
	} else {
		r.sink = NewMemorySink()
		// A sink in this process is never down: a message that keeps
		// failing transiently fails on its own account, and the breaker
		// may dead-letter it after one hold instead of waiting MaxHoldTime.
		r.health = func(context.Context) error { return nil }
	}
	redisAddr := os.Getenv("ANTIDOTE_REDIS_ADDR")
	if redisAddr == "" {
		redisAddr = "127.0.0.1:6379"
	}
	switch r.opts.IdemStore {
	case "postgres", "postgres-tx":
		st, err := pgstore.NewIdempotencyStore(ctx, pgstore.IdempotencyStoreConfig{URL: cfg.Postgres.URL})
		if err != nil {
			return closeAll, errors.New("--idempotency postgres: " + err.Error())
		}
		closers = append(closers, func() { _ = st.Close() })
		r.idem = st
		r.idemTx = r.opts.IdemStore == "postgres-tx"
	case "redis":
		st, err := redisstore.NewIdempotencyStore(redisstore.IdempotencyStoreConfig{Addr: redisAddr})
		if err != nil {
			return closeAll, errors.New("--idempotency redis: " + err.Error())
		}
		closers = append(closers, func() { _ = st.Close() })
		r.idem = st
	default:
		st := idempotency.MustNewMemoryStore(idempotency.MemoryStoreConfig{})
		closers = append(closers, func() { _ = st.Close() })
		r.idem = st
	}
	switch r.opts.Tracker {
	case "postgres":
		t, err := pgstore.NewDeliveryTracker(ctx, pgstore.DeliveryTrackerConfig{URL: cfg.Postgres.URL})
		if err != nil {
			return closeAll, errors.New("--tracker postgres: " + err.Error())
		}
		closers = append(closers, func() { _ = t.Close() })
		r.tracker = t
	case "redis":
		t, err := redisstore.NewDeliveryTracker(redisstore.DeliveryTrackerConfig{Addr: redisAddr})
		if err != nil {
			return closeAll, errors.New("--tracker redis: " + err.Error())
		}
		closers = append(closers, func() { _ = t.Close() })
		r.tracker = t
	default:
		t := poison.MustNewMemoryDeliveryTracker(poison.MemoryDeliveryTrackerConfig{})
		closers = append(closers, func() { _ = t.Close() })
		r.tracker = t
	}
	return closeAll, nil
}
