package middleware_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/idempotency"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/internal/testenv/brokers"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/pgstore"
	"github.com/antidote-mq/antidote/redisstore"
)

const (
	idemMessages       = 1000
	idemDuplicateEvery = 10
	idemWait           = 3 * time.Minute
)

// idemBrokerConfig is the adapters config of kind for these tests.
func idemBrokerConfig(t *testing.T, kind adapters.Kind) adapters.Config {
	return brokers.Config(t, kind, brokers.FastRedelivery())
}

// idemTally is what the consumers of one run saw.
type idemTally struct {
	mu        sync.Mutex
	processed map[string]int // idempotency key -> handler runs
	ranUUID   map[string]bool
	dupUUID   map[string]int // UUID -> times acked as a duplicate
	dups      int
	perRouter []int          // handler runs per consumer
	warmedUp  []int          // warm-up messages per consumer
	ranBy     map[string]int // key -> consumer that ran it
	skippedBy map[string]int // key -> consumer that skipped a copy
}

func newIdemTally(consumers int) *idemTally {
	return &idemTally{processed: map[string]int{}, ranUUID: map[string]bool{}, dupUUID: map[string]int{}, perRouter: make([]int, consumers), warmedUp: make([]int, consumers), ranBy: map[string]int{}, skippedBy: map[string]int{}}
}

// settledUUIDs counts the published UUIDs that were processed or skipped.
func (tl *idemTally) settled(published []*message.Message) int {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	n := 0
	for _, m := range published {
		if tl.ranUUID[m.UUID] || tl.dupUUID[m.UUID] > 0 {
			n++
		}
	}
	return n
}

// idemPublish publishes idemMessages messages, every idemDuplicateEvery-th
// twice (a new UUID, the same Idempotency-Key, right after the first, as a
// producer retrying a publish would), and returns all of them.
func idemPublish(t *testing.T, pub message.Publisher, topic string) []*message.Message {
	t.Helper()
	var all []*message.Message
	for i := 1; i <= idemMessages; i++ {
		key := fmt.Sprintf("hello-%d", i)
		payload := []byte(fmt.Sprintf(`{"user_id":%d,"msg":"Hello World"}`, i))
		copies := 1
		if i%idemDuplicateEvery == 0 {
			copies = 2
		}
		for c := 0; c < copies; c++ {
			m := message.NewMessage(watermill.NewUUID(), payload)
			m.Metadata.Set(idempotency.MetadataKey, key)
			// Kafka: spread over partitions (a record without a key always
			// lands on the same one), so the two copies of a key usually
			// reach different partitions and race on two consumers.
			m.Metadata.Set("partition_key", m.UUID)
			all = append(all, m)
		}
	}
	for start := 0; start < len(all); start += 100 {
		require.NoError(t, pub.Publish(topic, all[start:min(start+100, len(all))]...))
	}
	return all
}

// idemConsume runs one router per broker with DeadLetter → Retry →
// Idempotency → Recover over a handler that records what it processed.
func idemConsume(t *testing.T, brokers []*adapters.Broker, store idempotency.Store, topic string, tally *idemTally) func() {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i, b := range brokers {
		r, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, watermill.NopLogger{})
		require.NoError(t, err)
		dl, err := middleware.NewDeadLetter(middleware.DeadLetterConfig{Publisher: b.Publisher})
		require.NoError(t, err)
		retry, err := middleware.NewRetry(middleware.RetryConfig{InitialInterval: 10 * time.Millisecond})
		require.NoError(t, err)
		consumer := i
		idem, err := middleware.NewIdempotency(middleware.IdempotencyConfig{
			Store: store,
			OnDuplicate: func(msg *message.Message, key string) {
				if strings.HasPrefix(key, "warmup-") {
					return
				}
				tally.mu.Lock()
				tally.dups++
				tally.dupUUID[msg.UUID]++
				tally.skippedBy[key] = consumer
				tally.mu.Unlock()
			},
		})
		require.NoError(t, err)
		r.AddConsumerHandler("hello", topic, b.Subscriber, func(msg *message.Message) error {
			tally.mu.Lock()
			defer tally.mu.Unlock()
			if strings.HasPrefix(msg.Metadata.Get(idempotency.MetadataKey), "warmup-") {
				tally.warmedUp[consumer]++
				return nil
			}
			tally.processed[msg.Metadata.Get(idempotency.MetadataKey)]++
			tally.ranUUID[msg.UUID] = true
			tally.perRouter[consumer]++
			tally.ranBy[msg.Metadata.Get(idempotency.MetadataKey)] = consumer
			return nil
		}).AddMiddleware(dl.Middleware, retry.Middleware, idem.Middleware, middleware.Recover)
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = r.Run(ctx)
		}()
		<-r.Running()
	}
	return func() { cancel(); wg.Wait() }
}

// idemWarmUp publishes a message every 50ms until every consumer got one:
// a Kafka consumer group has then settled its partitions between them, so
// the measured run is not one consumer doing everything before the other
// joins.
func idemWarmUp(t *testing.T, pub message.Publisher, topic string, tally *idemTally) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for i := 0; ; i++ {
		tally.mu.Lock()
		ready := true
		for _, n := range tally.warmedUp {
			ready = ready && n > 0
		}
		tally.mu.Unlock()
		if ready {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not every consumer received a warm-up message within a minute: %v", tally.warmedUp)
		}
		m := message.NewMessage(watermill.NewUUID(), []byte(`{}`))
		m.Metadata.Set(idempotency.MetadataKey, fmt.Sprintf("warmup-%d", i))
		m.Metadata.Set("partition_key", m.UUID)
		require.NoError(t, pub.Publish(topic, m))
		time.Sleep(50 * time.Millisecond)
	}
}

func openIdemBrokers(t *testing.T, kind adapters.Kind, n int) []*adapters.Broker {
	t.Helper()
	cfg := idemBrokerConfig(t, kind)
	var out []*adapters.Broker
	for i := 0; i < n; i++ {
		b, err := adapters.Open(context.Background(), cfg, nil)
		require.NoError(t, err)
		t.Cleanup(func() { _ = b.Close() })
		out = append(out, b)
		if kind == adapters.KindKafka {
			// The second consumer joins the first one's embedded broker.
			cfg.Kafka.Brokers, cfg.Kafka.Embedded = b.Config.Kafka.Brokers, false
		}
	}
	return out
}

func idemPostgresStore(t *testing.T) idempotency.Store {
	t.Helper()
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testenv.PostgresURL(t))
	require.NoError(t, err)
	table := "antidote_idem_brokers_" + strings.ToLower(watermill.NewShortUUID())
	s, err := pgstore.NewIdempotencyStore(ctx, pgstore.IdempotencyStoreConfig{Pool: pool, Table: table})
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = s.Close()
		_, _ = pool.Exec(context.Background(), "DROP TABLE IF EXISTS "+table)
		pool.Close()
	})
	return s
}

func idemRedisStore(t *testing.T) idempotency.Store {
	t.Helper()
	client := redis.NewClient(&redis.Options{Addr: testenv.RedisAddr(t)})
	prefix := "antidote:test:idem:" + watermill.NewShortUUID() + ":"
	s, err := redisstore.NewIdempotencyStore(redisstore.IdempotencyStoreConfig{Client: client, Prefix: prefix})
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = s.Close()
		ctx := context.Background()
		if keys, err := client.Keys(ctx, prefix+"*").Result(); err == nil && len(keys) > 0 {
			_ = client.Del(ctx, keys...).Err()
		}
		_ = client.Close()
	})
	return s
}

// On each real broker: 1,000 messages, every 10th published twice with the
// same Idempotency-Key. One consumer processes 1,000 and skips 100
// duplicates. Two consumers in parallel (two routers on two adapters.Open
// brokers, same topic/queue/group) sharing a PostgreSQL or Redis store
// process every key exactly once.
func TestIdempotencyOnBrokers(t *testing.T) {
	testenv.Integration(t)
	runs := []struct {
		name      string
		consumers int
		store     func(*testing.T) idempotency.Store
	}{
		{"one consumer, memory store", 1, func(t *testing.T) idempotency.Store {
			s := idempotency.MustNewMemoryStore(idempotency.MemoryStoreConfig{})
			t.Cleanup(func() { _ = s.Close() })
			return s
		}},
		{"two consumers, postgres store", 2, idemPostgresStore},
		{"two consumers, redis store", 2, idemRedisStore},
	}
	for _, kind := range brokers.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			for _, run := range runs {
				t.Run(run.name, func(t *testing.T) {
					brokers := openIdemBrokers(t, kind, run.consumers)
					store := run.store(t)
					topic := "idem_" + strings.ToLower(watermill.NewShortUUID())
					tally := newIdemTally(run.consumers)
					stop := idemConsume(t, brokers, store, topic, tally)
					defer stop()
					idemWarmUp(t, brokers[0].Publisher, topic, tally)

					published := idemPublish(t, brokers[0].Publisher, topic)
					require.Len(t, published, idemMessages+idemMessages/idemDuplicateEvery)
					testenv.EventuallyNil(t, idemWait, func() error {
						if n := tally.settled(published); n < len(published) {
							return fmt.Errorf("only %d of %d published messages were processed or skipped", n, len(published))
						}
						return nil
					})
					// Anything still in flight would show up as an extra run.
					time.Sleep(500 * time.Millisecond)
					stop()

					tally.mu.Lock()
					defer tally.mu.Unlock()
					runsTotal := 0
					for key, n := range tally.processed {
						runsTotal += n
						assert.Equal(t, 1, n, "key %s processed %d times", key, n)
					}
					assert.Len(t, tally.processed, idemMessages, "processed keys")
					assert.Equal(t, idemMessages, runsTotal, "handler runs")
					skippedOnly := 0
					for uuid := range tally.dupUUID {
						if !tally.ranUUID[uuid] {
							skippedOnly++
						}
					}
					assert.Equal(t, idemMessages/idemDuplicateEvery, skippedOnly, "published copies skipped as duplicates")
					if run.consumers == 1 {
						assert.Equal(t, idemMessages/idemDuplicateEvery, tally.dups, "duplicates skipped")
					} else {
						// A rebalance can hand a consumer messages the other
						// already processed (offsets not yet committed): those
						// are skipped as duplicates too, never run twice.
						assert.GreaterOrEqual(t, tally.dups, idemMessages/idemDuplicateEvery)
						// On the PostgreSQL queue two subscribers take turns:
						// watermill-sql's queue schema locks a batch of 100
						// rows (SELECT ... FOR UPDATE, no SKIP LOCKED) until
						// it is acked, so one consumer may do all the work.
						// Kafka partitions and RabbitMQ's competing consumers
						// really run in parallel: there both must have worked.
						if kind != adapters.KindPostgres {
							for i, n := range tally.perRouter {
								assert.Positive(t, n, "consumer %d processed nothing: the run did not test two consumers", i)
							}
						}
					}
					// Keys whose two copies went to different consumers:
					// the race the shared store must decide.
					crossed := 0
					for key, by := range tally.skippedBy {
						if tally.ranBy[key] != by {
							crossed++
						}
					}
					if run.consumers == 2 && kind != adapters.KindPostgres {
						assert.Positive(t, crossed, "no duplicate pair was split between the consumers")
					}
					t.Logf("%s: processed %d keys (per consumer %v), %d duplicates skipped (%d published copies, %d redeliveries; %d pairs split between consumers)",
						kind, len(tally.processed), tally.perRouter, tally.dups, skippedOnly, tally.dups-skippedOnly, crossed)
				})
			}
		})
	}
}
