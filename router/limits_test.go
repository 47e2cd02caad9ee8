package router_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/claimcheck"
	"github.com/antidote-mq/antidote/internal/testenv/brokers"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/poison"
	"github.com/antidote-mq/antidote/router"
)

// kafkaLetterRun publishes a message of 1,048,000 bytes that the handler
// rejects, then a healthy one behind it on the same partition, through the
// whole stack on the embedded Kafka broker. It returns the letters of the
// big message (read up to a sentinel) and how often the healthy one ran.
func kafkaLetterRun(t *testing.T, precreateDLQ bool, cc poison.ClaimCheck) (letters []*message.Message, healthy int, b *adapters.Broker) {
	t.Helper()
	b, err := adapters.Open(context.Background(), brokerConfig(t, adapters.KindKafka), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	topic := brokers.Topic("letter_size_")
	if precreateDLQ {
		// An operator's DLQ topic at Kafka's default max.message.bytes:
		// the letter of a message near the limit does not fit it.
		admin, err := sarama.NewClusterAdmin(b.Config.Kafka.Brokers, sarama.NewConfig())
		if err != nil {
			t.Fatal(err)
		}
		if err := admin.CreateTopic(antidote.DLQTopic(topic), &sarama.TopicDetail{NumPartitions: 4, ReplicationFactor: 1}, false); err != nil {
			t.Fatal(err)
		}
		_ = admin.Close()
	}
	var mu sync.Mutex
	processed := 0
	r, err := router.New(router.Config{CrashLoopGuard: memGuard(), CloseTimeout: 5 * time.Second, DeadLetter: middleware.DeadLetterConfig{
		Publisher: b.Publisher, ClaimCheck: cc, FailedPublishPause: 200 * time.Millisecond,
	}})
	if err != nil {
		t.Fatal(err)
	}
	r.AddConsumerHandler("h", topic, b.Subscriber, func(m *message.Message) error {
		if len(m.Payload) > 1000 {
			return poison.Permanent(errors.New("order too large to parse: " + strings.Repeat("detail ", 50)))
		}
		mu.Lock()
		processed++
		mu.Unlock()
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() { _ = r.Run(ctx) }()
	<-r.Running()

	big := message.NewMessage("big", bytes.Repeat([]byte{'b'}, 1_048_000))
	big.Metadata.Set("partition_key", "k")
	after := message.NewMessage("after", []byte("ok"))
	after.Metadata.Set("partition_key", "k")
	if err := b.Publisher.Publish(topic, big, after); err != nil {
		t.Fatalf("publishing a message of 1,048,000 bytes (under the 1 MiB default): %v", err)
	}
	done := func() bool { mu.Lock(); defer mu.Unlock(); return processed > 0 }
	deadline := time.Now().Add(60 * time.Second)
	for !done() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	mu.Lock()
	healthy = processed
	mu.Unlock()
	if healthy == 0 {
		return nil, 0, b
	}
	// The big message was acked before the healthy one behind it ran, so
	// its letters are all in the DLQ now: read up to a sentinel.
	sentinel := message.NewMessage("sentinel", []byte("s"))
	sentinel.Metadata.Set("partition_key", "k")
	if err := b.Publisher.Publish(antidote.DLQTopic(topic), sentinel); err != nil {
		t.Fatal(err)
	}
	for m := range dlqSubscriber(t, ctx, b, topic) {
		m.Ack()
		if m.UUID == "sentinel" {
			break
		}
		letters = append(letters, m)
	}
	return letters, healthy, b
}

// The envelope pushes the letter of a message just under Kafka's 1 MiB
// default over it: the adapter created the DLQ topic with room for the
// envelope, so it is dead-lettered once with its payload whole, and the
// partition flows on. (Before: the DLQ publish failed, the message was
// nacked and redelivered forever, its partition blocked.)
func TestKafkaLetterOverTheLimitIsDeadLetteredOnce(t *testing.T) {
	letters, healthy, _ := kafkaLetterRun(t, false, nil)
	if healthy != 1 {
		t.Fatalf("the healthy message behind the big one ran %d times: the partition is blocked", healthy)
	}
	if len(letters) != 1 || letters[0].UUID != "big" {
		t.Fatalf("%d letters, want the big message's one", len(letters))
	}
	l := letters[0]
	if len(l.Payload) != 1_048_000 || l.Metadata.Get(poison.KeyReason) != "permanent" || l.Metadata.Get(poison.KeyClaimCheck) != "" {
		t.Fatalf("letter: %d bytes, reason %q, claim %q", len(l.Payload), l.Metadata.Get(poison.KeyReason), l.Metadata.Get(poison.KeyClaimCheck))
	}
}

// When the DLQ topic cannot take the letter (created beforehand at Kafka's
// default), the envelope is shrunk and, as that is not enough, the payload
// moves to the claim check: one letter, its payload readable back whole.
func TestKafkaLetterThatDoesNotFitGoesToTheClaimCheck(t *testing.T) {
	cc := claimcheck.NewMemoryStore()
	letters, healthy, _ := kafkaLetterRun(t, true, cc)
	if healthy != 1 || len(letters) != 1 {
		t.Fatalf("healthy ran %d times, %d letters; want 1 and 1", healthy, len(letters))
	}
	l := letters[0]
	if l.Metadata.Get(poison.KeyClaimCheck) == "" || l.Metadata.Get(poison.KeyShrunk) != "true" || l.Metadata.Get(poison.KeyStack) != "" {
		t.Fatalf("letter not claim-checked and shrunk: %v", l.Metadata)
	}
	if n := len(l.Metadata.Get(poison.KeyError)); n > poison.ShrunkErrorBytes+len("\n...[truncated]") {
		t.Errorf("shrunk error is %d bytes", n)
	}
	whole, err := poison.ResolveClaim(context.Background(), cc, l)
	if err != nil {
		t.Fatal(err)
	}
	if len(whole.Payload) != 1_048_000 || whole.Metadata.Get("partition_key") != "k" {
		t.Fatalf("claim gave back %d bytes, partition_key %q", len(whole.Payload), whole.Metadata.Get("partition_key"))
	}
	if _, err := poison.ReadEnvelope(l); err != nil {
		t.Fatalf("claim-checked letter is not a readable envelope: %v", err)
	}
}

// Without a claim check such a letter cannot be written: the message is
// nacked (never acked, never lost), with an error naming the fix, and
// redelivered with a pause, not in a hot loop.
func TestKafkaLetterThatDoesNotFitWithoutClaimCheckIsNacked(t *testing.T) {
	b := brokers.Open(t, brokerConfig(t, adapters.KindKafka))
	topic := brokers.Topic("letter_nofit_")
	admin, err := sarama.NewClusterAdmin(b.Config.Kafka.Brokers, sarama.NewConfig())
	if err != nil {
		t.Fatal(err)
	}
	if err := admin.CreateTopic(antidote.DLQTopic(topic), &sarama.TopicDetail{NumPartitions: 1, ReplicationFactor: 1}, false); err != nil {
		t.Fatal(err)
	}
	_ = admin.Close()
	logs := &errorLog{}
	var runs atomic.Int64
	const pause = 300 * time.Millisecond
	r, err := router.New(router.Config{CrashLoopGuard: memGuard(), CloseTimeout: 5 * time.Second, Logger: logs,
		DeadLetter: middleware.DeadLetterConfig{Publisher: b.Publisher, FailedPublishPause: pause}})
	if err != nil {
		t.Fatal(err)
	}
	r.AddConsumerHandler("h", topic, b.Subscriber, func(m *message.Message) error {
		runs.Add(1)
		return poison.Permanent(errors.New("rejected"))
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = r.Run(ctx) }()
	<-r.Running()
	// Just under the 1 MiB limit: its letter is over the DLQ topic's.
	big := message.NewMessage("big", bytes.Repeat([]byte{'b'}, 1_048_400))
	if err := b.Publisher.Publish(topic, big); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	waitFor(t, 60*time.Second, func() bool { return runs.Load() >= 3 })
	elapsed := time.Since(start)
	if !strings.Contains(logs.text(), "ClaimCheck") {
		t.Errorf("the error does not name the fix (DeadLetterConfig.ClaimCheck): %s", logs.text())
	}
	// Each redelivery waited FailedPublishPause: no hot loop.
	if n := runs.Load(); n > int64(elapsed/pause)+2 {
		t.Errorf("%d runs in %s with a %s pause: looping hot", n, elapsed, pause)
	}
}

// errorLog keeps the router's error lines.
type errorLog struct {
	watermill.NopLogger
	mu    sync.Mutex
	lines []string
}

func (l *errorLog) Error(msg string, err error, _ watermill.LogFields) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, msg+": "+err.Error())
}

func (l *errorLog) With(watermill.LogFields) watermill.LoggerAdapter { return l }

func (l *errorLog) text() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}
