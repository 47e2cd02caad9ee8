package hello

import (
	"context"
	"errors"
	"os"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/poison"
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
	} else {
		r.sink = NewMemorySink()
	}
	switch r.opts.Tracker {
	case "postgres":
		t, err := poison.NewPostgresDeliveryTracker(ctx, poison.PostgresDeliveryTrackerConfig{URL: cfg.Postgres.URL})
		if err != nil {
			return closeAll, errors.New("--tracker postgres: " + err.Error())
		}
		closers = append(closers, func() { _ = t.Close() })
		r.tracker = t
	case "redis":
		addr := os.Getenv("ANTIDOTE_REDIS_ADDR")
		if addr == "" {
			addr = "127.0.0.1:6379"
		}
		t, err := poison.NewRedisDeliveryTracker(poison.RedisDeliveryTrackerConfig{Addr: addr})
		if err != nil {
			return closeAll, errors.New("--tracker redis: " + err.Error())
		}
		closers = append(closers, func() { _ = t.Close() })
		r.tracker = t
	default:
		t := poison.NewMemoryDeliveryTracker(poison.MemoryDeliveryTrackerConfig{})
		closers = append(closers, func() { _ = t.Close() })
		r.tracker = t
	}
	return closeAll, nil
}
