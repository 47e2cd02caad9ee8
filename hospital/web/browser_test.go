package web_test

import (
	"context"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/hospital"
	"github.com/antidote-mq/antidote/hospital/web"
	"github.com/antidote-mq/antidote/internal/testenv"
)

// The hospital in a real headless Chromium: log in, read the groups, open
// a group and a letter, replay the group through its confirmation page,
// and see the outcome on the page and on the broker. Each page is written
// as a PNG to $ANTIDOTE_HOSPITAL_SCREENSHOTS (the README's pictures are
// made with ANTIDOTE_HOSPITAL_SCREENSHOTS=$PWD/docs/hospital), else to a
// temporary folder.
func TestBrowser(t *testing.T) {
	b := startBrowser(t)
	store, pool, prefix := newStore(t)
	orders := put(t, store, ordersBug)
	panics := put(t, store, panicBug)
	put(t, store, bug{topic: "inventory", handler: "reserve", reason: "retries_exhausted", errorType: "*net.OpError",
		err: "dial tcp 10.0.0.7:%d: connect: connection refused", n: 4})
	// A day of history for the sparklines: the orders bug started 6 hours
	// ago and grows, the inventory outage was yesterday afternoon.
	for ago, n := range map[int]int{6: 2, 5: 3, 4: 5, 3: 9, 2: 14, 1: 20} {
		seedRate(t, pool, prefix, orders[0].Fingerprint.ID, ago, n)
	}
	inv, err := store.Groups(context.Background(), hospital.GroupQuery{Handler: "reserve"})
	if err != nil || len(inv.Groups) != 1 {
		t.Fatalf("inventory group: %v %v", inv, err)
	}
	for ago, n := range map[int]int{20: 6, 19: 31, 18: 12, 17: 3} {
		seedRate(t, pool, prefix, inv.Groups[0].Fingerprint.ID, ago, n)
	}

	pub := newRecorder(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	received, err := pub.Publisher.(message.Subscriber).Subscribe(ctx, "orders")
	if err != nil {
		t.Fatal(err)
	}
	h, err := web.New(web.Config{Store: store, Publisher: pub, Token: token, ReplayRate: 10000, JaegerURL: "http://127.0.0.1:16686",
		// The consumer has caught up at once: no canary comes back.
		CanarySettled: func(context.Context) (bool, error) { return true, nil }})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	dir := os.Getenv("ANTIDOTE_HOSPITAL_SCREENSHOTS")
	if dir == "" {
		dir = t.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	shot := func(name string) {
		t.Helper()
		b.screenshot(filepath.Join(dir, name))
	}
	expect := func(what string, wants ...string) {
		t.Helper()
		text := b.text()
		for _, w := range wants {
			if !strings.Contains(text, w) {
				t.Fatalf("%s (%s) does not say %q:\n%s", what, b.location(), w, text)
			}
		}
	}

	// Not logged in: the login page; a wrong token is refused.
	b.navigate(srv.URL + "/")
	if loc := b.location(); loc != "/login?next=%2F" {
		t.Fatalf("not logged in, / shows %s", loc)
	}
	shot("login.png")
	b.fill(`#login [name=token]`, "not the token, not at all")
	b.click(`#login button`)
	expect("a wrong token", "Wrong token.")
	b.fill(`#login [name=token]`, token)
	b.fill(`#login [name=name]`, "oncall-alice")
	b.click(`#login button`)
	if cookie := b.eval(`document.cookie`); cookie != "" {
		t.Errorf("script can read the session cookie: %q", cookie)
	}

	// The groups, what is failing now first.
	expect("the groups page", "3 groups with letters waiting", "signed in as oncall-alice", "order <n> not found",
		"assignment to entry in nil map", "connect: connection refused", "shop.(*Shipper).Handle")
	text := b.text()
	if strings.Index(text, "order <n> not found") > strings.Index(text, "connection refused") {
		t.Errorf("the growing orders bug is not listed before yesterday's outage:\n%s", text)
	}
	if n := b.eval(`document.querySelectorAll("svg.spark polyline").length`); n != float64(3) {
		t.Errorf("%v sparklines, want 3", n)
	}
	shot("groups.png")

	// A group, and one of its letters.
	fp := orders[0].Fingerprint.ID
	b.click(`a.fp[href="/groups/` + fp + `"]`)
	expect("the group page", "order <n> not found", "*shop.NotFoundError", "Replay the group…", orders[0].UUID)
	if n := b.eval(`document.querySelectorAll("tr.letter").length`); n != float64(ordersBug.n) {
		t.Errorf("the group page lists %v letters, want %d", n, ordersBug.n)
	}
	shot("group.png")
	b.click(`tr.letter a[href="/letters/` + itoa(orders[2].ID) + `"]`)
	expect("the letter page", orders[2].UUID, `"id": 1002`, "order 1002 not found", "checkout@1.4.2", "Not treated yet.",
		"4bf92f3577b34da6a3ce929d0e0e0002 in Jaeger")
	shot("letter.png")

	// Replay the group: a confirmation first, then the outcome.
	b.navigate(srv.URL + "/groups/" + fp)
	b.click(`#replay-group`)
	expect("the confirmation page", "This will replay 7 dead letters of group "+fp, "7 to topic orders", "Yes, replay 7 letters")
	if pub.total() != 0 {
		t.Fatalf("the confirmation page published %d messages", pub.total())
	}
	shot("confirm.png")
	b.click(`#confirm`)
	expect("the outcome", "7 replayed by oncall-alice to orders.")
	shot("replayed.png")

	// The broker got exactly the group's letters, each once.
	var got, want []string
	for _, l := range orders {
		want = append(want, l.UUID)
	}
	testenv.Eventually(t, 30*time.Second, "the 7 replays received", func() bool {
		for {
			select {
			case m := <-received:
				got = append(got, m.UUID)
				m.Ack()
			default:
				return len(got) >= len(want)
			}
		}
	})
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) || pub.total() != len(want) {
		t.Errorf("the broker received %v (%d published), want the group's %v", got, pub.total(), want)
	}
	states := countStates(t, store)
	if states[hospital.StateReplayed] != ordersBug.n || states[hospital.StateDead] != panicBug.n+4 {
		t.Errorf("states after the replay: %v", states)
	}
	// The letter now shows its replay in its history.
	b.navigate(srv.URL + "/letters/" + itoa(orders[2].ID))
	expect("the replayed letter", "replayed", "oncall-alice", "replayed to original topic")
	if n := b.eval(`document.querySelectorAll("#replay-letter").length`); n != float64(0) {
		t.Errorf("a replayed letter still offers a replay")
	}

	// A canary replay of the panic group: one letter first, then the rest.
	b.navigate(srv.URL + "/groups/" + panics[0].Fingerprint.ID)
	b.click(`#canary-group`)
	expect("the canary confirmation", "replay 1 canary letter first of the 3 dead letters", "replay the other 2 only if no canary comes back")
	b.click(`#confirm`)
	expect("the canary outcome", "Canaries: 1 replayed; the rest: 2 replayed.", "3 replayed by oncall-alice to orders.")
	shot("canary.png")
	if pub.total() != ordersBug.n+panicBug.n {
		t.Errorf("%d published after the canary replay, want %d", pub.total(), ordersBug.n+panicBug.n)
	}
	t.Logf("screenshots in %s", dir)
}
