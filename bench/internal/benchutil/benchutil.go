// Package benchutil holds what the bench commands share: the statistics
// they report (Median, Percentile), the simulated handler cost (Work), the
// subscriber wrapper a router cannot close (KeepOpen) and the cleanup of
// what a measurement leaves on a broker (Drop).
package benchutil

import (
	"context"
	"sort"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/antidote-mq/antidote/adapters"
)

// Median returns the median of xs (the mean of the middle two for an even
// count), 0 for none. xs is not modified.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// Percentile returns the q-quantile (0 < q <= 1) of sorted, which must be
// in ascending order, by the nearest-rank method; 0 for none.
func Percentile(sorted []int64, q float64) int64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.5) - 1
	if i < 0 {
		i = 0
	}
	if i >= len(sorted) {
		i = len(sorted) - 1
	}
	return sorted[i]
}

// Work is a handler's simulated cost: a busy loop of d (CPU), or a sleep
// when sleep is set (I/O; Go's timers on Linux make any sleep under 1ms
// last about 1ms).
func Work(d time.Duration, sleep bool) {
	if d <= 0 {
		return
	}
	if sleep {
		time.Sleep(d)
		return
	}
	for start := time.Now(); time.Since(start) < d; {
	}
}

// KeepOpen stops a router from closing the subscriber it was given (a
// broker's shared one, closed by its owner when the measurement ends); the
// subscriptions still end with the router's context.
type KeepOpen struct{ message.Subscriber }

// Close does nothing.
func (KeepOpen) Close() error { return nil }

// Drop removes what a measurement left on b, best effort (errors are
// ignored): names as PostgreSQL queue tables on PostgreSQL, as RabbitMQ
// queues on RabbitMQ. Kafka topics live in the embedded broker and go with
// it.
func Drop(ctx context.Context, b *adapters.Broker, names ...string) {
	switch b.Kind {
	case adapters.KindPostgres:
		pool, err := adapters.OpenPostgresPool(ctx, b.Config)
		if err != nil {
			return
		}
		defer pool.Close()
		for _, t := range names {
			_, _ = pool.Exec(ctx, "DROP TABLE IF EXISTS "+adapters.PostgresTable(b.Config.Postgres, t))
		}
	case adapters.KindAMQP:
		conn, err := amqp.Dial(b.Config.AMQP.URL)
		if err != nil {
			return
		}
		defer conn.Close()
		for _, q := range names {
			// A channel per delete: deleting a queue that does not exist
			// closes the channel.
			if ch, err := conn.Channel(); err == nil {
				_, _ = ch.QueueDelete(q, false, false, false)
				_ = ch.Close()
			}
		}
	}
}
