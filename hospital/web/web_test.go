package web_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/antidote-mq/antidote/fingerprint"
	"github.com/antidote-mq/antidote/hospital"
	"github.com/antidote-mq/antidote/hospital/web"
	"github.com/antidote-mq/antidote/poison"
)

// Without the token nothing is shown: pages send to the login form, the
// API answers 401; a bearer token, basic auth and the login form's cookie
// let in; a wrong token does not. The cookie is HttpOnly, SameSite=Strict
// and does not hold the token.
func TestAuth(t *testing.T) {
	store, _, _ := newStore(t)
	put(t, store, ordersBug)
	srv := serve(t, web.Config{Store: store, Token: token})
	c := client(t)

	r := do(t, c, "GET", srv.URL+"/", nil)
	if r.status != http.StatusSeeOther || r.header.Get("Location") != "/login?next=%2F" {
		t.Errorf("GET / without a token: %d to %q, want 303 to the login page", r.status, r.header.Get("Location"))
	}
	for _, path := range []string{"/api/groups", "/letters/1", "/groups/0123456789abcdef"} {
		if r := do(t, c, "GET", srv.URL+path, nil, "Accept", "application/json"); r.status != http.StatusUnauthorized && !(r.status == http.StatusSeeOther && !strings.HasPrefix(path, "/api/")) {
			t.Errorf("GET %s without a token: %d", path, r.status)
		}
	}
	if r := do(t, c, "GET", srv.URL+"/api/groups", nil); r.status != http.StatusUnauthorized || !strings.Contains(r.body, "Bearer") {
		t.Errorf("GET /api/groups without a token: %d %s, want 401 naming the Bearer header", r.status, r.body)
	}
	if r := do(t, c, "GET", srv.URL+"/api/groups", nil, "Authorization", "Bearer "+token); r.status != 200 || !strings.Contains(r.body, `"fingerprint"`) {
		t.Errorf("GET /api/groups with the bearer token: %d %s", r.status, r.body)
	}
	for _, wrong := range []string{"Bearer " + token + "x", "Bearer ", "Bearer " + token[:len(token)-1], "Token " + token} {
		if r := do(t, c, "GET", srv.URL+"/api/groups", nil, "Authorization", wrong); r.status != http.StatusUnauthorized {
			t.Errorf("Authorization %q: %d, want 401", wrong, r.status)
		}
	}
	req, _ := http.NewRequest("GET", srv.URL+"/", nil)
	req.SetBasicAuth("alice", token)
	if resp, err := c.Do(req); err != nil || resp.StatusCode != 200 {
		t.Errorf("basic auth with the token: %v %v", resp.StatusCode, err)
	} else {
		_ = resp.Body.Close()
	}

	// The login form: a wrong token sets no cookie.
	r = do(t, c, "POST", srv.URL+"/login", url.Values{"token": {"not-the-token-at-all"}, "next": {"/"}}, "Origin", srv.URL)
	if r.status != http.StatusUnauthorized || r.header.Get("Set-Cookie") != "" || !strings.Contains(r.body, "Wrong token") {
		t.Errorf("login with a wrong token: %d, Set-Cookie %q", r.status, r.header.Get("Set-Cookie"))
	}
	if r := do(t, c, "GET", srv.URL+"/", nil); r.status != http.StatusSeeOther {
		t.Errorf("after a failed login GET / is %d, want 303 to the login page", r.status)
	}
	r = do(t, c, "POST", srv.URL+"/login", url.Values{"token": {token}, "name": {"carol"}, "next": {"//evil.example/"}}, "Origin", srv.URL)
	cookie := r.header.Get("Set-Cookie")
	if r.status != http.StatusSeeOther || r.header.Get("Location") != "/" {
		t.Errorf("login: %d to %q, want 303 to / (never off-site)", r.status, r.header.Get("Location"))
	}
	for _, want := range []string{"antidote_hospital_session=", "HttpOnly", "SameSite=Strict", "Path=/"} {
		if !strings.Contains(cookie, want) {
			t.Errorf("cookie %q lacks %s", cookie, want)
		}
	}
	if strings.Contains(cookie, token) || strings.Contains(cookie, url.QueryEscape(token)) {
		t.Errorf("the cookie holds the token: %q", cookie)
	}
	r = do(t, c, "GET", srv.URL+"/", nil)
	if r.status != 200 || !strings.Contains(r.body, "signed in as <b>carol</b>") || !strings.Contains(r.body, "1 group") {
		t.Errorf("GET / after login: %d\n%s", r.status, r.body)
	}

	// Logging out ends the session, on the server too.
	sess := strings.TrimPrefix(strings.Split(cookie, ";")[0], "antidote_hospital_session=")
	tok := csrf(t, c, srv, "/")
	if r := do(t, c, "POST", srv.URL+"/logout", url.Values{"csrf": {tok}}, "Origin", srv.URL); r.status != http.StatusSeeOther {
		t.Errorf("logout: %d %s", r.status, r.body)
	}
	other := client(t)
	req, _ = http.NewRequest("GET", srv.URL+"/", nil)
	req.AddCookie(&http.Cookie{Name: "antidote_hospital_session", Value: sess})
	if resp, err := other.Do(req); err != nil || resp.StatusCode != http.StatusSeeOther {
		t.Errorf("the logged-out session still works: %v %v", resp.StatusCode, err)
	} else {
		_ = resp.Body.Close()
	}
}

// A state-changing request without the form's CSRF token, with another
// session's, or from another origin is refused and changes nothing.
func TestCSRF(t *testing.T) {
	store, _, _ := newStore(t)
	letters := put(t, store, ordersBug)
	fp := letters[0].Fingerprint.ID
	pub := newRecorder(t)
	srv := serve(t, web.Config{Store: store, Publisher: pub, Token: token})
	c := client(t)
	login(t, c, srv, "dave")
	good := csrf(t, c, srv, "/groups/"+fp)
	mallory := client(t)
	login(t, mallory, srv, "mallory")
	othersToken := csrf(t, mallory, srv, "/")
	if othersToken == good {
		t.Fatal("two sessions share a CSRF token")
	}
	upto := strconv.FormatInt(letters[len(letters)-1].ID, 10)
	before := countStates(t, store)

	for name, req := range map[string]struct {
		form    url.Values
		headers []string
	}{
		"no token":             {url.Values{"upto": {upto}}, []string{"Origin", srv.URL}},
		"wrong token":          {url.Values{"upto": {upto}, "csrf": {"AAAA"}}, []string{"Origin", srv.URL}},
		"another session's":    {url.Values{"upto": {upto}, "csrf": {othersToken}}, []string{"Origin", srv.URL}},
		"cross-site":           {url.Values{"upto": {upto}, "csrf": {good}}, []string{"Sec-Fetch-Site", "cross-site", "Origin", "https://evil.example"}},
		"another origin":       {url.Values{"upto": {upto}, "csrf": {good}}, []string{"Origin", "https://evil.example"}},
		"same-site, other app": {url.Values{"upto": {upto}, "csrf": {good}}, []string{"Sec-Fetch-Site", "same-site"}},
	} {
		for _, action := range []string{"purge", "replay"} {
			r := do(t, c, "POST", srv.URL+"/groups/"+fp+"/"+action+"/confirm", req.form, req.headers...)
			if r.status != http.StatusForbidden {
				t.Errorf("%s %s: %d, want 403", name, action, r.status)
			}
		}
		r := do(t, c, "POST", srv.URL+"/letters/"+strconv.FormatInt(letters[0].ID, 10)+"/purge/confirm", req.form, req.headers...)
		if r.status != http.StatusForbidden {
			t.Errorf("%s, one letter: %d, want 403", name, r.status)
		}
	}
	after := countStates(t, store)
	if !equalCounts(before, after) || after[hospital.StateDead] != ordersBug.n {
		t.Errorf("refused requests changed the store: before %v, after %v", before, after)
	}
	if pub.total() != 0 {
		t.Errorf("refused requests published %d messages", pub.total())
	}
	if audit, err := store.Audit(context.Background(), 0, 100); err != nil || len(audit) != 0 {
		t.Errorf("refused requests wrote %d audit entries (%v)", len(audit), err)
	}

	// The same request with the token, from this origin, goes through.
	r := do(t, c, "POST", srv.URL+"/groups/"+fp+"/purge/confirm", url.Values{"upto": {upto}, "csrf": {good}}, "Origin", srv.URL, "Sec-Fetch-Site", "same-origin")
	if r.status != 200 || !strings.Contains(r.body, `<b id="treated">7</b> purged by dave`) {
		t.Fatalf("purge with the CSRF token: %d\n%s", r.status, r.body)
	}
	if got := countStates(t, store); got[hospital.StatePurged] != ordersBug.n || got[hospital.StateDead] != 0 {
		t.Errorf("after the purge: %v, want all %d purged", got, ordersBug.n)
	}
	audit, err := store.Audit(context.Background(), 0, 100)
	if err != nil || len(audit) != ordersBug.n {
		t.Fatalf("%d audit entries (%v), want %d", len(audit), err, ordersBug.n)
	}
	for _, e := range audit {
		if e.Actor != "dave" || e.Action != "purged" {
			t.Errorf("audit entry %+v, want dave purged", e)
		}
	}
}

func equalCounts(a, b map[hospital.State]int) bool {
	for _, s := range []hospital.State{hospital.StateDead, hospital.StateReplayed, hospital.StatePurged} {
		if a[s] != b[s] {
			return false
		}
	}
	return true
}

// Replaying a group goes through a confirmation page that says how many
// letters go to which topic and publishes nothing; confirming publishes
// exactly the group's letters (those the page counted: one arriving
// after it stays), each once, and leaves the other group alone.
func TestReplayGroupThroughConfirmation(t *testing.T) {
	store, _, _ := newStore(t)
	orders := put(t, store, ordersBug)
	panics := put(t, store, panicBug)
	pub := newRecorder(t)
	srv := serve(t, web.Config{Store: store, Publisher: pub, Token: token, ReplayRate: 10000})
	c := client(t)
	login(t, c, srv, "erin")
	fp := orders[0].Fingerprint.ID

	tok := csrf(t, c, srv, "/groups/"+fp)
	r := do(t, c, "POST", srv.URL+"/groups/"+fp+"/replay", url.Values{"csrf": {tok}}, "Origin", srv.URL)
	if r.status != 200 {
		t.Fatalf("replay: %d\n%s", r.status, r.body)
	}
	for _, want := range []string{"replay 7 dead letters</b> of group " + fp, "<li><b>7</b> to topic <code>orders</code></li>",
		`name="upto" value="` + strconv.FormatInt(orders[len(orders)-1].ID, 10) + `"`, "Yes, replay 7 letters"} {
		if !strings.Contains(r.body, want) {
			t.Errorf("the confirmation page lacks %q:\n%s", want, r.body)
		}
	}
	if pub.total() != 0 || countStates(t, store)[hospital.StateDead] != ordersBug.n+panicBug.n {
		t.Fatalf("the confirmation page itself replayed: %d published", pub.total())
	}
	m := uptoRE.FindStringSubmatch(r.body)

	// A letter of the same bug arrives while the operator reads the page.
	late := ordersBug
	late.n = 1
	lateLetter := put(t, store, late)[0]
	if lateLetter.Fingerprint.ID != fp {
		t.Fatal("the late letter is in another group")
	}

	r = do(t, c, "POST", srv.URL+"/groups/"+fp+"/replay/confirm", url.Values{"csrf": {tok}, "upto": {m[1]}}, "Origin", srv.URL)
	if r.status != 200 || !strings.Contains(r.body, `<b id="treated">7</b> replayed by erin to <code>orders</code>`) {
		t.Fatalf("confirm: %d\n%s", r.status, r.body)
	}
	var want []string
	for _, l := range orders {
		want = append(want, l.UUID)
	}
	got := pub.uuids("orders")
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) || pub.total() != ordersBug.n {
		t.Errorf("published %d messages (%v), want the group's %d letters %v", pub.total(), got, len(want), want)
	}
	states := countStates(t, store)
	if states[hospital.StateReplayed] != ordersBug.n || states[hospital.StateDead] != panicBug.n+1 {
		t.Errorf("states after the replay: %v, want %d replayed and the other group's %d plus the late one dead", states, ordersBug.n, panicBug.n)
	}
	if l, err := store.Letter(context.Background(), lateLetter.ID); err != nil || l.State != hospital.StateDead {
		t.Errorf("the late letter is %s (%v), want dead", l.State, err)
	}
	for _, l := range panics {
		if got, _ := store.Letter(context.Background(), l.ID); got.State != hospital.StateDead {
			t.Errorf("letter %d of the other group is %s", l.ID, got.State)
		}
	}
	// Confirming again treats only what is left up to the same letter: nothing.
	r = do(t, c, "POST", srv.URL+"/groups/"+fp+"/replay/confirm", url.Values{"csrf": {tok}, "upto": {m[1]}}, "Origin", srv.URL)
	if r.status != 200 || !strings.Contains(r.body, `<b id="treated">0</b>`) || pub.total() != ordersBug.n {
		t.Errorf("a second confirmation: %d, %d published\n%s", r.status, pub.total(), r.body)
	}

	// One letter, through its own page and confirmation.
	id := strconv.FormatInt(panics[0].ID, 10)
	tok = csrf(t, c, srv, "/letters/"+id)
	r = do(t, c, "POST", srv.URL+"/letters/"+id+"/replay", url.Values{"csrf": {tok}}, "Origin", srv.URL)
	if !strings.Contains(r.body, "replay 1 dead letter</b> of letter "+id) || pub.total() != ordersBug.n {
		t.Fatalf("letter confirmation: %d, %d published\n%s", r.status, pub.total(), r.body)
	}
	r = do(t, c, "POST", srv.URL+"/letters/"+id+"/replay/confirm", url.Values{"csrf": {tok}, "upto": {id}}, "Origin", srv.URL)
	if !strings.Contains(r.body, `<b id="treated">1</b> replayed`) || pub.total() != ordersBug.n+1 || pub.uuids("orders")[ordersBug.n] != panics[0].UUID {
		t.Fatalf("letter replay: %d, %d published\n%s", r.status, pub.total(), r.body)
	}
	r = do(t, c, "GET", srv.URL+"/letters/"+id, nil)
	if !strings.Contains(r.body, "<td>erin</td><td>replayed</td>") || strings.Contains(r.body, `id="replay-letter"`) {
		t.Errorf("the letter page lacks its history, or still offers a replay:\n%s", r.body)
	}
}

// Every value a letter carries is escaped: a payload, metadata, error and
// handler holding markup come out as text.
func TestEscapesLetterContent(t *testing.T) {
	store, _, _ := newStore(t)
	ctx := context.Background()
	m := message.NewMessage(watermill.NewUUID(), []byte(`{"note":"<script>alert('payload')</script>"}`))
	m.Metadata.Set(poison.KeyOriginalTopic, "orders")
	m.Metadata.Set(poison.KeyHandler, `<img src=x onerror=alert('handler')>`)
	m.Metadata.Set(poison.KeyReason, "permanent")
	m.Metadata.Set(poison.KeyError, `bad <script>alert('error')</script>`)
	m.Metadata.Set("x-<script>alert('key')</script>", `"><script>alert('value')</script>`)
	m.Metadata.Set(poison.KeyProducer, `<b onmouseover=alert(1)>p</b>`)
	l := hospital.FromMessage(ctx, m, "kafka", "orders.dlq", nil, fingerprint.Options{})
	if _, err := store.Put(ctx, l); err != nil {
		t.Fatal(err)
	}
	raw := message.NewMessage(watermill.NewUUID(), []byte("<script>alert('text')</script>\x00\x01"))
	raw.Metadata.Set(poison.KeyReason, "undecodable")
	if _, err := store.Put(ctx, hospital.FromMessage(ctx, raw, "kafka", "orders.dlq", nil, fingerprint.Options{})); err != nil {
		t.Fatal(err)
	}
	ids, _ := hospital.Select(ctx, store, hospital.LetterQuery{})
	srv := serve(t, web.Config{Store: store, Token: token})
	c := client(t)
	login(t, c, srv, "<script>alert('actor')</script>")
	pages := []string{"/", "/groups/" + l.Fingerprint.ID, "/letters/" + strconv.FormatInt(ids[0], 10), "/letters/" + strconv.FormatInt(ids[1], 10)}
	for _, p := range pages {
		r := do(t, c, "GET", srv.URL+p, nil)
		if r.status != 200 {
			t.Fatalf("GET %s: %d", p, r.status)
		}
		for _, bad := range []string{"<script", "<img", "<b onmouseover"} {
			if strings.Contains(r.body, bad) {
				t.Errorf("GET %s carries %q unescaped", p, bad)
			}
		}
		if !strings.Contains(r.body, "&lt;script&gt;alert(&#39;actor&#39;)") {
			t.Errorf("GET %s does not show the actor's name escaped", p)
		}
		if csp := r.header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "frame-ancestors 'none'") || strings.Contains(csp, "script-src") {
			t.Errorf("GET %s: CSP %q", p, csp)
		}
		if r.header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("GET %s: no X-Content-Type-Options", p)
		}
	}
	r := do(t, c, "GET", srv.URL+pages[2], nil)
	for _, want := range []string{"&lt;script&gt;alert(&#39;payload&#39;)", "x-&lt;script&gt;alert(&#39;key&#39;)", "&#34;&gt;&lt;script&gt;alert(&#39;value&#39;)", "&lt;img src=x onerror=alert(&#39;handler&#39;)&gt;"} {
		if !strings.Contains(r.body, want) {
			t.Errorf("the letter page lacks %q", want)
		}
	}
	if r := do(t, c, "GET", srv.URL+pages[3], nil); !strings.Contains(r.body, "binary") || !strings.Contains(r.body, "3c 73 63 72 69 70 74 3e") {
		t.Errorf("a binary payload is not shown as hex:\n%s", r.body)
	}
}

// A JSON payload is pretty-printed; past 64 KiB it is cut, with a link to
// all of it; a letter's trace links to Jaeger.
func TestLetterPage(t *testing.T) {
	store, _, _ := newStore(t)
	ctx := context.Background()
	letters := put(t, store, ordersBug)
	big := message.NewMessage(watermill.NewUUID(), []byte(`{"blob":"`+strings.Repeat("x", web.PayloadLimit)+`","end":"THE-END"}`))
	big.Metadata.Set(poison.KeyReason, "permanent")
	if _, err := store.Put(ctx, hospital.FromMessage(ctx, big, "kafka", "orders.dlq", nil, fingerprint.Options{})); err != nil {
		t.Fatal(err)
	}
	srv := serve(t, web.Config{Store: store, Token: token, JaegerURL: "http://jaeger.example:16686/"})
	c := client(t)
	login(t, c, srv, "")
	r := do(t, c, "GET", srv.URL+"/letters/"+strconv.FormatInt(letters[2].ID, 10), nil)
	for _, want := range []string{"{\n  &#34;order&#34;: {\n    &#34;id&#34;: 1002,", `href="http://jaeger.example:16686/trace/4bf92f3577b34da6a3ce929d0e0e0002"`,
		"order 1002 not found", "checkout@1.4.2", "Not treated yet."} {
		if !strings.Contains(r.body, want) {
			t.Errorf("the letter page lacks %q:\n%s", want, r.body)
		}
	}
	id := strconv.FormatInt(letters[len(letters)-1].ID+1, 10)
	r = do(t, c, "GET", srv.URL+"/letters/"+id, nil)
	if !strings.Contains(r.body, `href="/letters/`+id+`?full=1"`) || strings.Contains(r.body, "THE-END") {
		t.Errorf("a payload past 64 KiB is not cut with a show-all link")
	}
	r = do(t, c, "GET", srv.URL+"/letters/"+id+"?full=1", nil)
	if strings.Contains(r.body, "show-all") || !strings.Contains(r.body, "THE-END") {
		t.Errorf("show all does not show all")
	}
	if r := do(t, c, "GET", srv.URL+"/letters/999999", nil); r.status != 404 {
		t.Errorf("a missing letter: %d", r.status)
	}
}

// The JSON API: groups with the contract's flat names, a group's letters
// page by page, a letter whole.
func TestAPI(t *testing.T) {
	store, _, _ := newStore(t)
	orders := put(t, store, ordersBug)
	put(t, store, panicBug)
	srv := serve(t, web.Config{Store: store, Token: token})
	c := client(t)
	get := func(path string, v any) {
		t.Helper()
		r := do(t, c, "GET", srv.URL+path, nil, "Authorization", "Bearer "+token)
		if r.status != 200 || !strings.HasPrefix(r.header.Get("Content-Type"), "application/json") {
			t.Fatalf("GET %s: %d %s", path, r.status, r.body)
		}
		if err := json.Unmarshal([]byte(r.body), v); err != nil {
			t.Fatalf("GET %s: %v\n%s", path, err, r.body)
		}
	}
	var groups struct {
		Groups []map[string]any `json:"groups"`
		Total  int              `json:"total"`
	}
	get("/api/groups", &groups)
	if groups.Total != 2 || len(groups.Groups) != 2 {
		t.Fatalf("groups: %+v", groups)
	}
	byFP := map[string]map[string]any{}
	for _, g := range groups.Groups {
		fp, ok := g["fingerprint"].(string)
		if !ok || len(fp) != 16 {
			t.Errorf("group fingerprint %v is not the group's id", g["fingerprint"])
		}
		byFP[fp] = g
		for _, k := range []string{"reason", "handler", "error_type", "message", "frame", "shape", "producer", "original_topic"} {
			if _, ok := g[k].(string); !ok {
				t.Errorf("group %s: %s is %T, want a string", fp, k, g[k])
			}
		}
		for _, k := range []string{"count", "dead", "example"} {
			if _, ok := g[k].(float64); !ok {
				t.Errorf("group %s: %s is %T, want a number", fp, k, g[k])
			}
		}
		if r, ok := g["recent"].([]any); !ok || len(r) != hospital.RecentHours {
			t.Errorf("group %s: recent %v", fp, g["recent"])
		}
	}
	og := byFP[orders[0].Fingerprint.ID]
	if og == nil || og["count"] != float64(7) || og["reason"] != "permanent" || og["handler"] != "charge" || og["error_type"] != "*shop.NotFoundError" || og["message"] != "order <n> not found" {
		t.Errorf("the orders group: %v", og)
	}

	var page struct {
		Letters []map[string]any `json:"letters"`
		Next    int64            `json:"next"`
	}
	var ids []float64
	after := ""
	for range 10 {
		get("/api/groups/"+orders[0].Fingerprint.ID+"/letters?limit=3"+after, &page)
		for _, l := range page.Letters {
			ids = append(ids, l["id"].(float64))
		}
		if page.Next == 0 {
			break
		}
		after = "&after=" + strconv.FormatInt(page.Next, 10)
	}
	if len(ids) != 7 || !slices.IsSorted(ids) || ids[0] != float64(orders[0].ID) {
		t.Errorf("paged letters %v, want the group's 7 oldest first", ids)
	}

	var letter map[string]any
	get("/api/letters/"+strconv.FormatInt(orders[0].ID, 10), &letter)
	if letter["uuid"] != orders[0].UUID || letter["payload_text"] != string(orders[0].Payload) || letter["state"] != "dead" {
		t.Errorf("letter: %v", letter)
	}
	if md, ok := letter["metadata"].(map[string]any); !ok || md["antidote.reason"] != "permanent" {
		t.Errorf("letter metadata: %v", letter["metadata"])
	}
	if a, ok := letter["audit"].([]any); !ok || len(a) != 0 {
		t.Errorf("letter audit: %v", letter["audit"])
	}
	if r := do(t, c, "GET", srv.URL+"/api/letters/424242", nil, "Authorization", "Bearer "+token); r.status != 404 || !strings.Contains(r.body, `"error"`) {
		t.Errorf("a missing letter: %d %s", r.status, r.body)
	}
}

// The groups page lists groups by recent rate with their sparkline,
// filters by reason and handler, and pages.
func TestGroupsPage(t *testing.T) {
	store, _, _ := newStore(t)
	put(t, store, ordersBug)
	put(t, store, panicBug)
	srv := serve(t, web.Config{Store: store, Token: token})
	c := client(t)
	login(t, c, srv, "")
	r := do(t, c, "GET", srv.URL+"/", nil)
	if !strings.Contains(r.body, "2 groups") || strings.Count(r.body, `<tr class="group">`) != 2 || strings.Count(r.body, "<polyline") != 2 {
		t.Errorf("groups page:\n%s", r.body)
	}
	// The orders group (7 this hour) comes before the panics (3).
	if i, j := strings.Index(r.body, "order &lt;n&gt; not found"), strings.Index(r.body, "assignment to entry in nil map"); i < 0 || j < 0 || i > j {
		t.Errorf("groups are not sorted by recent rate (%d, %d)", i, j)
	}
	if !strings.Contains(r.body, "shop.(*Shipper).Handle") {
		t.Errorf("the panic group does not show its frame")
	}
	r = do(t, c, "GET", srv.URL+"/?reason=panic", nil)
	if !strings.Contains(r.body, "1 group") || strings.Contains(r.body, "order &lt;n&gt; not found") {
		t.Errorf("the reason filter:\n%s", r.body)
	}
	r = do(t, c, "GET", srv.URL+"/?handler=charge&page=2", nil)
	if strings.Count(r.body, `<tr class="group">`) != 0 || !strings.Contains(r.body, "page 2 of 1") {
		t.Errorf("page 2 of one group:\n%s", r.body)
	}
}

// Per-group metrics, read from the store on each scrape.
func TestMetrics(t *testing.T) {
	store, _, _ := newStore(t)
	orders := put(t, store, ordersBug)
	put(t, store, panicBug)
	reg := prometheus.NewRegistry()
	srv := serve(t, web.Config{Store: store, Token: token, Registerer: reg, MetricsGroups: 1})
	c := client(t)
	if r := do(t, c, "GET", srv.URL+"/metrics", nil); r.status != http.StatusUnauthorized {
		t.Errorf("/metrics without a token: %d", r.status)
	}
	r := do(t, c, "GET", srv.URL+"/metrics", nil, "Authorization", "Bearer "+token)
	want := `antidote_hospital_group_dead_letters{error_type="*shop.NotFoundError",fingerprint="` + orders[0].Fingerprint.ID + `",handler="charge",reason="permanent"} 7`
	if !strings.Contains(r.body, want) || strings.Count(r.body, "antidote_hospital_group_dead_letters{") != 1 || !strings.Contains(r.body, "antidote_hospital_groups 2") {
		t.Errorf("metrics lack %s (top 1 of 2 groups):\n%s", want, r.body)
	}
	if _, err := hospital.Purge(context.Background(), hospital.TreatConfig{Store: store}, []int64{orders[0].ID, orders[1].ID}); err != nil {
		t.Fatal(err)
	}
	r = do(t, c, "GET", srv.URL+"/metrics", nil, "Authorization", "Bearer "+token)
	if !strings.Contains(r.body, strings.Replace(want, "} 7", "} 5", 1)) {
		t.Errorf("metrics are not read on scrape:\n%s", r.body)
	}
}

func TestConfigValidate(t *testing.T) {
	_, err := web.New(web.Config{Token: "short", JaegerURL: "jaeger:16686", ReplayRate: -1})
	for _, want := range []string{"Config.Store is nil", "Config.Token has 5 characters", "Config.JaegerURL", "Config.ReplayRate"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not name %s", err, want)
		}
	}
}

// Without a token (a loopback server), everyone is "anonymous" and forms
// still need their CSRF token.
func TestNoToken(t *testing.T) {
	store, _, _ := newStore(t)
	letters := put(t, store, ordersBug)
	srv := serve(t, web.Config{Store: store})
	c := client(t)
	r := do(t, c, "GET", srv.URL+"/", nil)
	if r.status != 200 || !strings.Contains(r.body, "anonymous") {
		t.Fatalf("GET / without a token configured: %d", r.status)
	}
	id := strconv.FormatInt(letters[0].ID, 10)
	if r := do(t, c, "POST", srv.URL+"/letters/"+id+"/purge/confirm", url.Values{"upto": {id}}); r.status != http.StatusForbidden {
		t.Errorf("a POST without the CSRF token: %d", r.status)
	}
	tok := csrf(t, c, srv, "/letters/"+id)
	if r := do(t, c, "POST", srv.URL+"/letters/"+id+"/purge/confirm", url.Values{"upto": {id}, "csrf": {tok}}); r.status != 200 {
		t.Errorf("a POST with the CSRF token: %d %s", r.status, r.body)
	}
	if got := countStates(t, store); got[hospital.StatePurged] != 1 {
		t.Errorf("states %v, want one purged", got)
	}
}
