package web_test

import (
	"context"
	"encoding/json"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/fingerprint"
	"github.com/antidote-mq/antidote/hospital"
	"github.com/antidote-mq/antidote/hospital/web"
	"github.com/antidote-mq/antidote/poison"
)

// A canary replay through its confirmation: when the canaries do not come
// back the rest follows; when one does, the rest stays dead and the page
// says which letter failed again and why.
func TestCanaryReplay(t *testing.T) {
	for _, fixed := range []bool{true, false} {
		t.Run(map[bool]string{true: "fixed", false: "unfixed"}[fixed], func(t *testing.T) {
			store, _, _ := newStore(t)
			orders := put(t, store, ordersBug)
			fp := orders[0].Fingerprint.ID
			pub := newRecorder(t)
			settled := func(ctx context.Context) (bool, error) {
				if fixed {
					return true, nil
				}
				// The consumer fails again: each canary comes back to the
				// DLQ as a replayed letter, ingested after the replay.
				pub.mu.Lock()
				sent := append([]*message.Message(nil), pub.msgs...)
				pub.mu.Unlock()
				for _, m := range sent {
					again := m.Copy()
					again.Metadata.Set(poison.KeyReason, "permanent")
					again.Metadata.Set(poison.KeyError, "order still not found")
					again.Metadata.Set(poison.KeyOriginalTopic, "orders")
					again.Metadata.Set(poison.KeyLastFailedAt, time.Now().UTC().Format(time.RFC3339Nano))
					if _, err := store.Put(ctx, hospital.FromMessage(ctx, again, "kafka", "orders.dlq", nil, fingerprint.Options{})); err != nil {
						return false, err
					}
				}
				return false, nil
			}
			srv := serve(t, web.Config{Store: store, Publisher: pub, Token: token, ReplayRate: 10000, CanarySettled: settled})
			c := client(t)
			login(t, c, srv, "frank")
			tok := csrf(t, c, srv, "/groups/"+fp)
			r := do(t, c, "POST", srv.URL+"/groups/"+fp+"/canary", url.Values{"csrf": {tok}, "canaries": {"2"}}, "Origin", srv.URL)
			if !strings.Contains(r.body, "replay 2 canary letters first") {
				t.Fatalf("canary confirmation: %d\n%s", r.status, r.body)
			}
			if !strings.Contains(r.body, "replay the other 5") || pub.total() != 0 {
				t.Fatalf("canary confirmation (%d published):\n%s", pub.total(), r.body)
			}
			upto := uptoRE.FindStringSubmatch(r.body)[1]
			r = do(t, c, "POST", srv.URL+"/groups/"+fp+"/canary/confirm", url.Values{"csrf": {tok}, "upto": {upto}, "canaries": {"2"}}, "Origin", srv.URL)
			states := countStates(t, store)
			if fixed {
				if !strings.Contains(r.body, "Canaries: <b>2</b> replayed; the rest: <b>5</b> replayed.") || pub.total() != 7 {
					t.Errorf("fixed: %d published\n%s", pub.total(), r.body)
				}
				if states[hospital.StateReplayed] != 7 || states[hospital.StateDead] != 0 {
					t.Errorf("fixed: states %v", states)
				}
				return
			}
			if !strings.Contains(r.body, "came back") || !strings.Contains(r.body, "order still not found") || !strings.Contains(r.body, "Stopped: 2 of 2 canaries failed again") || pub.total() != 2 {
				t.Errorf("unfixed: %d published\n%s", pub.total(), r.body)
			}
			if states[hospital.StateReplayed] != 2 || states[hospital.StateDead] != 5+2 {
				t.Errorf("unfixed: states %v, want the 2 canaries replayed, the 5 others and the 2 relapses dead", states)
			}
		})
	}
}

// Edit and replay: the form shows the letter, the confirmation the diff
// (nothing sent yet), the replay a new message naming the original; an
// edit that changes nothing (a browser's CRLF line ends included) is
// refused.
func TestEditAndReplay(t *testing.T) {
	store, _, _ := newStore(t)
	orders := put(t, store, ordersBug)
	l, err := store.Letter(context.Background(), orders[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	pub := newRecorder(t)
	srv := serve(t, web.Config{Store: store, Publisher: pub, Token: token})
	c := client(t)
	login(t, c, srv, "grace")
	id := strconv.FormatInt(l.ID, 10)
	r := do(t, c, "GET", srv.URL+"/letters/"+id+"/edit", nil)
	if r.status != 200 || !strings.Contains(r.body, `&#34;amount&#34;:0.5`) || !strings.Contains(r.body, "Review the change") {
		t.Fatalf("edit form: %d\n%s", r.status, r.body)
	}
	tok := csrfRE.FindStringSubmatch(r.body)[1]
	md, _ := json.Marshal(l.Metadata)

	same := strings.ReplaceAll(string(l.Payload), "\n", "\r\n")
	r = do(t, c, "POST", srv.URL+"/letters/"+id+"/edit", url.Values{"csrf": {tok}, "payload": {same}, "metadata": {string(md)}}, "Origin", srv.URL)
	if r.status != 400 || !strings.Contains(r.body, "changes nothing") {
		t.Errorf("an unchanged edit: %d\n%s", r.status, r.body)
	}
	r = do(t, c, "POST", srv.URL+"/letters/"+id+"/edit", url.Values{"csrf": {tok}, "payload": {"{"}, "metadata": {"[1]"}}, "Origin", srv.URL)
	if r.status != 400 || !strings.Contains(r.body, "not a JSON object of strings") {
		t.Errorf("bad metadata: %d\n%s", r.status, r.body)
	}

	fixed := strings.Replace(string(l.Payload), `"amount":0.5`, `"amount":10.5`, 1)
	r = do(t, c, "POST", srv.URL+"/letters/"+id+"/edit", url.Values{"csrf": {tok}, "payload": {fixed}, "metadata": {string(md)}}, "Origin", srv.URL)
	if r.status != 200 || !strings.Contains(r.body, "payload.order.amount: 0.5 -&gt; 10.5") || pub.total() != 0 {
		t.Fatalf("edit confirmation (%d published): %d\n%s", pub.total(), r.status, r.body)
	}
	r = do(t, c, "POST", srv.URL+"/letters/"+id+"/edit/confirm", url.Values{"csrf": {tok}, "payload": {fixed}, "metadata": {string(md)}}, "Origin", srv.URL)
	if r.status != 200 || pub.total() != 1 {
		t.Fatalf("edit and replay: %d, %d published\n%s", r.status, pub.total(), r.body)
	}
	m := pub.msgs[0]
	if m.UUID == l.UUID || !strings.Contains(r.body, m.UUID) || string(m.Payload) != fixed || m.Metadata.Get(hospital.MetadataReplayOf) != l.UUID {
		t.Errorf("replayed %s %q replay_of %q; want a new UUID, the edited payload, naming %s", m.UUID, m.Payload, m.Metadata.Get(hospital.MetadataReplayOf), l.UUID)
	}
	audit, err := store.Audit(context.Background(), l.ID, 10)
	if err != nil || len(audit) != 1 || audit[0].Actor != "grace" || !strings.Contains(audit[0].Detail, "payload.order.amount") {
		t.Errorf("audit %+v (%v)", audit, err)
	}
	if r := do(t, c, "GET", srv.URL+"/letters/"+id+"/edit", nil); r.status != 409 {
		t.Errorf("editing a replayed letter: %d", r.status)
	}
}
