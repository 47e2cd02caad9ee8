package middleware_test

import (
	"context"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/antidote-mq/antidote"
	// Its import registers watermill-kafka's position reader: the guard
	// reads offsets of any watermill-kafka subscriber, this hand-built one
	// too.
	_ "github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/poison"
)

// TestCrashLoopGuardKafkaCrashLoop runs the default (cheap) detector against a
// real Kafka protocol broker (kfake, in process) and the real
// watermill-kafka subscriber: real offsets in the message context, a real
// consumer group, sarama's asynchronous commits. The handler "kills the
// process" on offset 150 (it never returns, so the offset is never acked
// nor committed); each life is a new subscriber, router and guard over the
// same tracker. The restarted consumer resumes at the last commit, well
// before 150, so the crash record is never the first delivery of a life:
// only the block leases can catch it.
func TestCrashLoopGuardKafkaCrashLoop(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an in-process Kafka broker and several consumer group sessions")
	}
	const (
		topic         = "guarded"
		total         = 300
		crashAt       = 150
		maxDeliveries = 3
	)
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, topic))
	require.NoError(t, err)
	defer cluster.Close()
	brokers := cluster.ListenAddrs()
	logger := watermill.NopLogger{}

	pub, err := kafka.NewPublisher(kafka.PublisherConfig{Brokers: brokers, Marshaler: kafka.DefaultMarshaler{}}, logger)
	require.NoError(t, err)
	for i := 0; i < total; i++ {
		payload := "ok"
		if i == crashAt {
			payload = "crash"
		}
		require.NoError(t, pub.Publish(topic, message.NewMessage(watermill.NewUUID(), []byte(payload))))
	}
	require.NoError(t, pub.Close())

	tracker := poison.MustNewMemoryDeliveryTracker(poison.MemoryDeliveryTrackerConfig{}) // outlives every life
	defer tracker.Close()
	dlqPubSub := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 10}, logger)
	defer dlqPubSub.Close()
	dlq, err := dlqPubSub.Subscribe(context.Background(), antidote.DLQTopic(topic))
	require.NoError(t, err)

	var (
		mu        sync.Mutex
		processed = map[int64]bool{}
		crashRuns int
	)
	crashed := make(chan struct{}, 10)
	handler := func(msg *message.Message) error {
		_, offset, ok := antidote.PositionFromCtx(msg.Context())
		require.True(t, ok, "the Kafka offset is in the context")
		if string(msg.Payload) == "crash" {
			mu.Lock()
			crashRuns++
			mu.Unlock()
			crashed <- struct{}{}
			runtime.Goexit() // the process dies: nothing after this runs
		}
		mu.Lock()
		processed[offset] = true
		mu.Unlock()
		return nil
	}
	allProcessed := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(processed) == total-1
	}

	var letter *message.Message
	for life := 1; letter == nil; life++ {
		require.LessOrEqual(t, life, maxDeliveries+2, "the crash loop did not end")
		saramaCfg := kafka.DefaultSaramaSubscriberConfig()
		saramaCfg.Consumer.Offsets.Initial = sarama.OffsetOldest
		sub, err := kafka.NewSubscriber(kafka.SubscriberConfig{
			Brokers:       brokers,
			Unmarshaler:   kafka.DefaultMarshaler{},
			ConsumerGroup: "guarded-consumers",
			// Sarama's default 1s auto-commit: the commit lags the crash.
			OverwriteSaramaConfig: saramaCfg,
		}, logger)
		require.NoError(t, err)
		dl, err := middleware.NewDeadLetter(middleware.DeadLetterConfig{Publisher: dlqPubSub, ConsumerGroup: "guarded-consumers"})
		require.NoError(t, err)
		guard, err := middleware.NewCrashLoopGuard(middleware.CrashLoopGuardConfig{Tracker: tracker, DeadLetter: dl, MaxDeliveries: maxDeliveries})
		require.NoError(t, err)
		router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, logger)
		require.NoError(t, err)
		router.AddMiddleware(guard.Middleware, dl.Middleware, middleware.Recover)
		router.AddConsumerHandler("guarded", topic, sub, handler)
		go func() { _ = router.Run(context.Background()) }()

		select {
		case <-crashed:
		case letter = <-dlq:
			letter.Ack()
		case <-time.After(60 * time.Second):
			t.Fatalf("life %d: neither a crash nor a letter", life)
		}
		if letter != nil {
			require.Eventually(t, allProcessed, 30*time.Second, 10*time.Millisecond,
				"after the quarantine the partition moves on")
		}
		require.NoError(t, router.Close())
	}

	assert.Equal(t, string(poison.ReasonCrashLoop), letter.Metadata.Get(poison.KeyReason))
	assert.Equal(t, "0", letter.Metadata.Get(poison.KeyOriginalPartition))
	assert.Equal(t, strconv.Itoa(crashAt), letter.Metadata.Get(poison.KeyOriginalOffset))
	assert.Equal(t, "crash", string(letter.Payload))
	mu.Lock()
	defer mu.Unlock()
	t.Logf("handler crashed %d times before the quarantine", crashRuns)
	// The first crash may go uncounted (its block was clean): at most one
	// run more than MaxDeliveries.
	assert.GreaterOrEqual(t, crashRuns, maxDeliveries)
	assert.LessOrEqual(t, crashRuns, maxDeliveries+1)
	assert.Len(t, processed, total-1, "every healthy message processed")
}
