package web_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/claimcheck"
	"github.com/antidote-mq/antidote/fingerprint"
	"github.com/antidote-mq/antidote/hospital"
	"github.com/antidote-mq/antidote/hospital/web"
	"github.com/antidote-mq/antidote/poison"
)

// storeClaimed stores msg as ingest without a claim-check store does:
// payload empty, the claim named, the problem noted. It returns its id.
func storeClaimed(t *testing.T, s hospital.Store, msg *message.Message) int64 {
	t.Helper()
	ctx := context.Background()
	l := hospital.FromMessage(ctx, msg, "postgres", "payments.dlq", nil, fingerprint.Options{})
	if l.Problem == "" || len(l.Payload) != 0 {
		t.Fatalf("letter %s stored whole or without its problem: %q", msg.UUID, l.Problem)
	}
	if _, err := s.Put(ctx, l); err != nil {
		t.Fatal(err)
	}
	page, err := s.Letters(ctx, hospital.LetterQuery{Newest: true, Limit: 1})
	if err != nil || len(page.Letters) != 1 || page.Letters[0].UUID != msg.UUID {
		t.Fatalf("stored %v (%v)", page.Letters, err)
	}
	return page.Letters[0].ID
}

// A letter ingested before the claim-check store was configured is shown
// whole (page, API, edit form) once Config.ClaimCheck is set; a claim
// gone, or made for another letter (a reference a forger copied into a
// letter of their own, or into a copy of the victim's under another UUID),
// is shown as such on a page that has the rest of the letter, never with
// the other letter's payload; without the store the claim is named.
func TestLetterWithClaimCheckIsShownWhole(t *testing.T) {
	store, _, _ := newStore(t)
	cc := claimcheck.NewMemoryStore()
	ctx := context.Background()
	secret := `{"card":"4111-1111-1111-1111","blob":"` + strings.Repeat("x", 100_000) + `"}`
	orig := message.NewMessage("victim-"+itoa(time.Now().UnixNano()), []byte(secret))
	orig.Metadata.Set("tenant", strings.Repeat("t", 3000))
	letter := poison.Envelope(orig, poison.Origin{Topic: "payments", Handler: "charge"},
		poison.Failure{Reason: poison.ReasonPermanent, Attempts: 1, LastFailedAt: time.Now()})
	key, data, claimed, err := poison.ClaimLetter(letter)
	if err != nil {
		t.Fatal(err)
	}
	if err := cc.Put(ctx, key, data); err != nil {
		t.Fatal(err)
	}
	victim := storeClaimed(t, store, claimed)

	own := message.NewMessage("forger-"+itoa(time.Now().UnixNano()), nil)
	own.Metadata.Set(poison.KeyOriginalTopic, "payments")
	own.Metadata.Set(poison.KeyHandler, "charge")
	own.Metadata.Set(poison.KeyReason, string(poison.ReasonPermanent))
	own.Metadata.Set(poison.KeyLastFailedAt, time.Now().UTC().Format(time.RFC3339Nano))
	own.Metadata.Set(poison.KeyClaimCheck, key)
	forgedOwn := storeClaimed(t, store, own)
	copied := claimed.Copy()
	copied.UUID = "copy-" + itoa(time.Now().UnixNano())
	forgedCopy := storeClaimed(t, store, copied)

	// A claim gone: claimed, stored, then deleted from the claim check.
	goneLetter := poison.Envelope(message.NewMessage("gone-"+itoa(time.Now().UnixNano()), []byte("lost")), poison.Origin{Topic: "payments", Handler: "charge"},
		poison.Failure{Reason: poison.ReasonPermanent, Attempts: 1, LastFailedAt: time.Now()})
	_, _, goneClaimed, err := poison.ClaimLetter(goneLetter)
	if err != nil {
		t.Fatal(err)
	}
	gone := storeClaimed(t, store, goneClaimed)

	c := client(t)
	auth := []string{"Authorization", "Bearer " + token}
	api := func(srv string, id int64) web.APILetter {
		t.Helper()
		r := do(t, c, "GET", srv+"/api/letters/"+itoa(id), nil, auth...)
		if r.status != http.StatusOK {
			t.Fatalf("GET /api/letters/%d: %d %s", id, r.status, r.body)
		}
		var out web.APILetter
		if err := json.Unmarshal([]byte(r.body), &out); err != nil {
			t.Fatal(err)
		}
		return out
	}
	page := func(srv, path string, want int) string {
		t.Helper()
		r := do(t, c, "GET", srv+path, nil, auth...)
		if r.status != want {
			t.Fatalf("GET %s: %d, want %d\n%s", path, r.status, want, r.body)
		}
		return r.body
	}

	srv := serve(t, web.Config{Store: store, Token: token, ClaimCheck: cc, Publisher: newRecorder(t)}).URL
	got := api(srv, victim)
	if !bytes.Equal(got.Payload, []byte(secret)) || got.Metadata["tenant"] != orig.Metadata.Get("tenant") ||
		got.ClaimCheck == nil || !got.ClaimCheck.Resolved || got.ClaimCheck.Key != key {
		t.Fatalf("the victim's letter: %d bytes, tenant %d bytes, claim %+v", len(got.Payload), len(got.Metadata["tenant"]), got.ClaimCheck)
	}
	if body := page(srv, "/letters/"+itoa(victim), http.StatusOK); !strings.Contains(body, "4111-1111-1111-1111") || !strings.Contains(body, "read from the claim-check store") {
		t.Errorf("the victim's letter page does not show its payload whole")
	}
	if body := page(srv, "/letters/"+itoa(victim)+"/edit", http.StatusOK); !strings.Contains(body, "4111-1111-1111-1111") {
		t.Errorf("the victim's edit form does not hold its payload")
	}

	for _, id := range []int64{forgedOwn, forgedCopy} {
		got := api(srv, id)
		if len(got.Payload) != 0 || got.ClaimCheck == nil || got.ClaimCheck.Resolved || !got.ClaimCheck.Mismatch ||
			!strings.Contains(got.ClaimCheck.Problem, "made for another letter ("+orig.UUID+")") || !strings.Contains(got.ClaimCheck.Problem, got.UUID) {
			t.Errorf("forged letter %d (%s): %d bytes, claim %+v; want nothing, the mismatch named", id, got.UUID, len(got.Payload), got.ClaimCheck)
		}
		body := page(srv, "/letters/"+itoa(id), http.StatusOK)
		if strings.Contains(body, "4111") || !strings.Contains(body, "made for another letter") || !strings.Contains(body, got.UUID) {
			t.Errorf("forged letter %d's page shows the victim's payload or hides the mismatch", id)
		}
		if body := page(srv, "/letters/"+itoa(id)+"/edit", http.StatusConflict); strings.Contains(body, "4111") {
			t.Errorf("forged letter %d's edit form holds the victim's payload", id)
		}
	}

	got = api(srv, gone)
	if len(got.Payload) != 0 || got.ClaimCheck == nil || got.ClaimCheck.Resolved || got.ClaimCheck.Mismatch ||
		!strings.Contains(got.ClaimCheck.Problem, "not found") {
		t.Errorf("a claim gone: %d bytes, claim %+v", len(got.Payload), got.ClaimCheck)
	}
	if body := page(srv, "/letters/"+itoa(gone), http.StatusOK); !strings.Contains(body, "not found") || !strings.Contains(body, got.UUID) {
		t.Errorf("a claim gone: the page does not say so")
	}

	blind := serve(t, web.Config{Store: store, Token: token}).URL
	got = api(blind, victim)
	if len(got.Payload) != 0 || got.ClaimCheck == nil || got.ClaimCheck.Resolved || !strings.Contains(got.ClaimCheck.Problem, "no claim-check store") {
		t.Errorf("without a claim-check store: %d bytes, claim %+v", len(got.Payload), got.ClaimCheck)
	}
}
