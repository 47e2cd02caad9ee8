package dlq_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/claimcheck"
	"github.com/antidote-mq/antidote/dlq"
	"github.com/antidote-mq/antidote/hospital"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/internal/testenv/brokers"
	"github.com/antidote-mq/antidote/poison"
)

// A letter whose payload went to the claim check: with the store, Show
// returns it whole and Replay sends the original payload and metadata back;
// without it, Show says where the payload is and Replay refuses (an empty
// payload replayed would lose the message). On each broker.
func TestHospitalReadsClaimChecks(t *testing.T) {
	testenv.Integration(t)
	for _, kind := range brokers.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			ctx := context.Background()
			cfg := brokerConfig(t, kind)
			b := brokers.Open(t, cfg)
			topic := brokers.Topic("claims_")
			orig := message.NewMessage(watermill.NewUUID(), bytes.Repeat([]byte("payload "), 20_000))
			orig.Metadata.Set("tenant", strings.Repeat("t", 2000)) // too big to stay in the letter
			orig.Metadata.Set("partition_key", "k")
			letter := poison.Envelope(orig, poison.Origin{Topic: topic, Handler: "h"}, poison.Failure{Reason: poison.ReasonPermanent, Attempts: 1, LastFailedAt: time.Now()})
			key, data, claimed, err := poison.ClaimLetter(letter)
			if err != nil {
				t.Fatal(err)
			}
			cc := claimcheck.NewMemoryStore()
			if err := cc.Put(ctx, key, data); err != nil {
				t.Fatal(err)
			}
			if err := b.Publisher.Publish(antidote.DLQTopic(topic), claimed); err != nil {
				t.Fatal(err)
			}

			blind, err := dlq.Open(ctx, dlq.Config{Adapters: b.Config})
			if err != nil {
				t.Fatal(err)
			}
			l, err := blind.Show(ctx, topic, orig.UUID)
			if err != nil {
				t.Fatal(err)
			}
			if len(l.Payload) != 0 || !strings.Contains(l.Problem, key) {
				t.Fatalf("without the store: %d bytes, problem %q; want the claim named", len(l.Payload), l.Problem)
			}
			if res, err := blind.Replay(ctx, topic, hospital.LetterQuery{}, dlq.ReplayOptions{}); err != nil || res.Replayed != 0 || len(res.Failed) != 1 ||
				!strings.Contains(res.Failed[0].Reason, key) || !errors.Is(res.Err(), dlq.ErrSomeFailed) {
				t.Fatalf("replay without the store: %+v, %v; want the letter left dead with the claim named", res, err)
			}
			_ = blind.Close()

			h, err := dlq.Open(ctx, dlq.Config{Adapters: b.Config, ClaimCheck: cc})
			if err != nil {
				t.Fatal(err)
			}
			defer h.Close()
			l, err = h.Show(ctx, topic, orig.UUID)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(l.Payload, orig.Payload) || l.Metadata["tenant"] != orig.Metadata.Get("tenant") || l.Reason != string(poison.ReasonPermanent) {
				t.Fatalf("with the store: %d bytes, tenant %d bytes, reason %q", len(l.Payload), len(l.Metadata["tenant"]), l.Reason)
			}
			sub := b.Subscriber
			if kind == adapters.KindKafka {
				rcfg := b.Config
				rcfg.Kafka.ConsumerGroup = "claims-reader"
				r, err := adapters.Open(ctx, rcfg, nil)
				if err != nil {
					t.Fatal(err)
				}
				defer r.Close()
				sub = r.Subscriber
			}
			sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			ch, err := sub.Subscribe(sctx, topic)
			if err != nil {
				t.Fatal(err)
			}
			res, err := h.Replay(ctx, topic, hospital.LetterQuery{}, dlq.ReplayOptions{})
			if err != nil || res.Replayed != 1 {
				t.Fatalf("replay: %+v, %v", res, err)
			}
			select {
			case m := <-ch:
				m.Ack()
				if m.UUID != orig.UUID || !bytes.Equal(m.Payload, orig.Payload) || m.Metadata.Get("tenant") != orig.Metadata.Get("tenant") ||
					m.Metadata.Get(poison.KeyClaimCheck) != "" {
					t.Fatalf("replayed %s: %d bytes, tenant %d bytes, claim %q", m.UUID, len(m.Payload), len(m.Metadata.Get("tenant")), m.Metadata.Get(poison.KeyClaimCheck))
				}
			case <-sctx.Done():
				t.Fatal("the replay did not arrive")
			}
		})
	}
}
