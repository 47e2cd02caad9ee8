package hospital_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/antidote-mq/antidote/claimcheck"
	"github.com/antidote-mq/antidote/fingerprint"
	"github.com/antidote-mq/antidote/hospital"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/internal/testenv/brokers"
	"github.com/antidote-mq/antidote/poison"
)

// A replay and a purge of the same letters at once, on each broker: every
// letter ends replayed or purged, never both, never neither; exactly the
// replayed ones reach the topic, each once, as replays; every treatment is
// in the audit.
func TestReplayRacingPurge(t *testing.T) {
	testenv.Integration(t)
	for _, kind := range brokers.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			cfg := brokers.Config(t, kind, brokers.KafkaCluster(2))
			b := brokers.Open(t, cfg)
			topic := brokers.Topic("race_")
			store := newStore(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			received, err := b.Subscriber.Subscribe(ctx, topic)
			if err != nil {
				t.Fatal(err)
			}
			const n = 200
			for _, m := range letters(topic, n)[:n] {
				l := hospital.FromMessage(ctx, m, string(kind), topic+".dlq", nil, fingerprint.Options{})
				if _, err := store.Put(ctx, l); err != nil {
					t.Fatal(err)
				}
			}
			ids, err := hospital.Select(ctx, store, hospital.LetterQuery{})
			if err != nil || len(ids) != n {
				t.Fatalf("selected %d (%v), want %d", len(ids), err, n)
			}
			var replay, purge hospital.Result
			var wg sync.WaitGroup
			wg.Go(func() {
				var err error
				replay, err = hospital.Replay(ctx, hospital.TreatConfig{Store: store, Publisher: b.Publisher, Actor: "alice", Rate: 10000}, ids)
				if err != nil {
					t.Error(err)
				}
			})
			wg.Go(func() {
				// From the other end, so the two meet in the middle.
				rev := make([]int64, len(ids))
				for i, id := range ids {
					rev[len(ids)-1-i] = id
				}
				var err error
				purge, err = hospital.Purge(ctx, hospital.TreatConfig{Store: store, Actor: "bob"}, rev)
				if err != nil {
					t.Error(err)
				}
			})
			wg.Wait()
			if len(replay.Failed)+len(purge.Failed) > 0 {
				t.Fatalf("failures: %v %v", replay.Err(), purge.Err())
			}
			if replay.Treated+purge.Treated != n || replay.Skipped != purge.Treated || purge.Skipped != replay.Treated {
				t.Errorf("replayed %+v, purged %+v: want %d treated once each", replay, purge, n)
			}
			for _, st := range []hospital.State{hospital.StateReplayed, hospital.StatePurged, hospital.StateDead} {
				want := map[hospital.State]int{hospital.StateReplayed: replay.Treated, hospital.StatePurged: purge.Treated}[st]
				got, err := hospital.Select(ctx, stateStore{store, st}, hospital.LetterQuery{})
				if err != nil || len(got) != want {
					t.Errorf("%d letters %s (%v), want %d", len(got), st, err, want)
				}
			}
			audit, err := store.Audit(ctx, 0, 1000)
			if err != nil {
				t.Fatal(err)
			}
			byActor := map[string]int{}
			letterSeen := map[int64]bool{}
			for _, e := range audit {
				byActor[e.Actor+" "+e.Action]++
				if letterSeen[e.LetterID] {
					t.Errorf("letter %d treated twice in the audit", e.LetterID)
				}
				letterSeen[e.LetterID] = true
			}
			if byActor["alice replayed"] != replay.Treated || byActor["bob purged"] != purge.Treated || len(audit) != n {
				t.Errorf("audit %v (%d entries), want alice replayed %d, bob purged %d", byActor, len(audit), replay.Treated, purge.Treated)
			}
			groups, err := store.Groups(ctx, hospital.GroupQuery{WithResolved: true})
			if err != nil {
				t.Fatal(err)
			}
			for _, g := range groups.Groups {
				if g.Dead != 0 {
					t.Errorf("group %s still counts %d dead", g.Fingerprint.ID, g.Dead)
				}
			}

			seen := map[string]int{}
			testenv.Eventually(t, 60*time.Second, "every replay received", func() bool {
				for {
					select {
					case m := <-received:
						seen[m.UUID]++
						if m.Metadata.Get(poison.KeyReplayCount) != "1" || m.Metadata.Get(poison.KeyReason) != "" {
							t.Errorf("replay %s carries replay_count %q, reason %q", m.UUID, m.Metadata.Get(poison.KeyReplayCount), m.Metadata.Get(poison.KeyReason))
						}
						m.Ack()
					default:
						return len(seen) >= replay.Treated
					}
				}
			})
			for uuid, c := range seen {
				if c != 1 {
					t.Errorf("%s received %d times", uuid, c)
				}
			}
			if len(seen) != replay.Treated {
				t.Errorf("%d replays received, %d letters replayed", len(seen), replay.Treated)
			}
			t.Logf("replayed %d, purged %d", replay.Treated, purge.Treated)
		})
	}
}

// stateStore lists the letters of one state (Select asks for dead ones).
type stateStore struct {
	hospital.Store
	state hospital.State
}

func (s stateStore) Letters(ctx context.Context, q hospital.LetterQuery) (hospital.LetterPage, error) {
	q.State = s.state
	return s.Store.Letters(ctx, q)
}

// A letter that cannot be replayed is reported and stays dead; the others
// are replayed.
func TestReplaySkipsBadLetters(t *testing.T) {
	store := newStore(t)
	ctx := context.Background()
	pubsub := gochannel.NewGoChannel(gochannel.Config{Persistent: true}, watermill.NopLogger{})
	defer pubsub.Close()
	msgs := letters("orders", 3)
	noTopic := message.NewMessage(watermill.NewUUID(), []byte("x"))
	noTopic.Metadata.Set(poison.KeyReason, "permanent")
	claimed := msgs[1].Copy()
	claimed.UUID = watermill.NewUUID()
	claimed.Metadata.Set(poison.KeyClaimCheck, "k1")
	for _, m := range append(msgs[:3], noTopic, claimed) {
		if _, err := store.Put(ctx, hospital.FromMessage(ctx, m, "memory", "orders.dlq", nil, fingerprint.Options{})); err != nil {
			t.Fatal(err)
		}
	}
	ids, err := hospital.Select(ctx, store, hospital.LetterQuery{})
	if err != nil {
		t.Fatal(err)
	}
	res, err := hospital.Replay(ctx, hospital.TreatConfig{Store: store, Publisher: pubsub}, ids)
	if err != nil {
		t.Fatal(err)
	}
	if res.Treated != 3 || len(res.Failed) != 2 {
		t.Fatalf("result %+v, want 3 replayed and 2 failed", res)
	}
	left, _ := hospital.Select(ctx, store, hospital.LetterQuery{})
	if len(left) != 2 {
		t.Errorf("%d letters left dead, want the 2 that failed", len(left))
	}
	t.Logf("reported: %v", res.Err())
}

// A letter stored while its payload was still in a claim (ingested without
// the claim-check store) is replayed whole once the treatment has the
// store; one whose claim is gone, or was made for another letter, stays
// dead with the reason, and the letters behind it are replayed.
func TestReplayReadsClaimsBack(t *testing.T) {
	ctx := context.Background()
	store := newStore(t)
	cc := claimcheck.NewMemoryStore()
	pub := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 16, Persistent: true}, watermill.NopLogger{})
	defer pub.Close()
	claimed := func(kind string) *message.Message {
		orig := message.NewMessage(watermill.NewUUID(), []byte("the whole payload of "+kind))
		orig.Metadata.Set(poison.KeyOriginalTopic, "orders")
		orig.Metadata.Set(poison.KeyReason, "permanent")
		orig.Metadata.Set("tenant", kind)
		key, data, letter, err := poison.ClaimLetter(orig)
		if err != nil {
			t.Fatal(err)
		}
		switch kind {
		case "gone":
		case "forged":
			// Another letter's reference: the claim was made for someone else.
			other := message.NewMessage(watermill.NewUUID(), nil)
			for k, v := range letter.Metadata {
				other.Metadata.Set(k, v)
			}
			if err := cc.Put(ctx, key, data); err != nil {
				t.Fatal(err)
			}
			letter = other
		default:
			if err := cc.Put(ctx, key, data); err != nil {
				t.Fatal(err)
			}
		}
		return letter
	}
	for _, kind := range []string{"gone", "whole-1", "forged", "whole-2"} {
		l := hospital.FromMessage(ctx, claimed(kind), "kafka", "orders.dlq", nil, fingerprint.Options{})
		if _, err := store.Put(ctx, l); err != nil {
			t.Fatal(err)
		}
	}
	out, err := pub.Subscribe(ctx, "orders")
	if err != nil {
		t.Fatal(err)
	}
	ids, err := hospital.Select(ctx, store, hospital.LetterQuery{DLQTopic: "orders.dlq"})
	if err != nil || len(ids) != 4 {
		t.Fatalf("%d letters (%v)", len(ids), err)
	}
	blind, err := hospital.Replay(ctx, hospital.TreatConfig{Store: store, Publisher: pub}, ids)
	if err != nil || blind.Treated != 0 || len(blind.Failed) != 4 {
		t.Fatalf("without the claim-check store: %+v %v; want all 4 left dead", blind, err)
	}
	res, err := hospital.Replay(ctx, hospital.TreatConfig{Store: store, Publisher: pub, ClaimCheck: cc}, ids)
	if err != nil {
		t.Fatal(err)
	}
	if res.Treated != 2 || len(res.Failed) != 2 {
		t.Fatalf("%+v: want the 2 whole letters replayed, the gone and the forged one left dead", res)
	}
	for i, f := range res.Failed {
		want := []string{"not found", "another letter"}[i]
		if f.ID != ids[[]int{0, 2}[i]] || !strings.Contains(f.Err.Error(), want) {
			t.Errorf("failure %d: letter %d: %v; want letter %d and %q", i, f.ID, f.Err, ids[[]int{0, 2}[i]], want)
		}
	}
	for range 2 {
		select {
		case m := <-out:
			m.Ack()
			tenant := m.Metadata.Get("tenant")
			if !strings.HasPrefix(tenant, "whole-") || string(m.Payload) != "the whole payload of "+tenant || m.Metadata.Get(poison.KeyClaimCheck) != "" {
				t.Errorf("replayed %q, tenant %q, claim %q", m.Payload, tenant, m.Metadata.Get(poison.KeyClaimCheck))
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a replay did not arrive")
		}
	}
}
