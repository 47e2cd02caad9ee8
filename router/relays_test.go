package router_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/internal/testenv/brokers"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/router"
)

// A Kafka retry topic may hold records from anyone. One that says it is due
// in the year 9999, one with a malformed due time and one whose retry topic
// names another topic are each forwarded to the relay's own topic within
// the stage's delay: none holds the retry partition, none goes elsewhere.
func TestRetryRelayTrustsNoMetadata(t *testing.T) {
	b := brokers.Open(t, brokerConfig(t, adapters.KindKafka))
	const stage = 500 * time.Millisecond
	topic := brokers.Topic("relay_")
	elsewhere := brokers.Topic("relay_elsewhere_")
	cfg := router.Config{CrashLoopGuard: memGuard(), CloseTimeout: 5 * time.Second, DeadLetter: middleware.DeadLetterConfig{Publisher: b.Publisher},
		DelayedRetry: &middleware.DelayedRetryConfig{Stages: []time.Duration{stage}, Scheduler: b.Scheduler()}}
	r, err := router.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	got := map[string]string{} // uuid -> topic it arrived on
	record := func(m *message.Message) error {
		mu.Lock()
		got[m.UUID] = message.SubscribeTopicFromCtx(m.Context())
		mu.Unlock()
		return nil
	}
	r.AddConsumerHandler("h", topic, b.Subscriber, record)
	r.AddConsumerHandler("other", elsewhere, b.Subscriber, record)
	router.AddRetryRelays(r, cfg, topic)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = r.Run(ctx) }()
	<-r.Running()

	forged := map[string]map[string]string{
		"far-future": {antidote.MetadataRetryDue: "9999-12-31T23:59:59Z"},
		"malformed":  {antidote.MetadataRetryDue: "soon\x00"},
		"redirected": {antidote.MetadataRetryTopic: elsewhere},
		"loop":       {antidote.MetadataRetryTopic: adapters.KafkaRetryTopic(topic, stage)},
	}
	var msgs []*message.Message
	for id, md := range forged {
		m := message.NewMessage(id, []byte(id))
		for k, v := range md {
			m.Metadata.Set(k, v)
		}
		m.Metadata.Set("partition_key", "same") // one retry partition
		msgs = append(msgs, m)
	}
	if err := b.Publisher.Publish(adapters.KafkaRetryTopic(topic, stage), msgs...); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(got) == len(forged) })
	mu.Lock()
	defer mu.Unlock()
	for id, arrived := range got {
		if arrived != topic {
			t.Errorf("%s was forwarded to %q, want the relay's own topic %q", id, arrived, topic)
		}
	}
}
