package middleware_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/idempotency"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/poison"
)

func floodDetector(t *testing.T, cfg poison.FloodDetectorConfig) *poison.FloodDetector {
	t.Helper()
	d, err := poison.NewFloodDetector(cfg)
	require.NoError(t, err)
	return d
}

func floodCopy(uuid, key, producer string) *message.Message {
	m := message.NewMessage(uuid, []byte(`{}`))
	m.Metadata.Set(idempotency.MetadataKey, key)
	m.Metadata.Set(poison.KeyProducer, producer)
	return m
}

func TestFloodGuardReportsOnly(t *testing.T) {
	logs := &recordingLogger{}
	var events []middleware.FloodAction
	g, err := middleware.NewFloodGuard(middleware.FloodGuardConfig{
		Detector: floodDetector(t, poison.FloodDetectorConfig{Threshold: 3}),
		Logger:   logs,
		OnFlood:  func(_ poison.FloodVerdict, a middleware.FloodAction) { events = append(events, a) },
	})
	require.NoError(t, err)
	runs := 0
	h := g.Middleware(func(*message.Message) ([]*message.Message, error) { runs++; return nil, nil })
	for i := 0; i < 10; i++ {
		_, err := h(floodCopy(fmt.Sprint(i), "row-1", "sweeper/host-1"))
		require.NoError(t, err)
	}
	assert.Equal(t, 10, runs, "report-only: every arrival runs")
	assert.Len(t, events, 7, "every arrival past the threshold is counted")
	for _, a := range events {
		assert.Equal(t, middleware.FloodProcessed, a)
	}
	reports := logs.matching("Redelivery flood")
	require.Len(t, reports, 1, "logged once per report interval")
	assert.Equal(t, "sweeper/host-1", reports[0].fields["producer"])
	assert.Contains(t, reports[0].msg, "sweeper/host-1")
	assert.ErrorIs(t, reports[0].err, poison.ErrFlood)
}

func TestFloodGuardDropsRepeats(t *testing.T) {
	var dropped atomic.Int64
	g, err := middleware.NewFloodGuard(middleware.FloodGuardConfig{
		Detector: floodDetector(t, poison.FloodDetectorConfig{Threshold: 3}),
		Drop:     true,
		OnFlood: func(v poison.FloodVerdict, a middleware.FloodAction) {
			if a == middleware.FloodDropped {
				dropped.Add(1)
			}
		},
	})
	require.NoError(t, err)
	runs := 0
	h := g.Middleware(func(*message.Message) ([]*message.Message, error) { runs++; return nil, nil })
	for i := 0; i < 10; i++ {
		_, err := h(floodCopy(fmt.Sprint(i), "row-1", "sweeper/host-1"))
		require.NoError(t, err, "dropped arrivals are acked")
	}
	_, err = h(floodCopy("other", "row-2", "sweeper/host-1"))
	require.NoError(t, err)
	assert.Equal(t, 3+1, runs, "the first three of row-1 and row-2 ran")
	assert.EqualValues(t, 7, dropped.Load())
}

func TestFloodGuardDeadLettersRepeats(t *testing.T) {
	pubSub := gochannel.NewGoChannel(gochannel.Config{Persistent: true}, watermill.NopLogger{})
	defer pubSub.Close()
	dlqPub := &dlPublisher{Publisher: pubSub}
	dl, err := middleware.NewDeadLetter(middleware.DeadLetterConfig{Publisher: dlqPub})
	require.NoError(t, err)
	g, err := middleware.NewFloodGuard(middleware.FloodGuardConfig{
		Detector:   floodDetector(t, poison.FloodDetectorConfig{Threshold: 2}),
		Drop:       true,
		DeadLetter: dl,
	})
	require.NoError(t, err)
	runs := 0
	h := g.Middleware(func(*message.Message) ([]*message.Message, error) { runs++; return nil, nil })
	ctx := routedContext(t) // topic "orders", handler "h"
	for i := 0; i < 5; i++ {
		m := floodCopy(fmt.Sprint(i), "row-1", "sweeper/host-1")
		m.SetContext(ctx)
		_, err := h(m)
		require.NoError(t, err)
	}
	assert.Equal(t, 2, runs)
	letters, err := pubSub.Subscribe(context.Background(), "orders.dlq")
	require.NoError(t, err)
	for i := 0; i < 3; i++ {
		select {
		case l := <-letters:
			l.Ack()
			env, err := poison.ReadEnvelope(l)
			require.NoError(t, err)
			assert.Equal(t, poison.ReasonFloodGuard, env.Reason)
			assert.Equal(t, "sweeper/host-1", env.Producer, "the letter names the source")
			assert.Contains(t, env.Error, "from producer sweeper/host-1")
		case <-time.After(dlWait):
			t.Fatalf("letter %d missing", i)
		}
	}

	// The DLQ is down: the repeat is nacked (Defer'd), not acked.
	dlqPub.fail.Store(1)
	m := floodCopy("late", "row-1", "sweeper/host-1")
	m.SetContext(ctx)
	_, err = h(m)
	assert.ErrorIs(t, err, poison.ErrDeferred)
	assert.Equal(t, 2, runs)
}

func TestFloodGuardConfigValidation(t *testing.T) {
	_, err := middleware.NewFloodGuard(middleware.FloodGuardConfig{DeadLetter: &middleware.DeadLetter{}})
	assert.ErrorContains(t, err, "Drop")
	g, err := middleware.NewFloodGuard(middleware.FloodGuardConfig{})
	require.NoError(t, err)
	assert.Equal(t, poison.DefaultFloodThreshold, g.Detector().Config().Threshold)
}

// The sweeper incident replayed on Kafka: an outbox relay that re-sends the
// same 10 rows in a tight loop (each time as new messages with the rows'
// idempotency keys, stamped producer "sweeper/host-1"), while a healthy
// producer publishes 500 messages. Every healthy message is processed, each
// row once; the flood is reported (log and callback) naming the sweeper and
// its rate, never the healthy producer, at most once per report interval;
// the repeats are dropped without running the handler.
func TestSweeperIncidentReplayed(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b, err := adapters.Open(ctx, adapters.Config{Broker: adapters.KindKafka, Kafka: adapters.KafkaConfig{Embedded: true}}, nil)
	require.NoError(t, err)
	defer b.Close()
	topic := "sweeper_incident"

	const (
		rows            = 10
		healthy         = 500
		reportInterval  = time.Second
		floodThreshold  = 20
		floodWindow     = time.Second
		sweeperProducer = "sweeper/host-1"
		healthyProducer = "web/host-2"
	)
	logs := &recordingLogger{}
	var (
		mu             sync.Mutex
		processed      = map[string]int{} // idempotency key -> handler runs
		ackedBy        = map[string]int{} // producer -> deliveries acked
		floodEvents    = map[string]int{} // producer -> flood arrivals
		floodActions   = map[middleware.FloodAction]int{}
		maxRate        float64
		duplicatesSeen atomic.Int64
	)
	guard, err := middleware.NewFloodGuard(middleware.FloodGuardConfig{
		Detector: floodDetector(t, poison.FloodDetectorConfig{Threshold: floodThreshold, Window: floodWindow, ReportInterval: reportInterval}),
		Drop:     true,
		Logger:   logs,
		OnFlood: func(v poison.FloodVerdict, a middleware.FloodAction) {
			mu.Lock()
			defer mu.Unlock()
			floodEvents[v.Producer]++
			floodActions[a]++
			maxRate = max(maxRate, v.Rate)
		},
	})
	require.NoError(t, err)
	store := idempotency.MustNewMemoryStore(idempotency.MemoryStoreConfig{})
	defer store.Close()
	idem, err := middleware.NewIdempotency(middleware.IdempotencyConfig{Store: store, OnDuplicate: func(*message.Message, string) { duplicatesSeen.Add(1) }})
	require.NoError(t, err)
	dl, err := middleware.NewDeadLetter(middleware.DeadLetterConfig{Publisher: b.Publisher})
	require.NoError(t, err)
	retry, err := middleware.NewRetry(middleware.RetryConfig{})
	require.NoError(t, err)
	ackTap := func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			out, err := h(msg)
			if err == nil {
				mu.Lock()
				ackedBy[msg.Metadata.Get(poison.KeyProducer)]++
				mu.Unlock()
			}
			return out, err
		}
	}

	r, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, watermill.NopLogger{})
	require.NoError(t, err)
	r.AddConsumerHandler("ledger", topic, b.Subscriber, func(msg *message.Message) error {
		mu.Lock()
		processed[msg.Metadata.Get(idempotency.MetadataKey)]++
		mu.Unlock()
		return nil
	}).AddMiddleware(ackTap, guard.Middleware, dl.Middleware, retry.Middleware, idem.Middleware, middleware.Recover)
	runDone := make(chan struct{})
	go func() { defer close(runDone); _ = r.Run(ctx) }()
	<-r.Running()

	rowKey := idempotency.FromJSONField("row_id")
	sweeper, err := idempotency.NewPublisher(b.Publisher, idempotency.ProducerConfig{Service: "sweeper", Instance: "host-1", Key: rowKey})
	require.NoError(t, err)
	web, err := idempotency.NewPublisher(b.Publisher, idempotency.ProducerConfig{Service: "web", Instance: "host-2", Key: idempotency.FromJSONField("order_id")})
	require.NoError(t, err)

	// The sweeper: its batch never gets marked sent, so it re-sends the same
	// rows every 10ms (1,000 messages/s, each row 100 times a second).
	stopSweeper := make(chan struct{})
	var sweeperSent atomic.Int64
	sweeperDone := make(chan struct{})
	go func() {
		defer close(sweeperDone)
		for {
			batch := make([]*message.Message, rows)
			for i := range batch {
				batch[i] = message.NewMessage(watermill.NewUUID(), []byte(fmt.Sprintf(`{"row_id":"outbox-%d"}`, i)))
				batch[i].Metadata.Set("partition_key", fmt.Sprintf("outbox-%d", i))
			}
			if err := sweeper.Publish(topic, batch...); err != nil {
				t.Errorf("sweeper publish: %v", err)
				return
			}
			sweeperSent.Add(rows)
			select {
			case <-stopSweeper:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()

	// Healthy traffic flows meanwhile, and the sweeper keeps flooding until
	// all of it was processed: it is processed during the flood.
	start := time.Now()
	for i := 0; i < healthy; i++ {
		m := message.NewMessage(watermill.NewUUID(), []byte(fmt.Sprintf(`{"order_id":"order-%d","user_id":%d,"msg":"Hello World"}`, i, i+1)))
		m.Metadata.Set("partition_key", strconv.Itoa(i))
		require.NoError(t, web.Publish(topic, m))
		time.Sleep(2 * time.Millisecond)
	}
	healthyDone := func() int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for i := 0; i < healthy; i++ {
			if processed[fmt.Sprintf("order-%d", i)] > 0 {
				n++
			}
		}
		return n
	}
	testenv.EventuallyNil(t, 2*time.Minute, func() error {
		if n := healthyDone(); n < healthy {
			return fmt.Errorf("only %d of %d healthy messages processed during the flood", n, healthy)
		}
		return nil
	})
	close(stopSweeper)
	<-sweeperDone
	floodDuration := time.Since(start)
	// Let the consumer drain what the sweeper sent: everything is acked.
	testenv.EventuallyNil(t, 2*time.Minute, func() error {
		mu.Lock()
		acked := ackedBy[sweeperProducer]
		mu.Unlock()
		if int64(acked) < sweeperSent.Load() {
			return fmt.Errorf("only %d of %d sweeper messages settled", acked, sweeperSent.Load())
		}
		return nil
	})
	elapsed := time.Since(start)
	cancel()
	<-runDone

	mu.Lock()
	defer mu.Unlock()
	for i := 0; i < healthy; i++ {
		assert.Equal(t, 1, processed[fmt.Sprintf("order-%d", i)], "order-%d", i)
	}
	for i := 0; i < rows; i++ {
		assert.Equal(t, 1, processed[fmt.Sprintf("outbox-%d", i)], "each re-sent row is processed once")
	}
	assert.Len(t, processed, healthy+rows)
	assert.Equal(t, healthy, ackedBy[healthyProducer])

	// The callback: the sweeper's repeats, none of the healthy producer's.
	assert.Positive(t, floodEvents[sweeperProducer])
	assert.Zero(t, floodEvents[healthyProducer], "healthy traffic is never a flood")
	assert.Equal(t, floodEvents[sweeperProducer], floodActions[middleware.FloodDropped], "every flood arrival was dropped")
	assert.Greater(t, maxRate, float64(floodThreshold)/floodWindow.Seconds(), "the reported rate is above the threshold")

	// The log: the flood named with its producer and rate, at most once per
	// report interval.
	reports := logs.matching("Redelivery flood")
	require.NotEmpty(t, reports)
	assert.LessOrEqual(t, len(reports), int(elapsed/reportInterval)+1, "one report per interval")
	totalRepeats := 0
	for _, rep := range reports {
		assert.Equal(t, sweeperProducer, rep.fields["producer"])
		assert.Contains(t, rep.msg, "from producer "+sweeperProducer)
		rate, err := strconv.ParseFloat(fmt.Sprint(rep.fields["rate_per_s"]), 64)
		require.NoError(t, err)
		assert.Greater(t, rate, float64(floodThreshold)/floodWindow.Seconds())
		assert.True(t, strings.HasPrefix(fmt.Sprint(rep.fields["message_key"]), topic+"/ledger/key:outbox-"), rep.fields["message_key"])
		assert.Equal(t, string(middleware.FloodDropped), rep.fields["action"])
		totalRepeats += rep.fields["repeats_since_last_report"].(int)
	}
	assert.LessOrEqual(t, totalRepeats, floodEvents[sweeperProducer], "reports sum the repeats between them")
	first, _ := json.Marshal(reports[0].fields)
	t.Logf("flood of %s: %d messages sent in %s, %d dropped by the guard, %d acked as duplicates, 10 rows processed once; %d healthy processed; %d report lines, first: %s %s",
		floodDuration.Round(time.Millisecond), sweeperSent.Load(), elapsed.Round(time.Millisecond), floodActions[middleware.FloodDropped],
		duplicatesSeen.Load(), healthy, len(reports), reports[0].msg, first)
}
