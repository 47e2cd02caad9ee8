package poison_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/claimcheck"
	"github.com/antidote-mq/antidote/poison"
)

// victimLetter is a letter DeadLetter would claim-check: a large payload,
// a large metadata entry (it goes into the claim) and a small one (it
// stays in the letter).
func victimLetter(uuid string, failed time.Time, attempts int) *message.Message {
	orig := message.NewMessage(uuid, bytes.Repeat([]byte("card 4111-1111-1111-1111 "), 4000))
	orig.Metadata.Set("tenant", strings.Repeat("t", 2000))
	orig.Metadata.Set("partition_key", "k")
	return poison.Envelope(orig, poison.Origin{Topic: "payments", Handler: "charge", ConsumerGroup: "billing"},
		poison.Failure{Reason: poison.ReasonPermanent, Err: errors.New("card declined"), Attempts: attempts, FirstFailedAt: failed, LastFailedAt: failed})
}

// claimed claim-checks letter into cc and returns the letter that refers
// to the claim.
func claimed(t *testing.T, cc poison.ClaimCheck, letter *message.Message) *message.Message {
	t.Helper()
	key, data, c, err := poison.ClaimLetter(letter)
	if err != nil {
		t.Fatal(err)
	}
	if err := cc.Put(context.Background(), key, data); err != nil {
		t.Fatal(err)
	}
	return c
}

// forge is a letter as someone writing straight to the DLQ makes it: the
// metadata of from (with set applied), another UUID if uuid is not "".
func forge(from *message.Message, uuid string, set ...string) *message.Message {
	if uuid == "" {
		uuid = from.UUID
	}
	m := message.NewMessage(uuid, nil)
	for k, v := range from.Metadata {
		m.Metadata.Set(k, v)
	}
	for i := 0; i+1 < len(set); i += 2 {
		m.Metadata.Set(set[i], set[i+1])
	}
	return m
}

// A claim reference copied into another letter resolves to nothing, with
// an error naming the letter, the key and the mismatch: a letter of its
// own (own UUID, own envelope), a copy of the victim's letter under
// another UUID, the victim's UUID with another bound field. Only a copy
// of the UUID and every bound field (the same message's letter, by all a
// letter can say) reads the claim, and then the claim's metadata, not the
// forger's, is what comes back.
func TestClaimIsBoundToItsLetter(t *testing.T) {
	ctx := context.Background()
	cc := claimcheck.NewMemoryStore()
	victim := victimLetter("victim-1", time.Now().UTC(), 3)
	ref := claimed(t, cc, victim)
	key := ref.Metadata.Get(poison.KeyClaimCheck)

	whole, err := poison.ResolveClaim(ctx, cc, ref)
	if err != nil || !bytes.Equal(whole.Payload, victim.Payload) || whole.Metadata.Get("tenant") != victim.Metadata.Get("tenant") {
		t.Fatalf("the victim's own letter: %v", err)
	}

	own := message.NewMessage("forger-1", nil)
	own.Metadata.Set(poison.KeyOriginalTopic, "coupons")
	own.Metadata.Set(poison.KeyHandler, "redeem")
	own.Metadata.Set(poison.KeyReason, string(poison.ReasonPermanent))
	own.Metadata.Set(poison.KeyClaimCheck, key)
	for _, tc := range []struct {
		name, want string
		letter     *message.Message
	}{
		{"a letter of its own with the victim's key", "made for another letter (victim-1)", own},
		{"the victim's letter copied under another UUID", "made for another letter (victim-1)", forge(ref, "forger-2")},
		{"the victim's UUID, another handler", `antidote.handler was "charge", this letter's is "refund"`, forge(ref, "", poison.KeyHandler, "refund")},
		{"the victim's UUID, another original topic", "antidote.original_topic", forge(ref, "", poison.KeyOriginalTopic, "coupons")},
		{"the victim's UUID, another reason", "antidote.reason", forge(ref, "", poison.KeyReason, string(poison.ReasonPanic))},
		{"the victim's UUID, no consumer group", "antidote.consumer_group", forge(ref, "", poison.KeyConsumerGroup, "")},
	} {
		got, err := poison.ResolveClaim(ctx, cc, tc.letter)
		if got != nil || !errors.Is(err, poison.ErrClaimMismatch) {
			t.Errorf("%s: %s, %v; want nothing and ErrClaimMismatch", tc.name, size(got), err)
			continue
		}
		for _, s := range []string{tc.letter.UUID, key, tc.want} {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("%s: %q does not name %q", tc.name, err, s)
			}
		}
	}

	replica := forge(ref, "", poison.KeyError, "forged", "tenant", "forger's")
	whole, err = poison.ResolveClaim(ctx, cc, replica)
	if err != nil || !bytes.Equal(whole.Payload, victim.Payload) || whole.Metadata.Get("tenant") != victim.Metadata.Get("tenant") {
		t.Fatalf("a copy of the UUID and every bound field: %v; want the claim read, its own tenant", err)
	}
}

// A message redelivered after its letter's publish failed is dead-lettered
// again with new failure times and attempts: its claim is the same (same
// key and bytes), so Put stores nothing new.
func TestClaimOfARedeliveredMessageIsTheSame(t *testing.T) {
	first := victimLetter("m-1", time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), 3)
	again := victimLetter("m-1", time.Date(2026, 1, 2, 3, 9, 0, 0, time.UTC), 5)
	k1, d1, _, err := poison.ClaimLetter(poison.ShrinkEnvelope(first))
	if err != nil {
		t.Fatal(err)
	}
	k2, d2, c2, err := poison.ClaimLetter(poison.ShrinkEnvelope(again))
	if err != nil {
		t.Fatal(err)
	}
	if k1 != k2 || !bytes.Equal(d1, d2) {
		t.Fatalf("a redelivered message's claim differs: %s vs %s", k1, k2)
	}
	cc := claimcheck.NewMemoryStore()
	for _, d := range [][]byte{d1, d2} {
		if err := cc.Put(context.Background(), k1, d); err != nil {
			t.Fatal(err)
		}
	}
	if cc.Len() != 1 {
		t.Fatalf("%d claims stored, want 1", cc.Len())
	}
	// Both letters read it: the first one's (in case both were published).
	if _, err := poison.Unclaim(c2, d1); err != nil {
		t.Fatal(err)
	}
	other := victimLetter("m-2", time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), 3)
	if k3, _, _, _ := poison.ClaimLetter(other); k3 == k1 {
		t.Fatal("two messages with the same payload share a claim key")
	}
}

// The binding compares values as brokers and the hospital store deliver
// them (invalid UTF-8 as U+FFFD, NUL as U+FFFD), so a genuine letter read
// back keeps its claim.
func TestClaimSurvivesTheMetadataRule(t *testing.T) {
	letter := victimLetter("u-\xff-1", time.Now(), 1)
	letter.Metadata.Set(poison.KeyHandler, "h\xfe\xfdandler\x00x")
	key, data, c, err := poison.ClaimLetter(letter)
	if err != nil {
		t.Fatal(err)
	}
	read := forge(c, strings.ToValidUTF8(c.UUID, "\uFFFD"), poison.KeyHandler, "h\uFFFDandler\uFFFDx")
	whole, err := poison.Unclaim(read, data)
	if err != nil || !bytes.Equal(whole.Payload, letter.Payload) {
		t.Fatalf("letter %s (claim %s) as a broker and the store give it back: %v", read.UUID, key, err)
	}
}

// A claim written before claims were bound (no letter named in it) is
// refused, not trusted; so is data that is not what its key names.
func TestUnboundOrMisplacedClaimIsRefused(t *testing.T) {
	letter := victimLetter("old-1", time.Now(), 1)
	_, _, c, err := poison.ClaimLetter(letter)
	if err != nil {
		t.Fatal(err)
	}
	legacy, _ := json.Marshal(map[string]any{"payload": letter.Payload, "metadata": map[string]string{"tenant": "t"}})
	sum := sha256.Sum256(legacy)
	old := forge(c, "", poison.KeyClaimCheck, "sha256:"+hex.EncodeToString(sum[:]))
	if got, err := poison.Unclaim(old, legacy); got != nil || !errors.Is(err, poison.ErrClaimMismatch) || !strings.Contains(err.Error(), "names no letter") {
		t.Errorf("an unbound claim: %s, %v", size(got), err)
	}
	_, otherData, _, _ := poison.ClaimLetter(victimLetter("other-1", time.Now(), 1))
	if got, err := poison.Unclaim(c, otherData); got != nil || !errors.Is(err, poison.ErrClaimMismatch) || !strings.Contains(err.Error(), "another claim") {
		t.Errorf("another letter's claim under this key: %s, %v", size(got), err)
	}
	cc := claimcheck.NewMemoryStore()
	if got, err := poison.ResolveClaim(context.Background(), cc, c); got != nil || !errors.Is(err, poison.ErrClaimNotFound) {
		t.Errorf("a claim gone: %s, %v", size(got), err)
	}
}

// size describes a resolved letter in a failure without printing it.
func size(m *message.Message) string {
	if m == nil {
		return "nothing"
	}
	return fmt.Sprintf("letter %s of %d bytes", m.UUID, len(m.Payload))
}
