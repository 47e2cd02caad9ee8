package hospital_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/claimcheck"
	"github.com/antidote-mq/antidote/hospital"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/internal/testenv/brokers"
	"github.com/antidote-mq/antidote/internal/testenv/hospitalstore"
	"github.com/antidote-mq/antidote/pgstore"
	"github.com/antidote-mq/antidote/poison"
)

func newStore(t *testing.T) *pgstore.HospitalStore {
	t.Helper()
	s, _, _ := hospitalstore.New(t, "hosp_")
	return s
}

// letters returns what a DLQ holds after an incident: Antidote envelopes
// of three bugs, letters of Watermill's own PoisonQueue, a foreign message,
// and an envelope with a malformed field.
func letters(topic string, n int) []*message.Message {
	var out []*message.Message
	for i := 0; i < n; i++ {
		m := message.NewMessage(watermill.NewUUID(), []byte(fmt.Sprintf(`{"order":%d}`, i)))
		m.Metadata.Set(poison.KeyOriginalTopic, topic)
		m.Metadata.Set(poison.KeyHandler, "orders")
		m.Metadata.Set(poison.KeyAttempts, "3")
		m.Metadata.Set(poison.KeyLastFailedAt, time.Date(2026, 11, 26, 10, 0, 0, i, time.UTC).Format(time.RFC3339Nano))
		switch i % 3 {
		case 0:
			m.Metadata.Set(poison.KeyReason, "permanent")
			m.Metadata.Set(poison.KeyError, fmt.Sprintf("order %d not found", i))
		case 1:
			m.Metadata.Set(poison.KeyReason, "retries_exhausted")
			m.Metadata.Set(poison.KeyError, fmt.Sprintf("dial tcp 10.0.0.%d:5432: connection refused", i%250))
		case 2:
			m.Metadata.Set(poison.KeyReason, "panic")
			m.Metadata.Set(poison.KeyError, "nil map")
			m.Metadata.Set(poison.KeyStack, fmt.Sprintf("goroutine %d [running]:\nshop.handle(0x%x)\n\t/app/shop.go:%d +0x1\n", i, i, 10+i%5))
		}
		out = append(out, m)
	}
	w := message.NewMessage(watermill.NewUUID(), []byte("w"))
	w.Metadata.Set("reason_poisoned", "cannot parse order")
	w.Metadata.Set("topic_poisoned", topic)
	w.Metadata.Set("handler_poisoned", "legacy")
	foreign := message.NewMessage(watermill.NewUUID(), []byte("\x00\xffnot ours"))
	bad := message.NewMessage(watermill.NewUUID(), []byte(`{"order":-1}`))
	bad.Metadata.Set(poison.KeyReason, "permanent")
	bad.Metadata.Set(poison.KeyAttempts, "-7")
	return append(out, w, foreign, bad)
}

// Every letter of a DLQ lands in the store once, grouped by bug, on each
// broker; a malformed letter is stored with its problem, not fatal; the
// ingested letters are acked (a second ingest gets only what came after).
func TestIngest(t *testing.T) {
	testenv.Integration(t)
	for _, kind := range brokers.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			cfg := brokers.Config(t, kind, brokers.KafkaCluster(2))
			b := brokers.Open(t, cfg)
			topic := brokers.Topic("ingest_")
			dlq := topic + ".dlq"
			const n = 60
			msgs := letters(topic, n)
			store := newStore(t)

			hcfg := cfg
			hcfg.Kafka.ConsumerGroup = "antidote-hospital"
			ingest := func(want int64) hospital.IngestStats {
				t.Helper()
				hb := brokers.Open(t, hcfg)
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				var stats hospital.IngestStats
				var ingestErr error
				done := make(chan struct{})
				var received atomic.Int64
				counting := countingStore{Store: store, n: &received}
				go func() {
					defer close(done)
					stats, ingestErr = hospital.Ingest(ctx, hospital.IngestConfig{
						Subscriber: hb.LetterSubscriber(), Store: counting, Topics: []string{dlq}, Broker: string(kind),
					})
				}()
				testenv.Eventually(t, 60*time.Second, fmt.Sprintf("%d letters put", want), func() bool { return received.Load() >= want })
				cancel()
				<-done
				if ingestErr != nil {
					t.Fatal(ingestErr)
				}
				_ = hb.Close() // commits the hospital group's offsets on Kafka
				return stats
			}

			if err := b.Publisher.Publish(dlq, msgs...); err != nil {
				t.Fatal(err)
			}
			stats := ingest(int64(len(msgs)))
			if stats.Stored != int64(len(msgs)) || stats.Duplicates != 0 || stats.Problems != 1 {
				t.Errorf("stats %+v, want %d stored, 0 duplicates, 1 problem (the malformed envelope)", stats, len(msgs))
			}
			ctx := context.Background()
			page, err := store.Groups(ctx, hospital.GroupQuery{Order: hospital.ByCount})
			if err != nil {
				t.Fatal(err)
			}
			var total int64
			byReason := map[string]int64{}
			for _, g := range page.Groups {
				total += g.Dead
				byReason[g.Fingerprint.Reason] += g.Dead
				if g.Fingerprint.Reason == "panic" && g.Fingerprint.Frame != "shop.handle" {
					t.Errorf("panic group frame %q, want shop.handle", g.Fingerprint.Frame)
				}
			}
			// 3 bugs (the n letters), the Watermill letter, the foreign one,
			// the malformed envelope: 6 groups.
			if total != int64(len(msgs)) || page.Total != 6 {
				t.Errorf("%d letters in %d groups (%v), want %d in 6", total, page.Total, byReason, len(msgs))
			}
			if byReason[hospital.ReasonWatermill] != 1 || byReason[hospital.ReasonUnknown] != 1 || byReason["permanent"] != n/3+1 {
				t.Errorf("by reason %v", byReason)
			}

			// What was ingested was acked: the next ingest sees only the
			// letter published after it.
			late := letters(topic, 1)[0]
			if err := b.Publisher.Publish(dlq, late); err != nil {
				t.Fatal(err)
			}
			// On Kafka the hospital group's last offsets may not be
			// committed yet when its subscriber closes: those letters come
			// again and are recognised as stored.
			stats = ingest(1)
			if stats.Stored != 1 || stats.Received-stats.Duplicates != 1 || kind != adapters.KindKafka && stats.Received != 1 {
				t.Errorf("second ingest %+v, want the one new letter", stats)
			}
			all, err := store.Letters(ctx, hospital.LetterQuery{Limit: 1000})
			if err != nil || len(all.Letters) != len(msgs)+1 {
				t.Errorf("%d letters stored (%v), want %d", len(all.Letters), err, len(msgs)+1)
			}
		})
	}
}

type countingStore struct {
	hospital.Store
	n *atomic.Int64
}

func (c countingStore) Put(ctx context.Context, l hospital.Letter) (bool, error) {
	ok, err := c.Store.Put(ctx, l)
	if err == nil {
		c.n.Add(1)
	}
	return ok, err
}

// With Idle, Ingest drains what is there and returns by itself.
func TestIngestDrains(t *testing.T) {
	pubsub := gochannel.NewGoChannel(gochannel.Config{Persistent: true}, watermill.NopLogger{})
	defer pubsub.Close()
	msgs := letters("orders", 30)
	if err := pubsub.Publish("orders.dlq", msgs...); err != nil {
		t.Fatal(err)
	}
	store := newStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	stats, err := hospital.Ingest(ctx, hospital.IngestConfig{Subscriber: pubsub, Store: store, Topics: []string{"orders.dlq"},
		Broker: "memory", Idle: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if ctx.Err() != nil {
		t.Fatal("Ingest did not return by itself")
	}
	if stats.Stored != int64(len(msgs)) {
		t.Errorf("stats %+v, want %d stored", stats, len(msgs))
	}
}

// A store that is down: the letter is nacked (it stays in the DLQ) and
// Ingest returns the error once MaxStoreWait is over; nothing is acked.
func TestIngestStoreDown(t *testing.T) {
	pubsub := gochannel.NewGoChannel(gochannel.Config{Persistent: true}, watermill.NopLogger{})
	defer pubsub.Close()
	if err := pubsub.Publish("orders.dlq", letters("orders", 1)...); err != nil {
		t.Fatal(err)
	}
	down := errors.New("connection refused")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	stats, err := hospital.Ingest(ctx, hospital.IngestConfig{Subscriber: pubsub, Store: failingStore{down}, Topics: []string{"orders.dlq"},
		Broker: "memory", MaxStoreWait: 300 * time.Millisecond})
	if !errors.Is(err, down) || !strings.Contains(err.Error(), "stays in the DLQ") {
		t.Errorf("error %v, want the store's, saying the letter stays", err)
	}
	// Nacked, the letter may come again to another worker before Ingest
	// stops: received at least once, stored never.
	if stats.Stored != 0 || stats.Received < 1 {
		t.Errorf("stats %+v", stats)
	}
}

type failingStore struct{ err error }

func (f failingStore) Put(context.Context, hospital.Letter) (bool, error) { return false, f.err }
func (f failingStore) Letter(context.Context, int64) (hospital.Letter, error) {
	return hospital.Letter{}, f.err
}
func (f failingStore) Letters(context.Context, hospital.LetterQuery) (hospital.LetterPage, error) {
	return hospital.LetterPage{}, f.err
}
func (f failingStore) Groups(context.Context, hospital.GroupQuery) (hospital.GroupPage, error) {
	return hospital.GroupPage{}, f.err
}
func (f failingStore) Audit(context.Context, int64, int) ([]hospital.AuditEntry, error) {
	return nil, f.err
}
func (f failingStore) ClaimCanary(context.Context, string, string) (bool, error)  { return false, f.err }
func (f failingStore) FinishCanary(context.Context, string, string, string) error { return f.err }
func (f failingStore) LatestVersion(context.Context, string) (string, error)      { return "", f.err }
func (f failingStore) Treat(context.Context, int64, hospital.State, string, string, func(hospital.Letter) error) error {
	return f.err
}

func TestIngestConfigValidates(t *testing.T) {
	_, err := hospital.Ingest(context.Background(), hospital.IngestConfig{Idle: -1})
	testenv.RequireFieldsInOrder(t, err, "Subscriber", "Store", "Topics", "Broker", "Idle")
}

// A letter too large for its DLQ travels as a claim check: ingest with the
// claim-check store resolves it, so the store holds the whole payload and
// metadata; without the store the letter is kept as it is, its problem
// noted.
func TestIngestResolvesClaimChecks(t *testing.T) {
	pubsub := gochannel.NewGoChannel(gochannel.Config{Persistent: true}, watermill.NopLogger{})
	defer pubsub.Close()
	cc := claimcheck.NewMemoryStore()
	big := letters("orders", 1)[0]
	big.Payload = []byte(`{"blob":"` + strings.Repeat("x", 2<<20) + `"}`)
	tenant := "acme-" + strings.Repeat("t", 8<<10) // too large to stay in the claimed letter
	big.Metadata.Set("tenant", tenant)
	key, data, claimed, err := poison.ClaimLetter(big)
	if err != nil {
		t.Fatal(err)
	}
	if err := cc.Put(context.Background(), key, data); err != nil {
		t.Fatal(err)
	}
	if len(claimed.Payload) != 0 || claimed.Metadata.Get("tenant") != "" {
		t.Fatalf("the claimed letter still carries its payload (%d bytes) or metadata", len(claimed.Payload))
	}
	for _, withStore := range []bool{true, false} {
		store := newStore(t)
		if err := pubsub.Publish("orders.dlq", claimed.Copy()); err != nil {
			t.Fatal(err)
		}
		cfg := hospital.IngestConfig{Subscriber: pubsub, Store: store, Topics: []string{"orders.dlq"}, Broker: "memory", Idle: 200 * time.Millisecond}
		if withStore {
			cfg.ClaimCheck = cc
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		stats, err := hospital.Ingest(ctx, cfg)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		page, err := store.Letters(context.Background(), hospital.LetterQuery{})
		if err != nil || len(page.Letters) < 1 {
			t.Fatalf("stored %d (%v)", len(page.Letters), err)
		}
		l, err := store.Letter(context.Background(), page.Letters[len(page.Letters)-1].ID)
		if err != nil {
			t.Fatal(err)
		}
		if withStore {
			if string(l.Payload) != string(big.Payload) || l.Metadata["tenant"] != tenant || l.Problem != "" {
				t.Errorf("resolved letter: %d bytes, tenant of %d bytes, problem %q; want %d bytes, the tenant, none", len(l.Payload), len(l.Metadata["tenant"]), l.Problem, len(big.Payload))
			}
		} else if len(l.Payload) != 0 || !strings.Contains(l.Problem, "claim check") || stats.Problems == 0 {
			t.Errorf("unresolved letter: %d bytes, problem %q, stats %+v", len(l.Payload), l.Problem, stats)
		}
	}
}
