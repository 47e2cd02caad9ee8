package hospital_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/hospital"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/internal/testenv/brokers"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/poison"
	"github.com/antidote-mq/antidote/router"
)

// A letter whose payload is wrong is corrected and replayed as a new
// message naming the original, through a consumer that rejects the
// uncorrected payload, on each broker: the corrected message is processed,
// the letter is replayed, the audit holds who and the diff.
func TestEditAndReplay(t *testing.T) {
	for _, kind := range brokers.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			cfg := brokers.Config(t, kind, brokers.KafkaCluster(2))
			b := brokers.Open(t, cfg)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			processed := make(chan *message.Message, 10)
			r, err := router.New(router.Config{
				CrashLoopGuard: middleware.CrashLoopGuardConfig{Tracker: poison.MustNewMemoryDeliveryTracker(poison.MemoryDeliveryTrackerConfig{})},
				DeadLetter:     middleware.DeadLetterConfig{Publisher: b.Publisher},
			})
			if err != nil {
				t.Fatal(err)
			}
			topic := brokers.Topic("edit_")
			r.AddConsumerHandler("orders", topic, b.Subscriber, func(m *message.Message) error {
				if !strings.Contains(string(m.Payload), `"currency":"EUR"`) {
					return poison.Permanent(fmt.Errorf("unknown currency in %s", m.Payload))
				}
				processed <- m
				return nil
			})
			go func() { _ = r.Run(ctx) }()
			<-r.Running()
			store := newStore(t)
			hcfg := cfg
			hcfg.Kafka.ConsumerGroup = "antidote-hospital"
			hb := brokers.Open(t, hcfg)
			go func() {
				_, _ = hospital.Ingest(ctx, hospital.IngestConfig{Subscriber: hb.LetterSubscriber(), Store: store, Topics: []string{topic + ".dlq"}, Broker: string(kind)})
			}()
			orig := message.NewMessage("order-1", []byte(`{"id":1,"currency":"EURO"}`))
			orig.Metadata.Set("tenant", "acme")
			if err := b.Publisher.Publish(topic, orig); err != nil {
				t.Fatal(err)
			}
			var ids []int64
			testenv.Eventually(t, 60*time.Second, "the letter ingested", func() bool {
				ids, _ = hospital.Select(ctx, store, hospital.LetterQuery{})
				return len(ids) == 1
			})
			tcfg := hospital.TreatConfig{Store: store, Publisher: b.Publisher, Actor: "alice"}
			if _, err := hospital.EditAndReplay(ctx, tcfg, ids[0], hospital.Edit{}); err == nil {
				t.Error("an edit changing nothing was accepted")
			}
			l, err := store.Letter(ctx, ids[0])
			if err != nil {
				t.Fatal(err)
			}
			md := map[string]string{}
			for k, v := range l.Metadata {
				md[k] = v
			}
			md["tenant"] = "acme-eu"
			newUUID, err := hospital.EditAndReplay(ctx, tcfg, ids[0], hospital.Edit{Payload: []byte(`{"id":1,"currency":"EUR"}`), Metadata: md})
			if err != nil {
				t.Fatal(err)
			}
			var got *message.Message
			select {
			case got = <-processed:
			case <-time.After(60 * time.Second):
				t.Fatal("the edited replay was never processed")
			}
			if got.UUID != newUUID || got.Metadata.Get(hospital.MetadataReplayOf) != "order-1" || got.Metadata.Get("tenant") != "acme-eu" ||
				got.Metadata.Get(poison.KeyReason) != "" {
				t.Errorf("processed %s %v, want %s replaying order-1 with tenant acme-eu and no envelope", got.UUID, got.Metadata, newUUID)
			}
			if left, _ := hospital.Select(ctx, store, hospital.LetterQuery{}); len(left) != 0 {
				t.Errorf("%d letters still dead", len(left))
			}
			audit, err := store.Audit(ctx, ids[0], 10)
			if err != nil || len(audit) != 1 {
				t.Fatalf("audit %+v %v", audit, err)
			}
			want := []string{"alice", `~ payload.currency: "EURO" -> "EUR"`, "~ metadata.tenant: acme -> acme-eu", newUUID}
			entry := audit[0].Actor + " " + audit[0].Detail
			for _, w := range want {
				if !strings.Contains(entry, w) {
					t.Errorf("audit %q lacks %q", entry, w)
				}
			}
		})
	}
}

func TestDiff(t *testing.T) {
	got := hospital.Diff([]byte(`{"a":1,"b":[1,2],"c":{"d":"x"}}`), map[string]string{"k": "v", "gone": "1"},
		[]byte(`{"a":1,"b":[1,3],"c":{"d":"y"},"e":null}`), map[string]string{"k": "w", "new": "2"})
	want := "~ payload.b[1]: 2 -> 3\n~ payload.c.d: \"x\" -> \"y\"\n+ payload.e: null\n- metadata.gone: 1\n~ metadata.k: v -> w\n+ metadata.new: 2"
	if got != want {
		t.Errorf("diff\n%s\nwant\n%s", got, want)
	}
	if d := hospital.Diff([]byte("abc"), nil, []byte("abcd"), nil); d != "~ payload: 3 bytes -> 4 bytes" {
		t.Errorf("binary diff %q", d)
	}
	if d := hospital.Diff([]byte(`{"a": 1}`), nil, []byte(`{"a":1}`), nil); d != "~ payload: 8 bytes -> 7 bytes" {
		t.Errorf("reformatted JSON %q", d)
	}
}
