package web_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/antidote-mq/antidote/fingerprint"
	"github.com/antidote-mq/antidote/hospital"
	"github.com/antidote-mq/antidote/hospital/web"
	"github.com/antidote-mq/antidote/internal/testenv/hospitalstore"
	"github.com/antidote-mq/antidote/pgstore"
	"github.com/antidote-mq/antidote/poison"
)

const token = "s3cret-token-for-the-hospital-tests"

// newStore is a real PostgreSQL hospital store with tables of its own.
func newStore(t *testing.T) (*pgstore.HospitalStore, *pgxpool.Pool, string) {
	t.Helper()
	return hospitalstore.New(t, "hweb_")
}

// recorder is a Publisher that records every message published, before
// handing it to a gochannel Pub/Sub: the count of replays is exact, with
// no waiting.
type recorder struct {
	message.Publisher
	mu   sync.Mutex
	sent map[string][]string // topic → UUIDs
	msgs []*message.Message
}

func newRecorder(t *testing.T) *recorder {
	pubsub := gochannel.NewGoChannel(gochannel.Config{Persistent: true}, watermill.NopLogger{})
	t.Cleanup(func() { _ = pubsub.Close() })
	return &recorder{Publisher: pubsub, sent: map[string][]string{}}
}

func (r *recorder) Publish(topic string, msgs ...*message.Message) error {
	r.mu.Lock()
	for _, m := range msgs {
		r.sent[topic] = append(r.sent[topic], m.UUID)
		r.msgs = append(r.msgs, m)
	}
	r.mu.Unlock()
	return r.Publisher.Publish(topic, msgs...)
}

func (r *recorder) total() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, u := range r.sent {
		n += len(u)
	}
	return n
}

func (r *recorder) uuids(topic string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.sent[topic]...)
}

// bug is one cause of dead letters: n letters that share a fingerprint.
type bug struct {
	topic, handler, reason, errorType, err string
	stack                                  string
	n                                      int
}

// put stores b's letters and returns them (with their ids).
func put(t *testing.T, s hospital.Store, b bug) []hospital.Letter {
	t.Helper()
	ctx := context.Background()
	var out []hospital.Letter
	for i := 0; i < b.n; i++ {
		m := message.NewMessage(watermill.NewUUID(), fmt.Appendf(nil, `{"order":{"id":%d,"amount":%d.5},"items":["a","b"]}`, 1000+i, i))
		m.Metadata.Set(poison.KeyOriginalTopic, b.topic)
		m.Metadata.Set(poison.KeyHandler, b.handler)
		m.Metadata.Set(poison.KeyReason, b.reason)
		m.Metadata.Set(poison.KeyErrorType, b.errorType)
		msg := b.err
		if strings.Contains(msg, "%d") {
			msg = fmt.Sprintf(msg, 1000+i)
		}
		m.Metadata.Set(poison.KeyError, msg)
		m.Metadata.Set(poison.KeyAttempts, "3")
		m.Metadata.Set(poison.KeyConsumerGroup, "shop")
		m.Metadata.Set(poison.KeyProducer, "checkout@1.4.2")
		m.Metadata.Set(poison.KeyLastFailedAt, time.Now().Add(-time.Duration(i)*time.Minute).UTC().Format(time.RFC3339Nano))
		m.Metadata.Set("traceparent", fmt.Sprintf("00-4bf92f3577b34da6a3ce929d0e0e%04x-00f067aa0ba902b7-01", i))
		if b.stack != "" {
			m.Metadata.Set(poison.KeyStack, b.stack)
		}
		l := hospital.FromMessage(ctx, m, "kafka", b.topic+".dlq", nil, fingerprint.Options{})
		if _, err := s.Put(ctx, l); err != nil {
			t.Fatal(err)
		}
		out = append(out, l)
	}
	page, err := s.Letters(ctx, hospital.LetterQuery{Fingerprint: out[0].Fingerprint.ID, Newest: true, Limit: b.n})
	if err != nil || len(page.Letters) != b.n {
		t.Fatalf("stored %d letters of the bug (%v), want %d", len(page.Letters), err, b.n)
	}
	for i := range out {
		out[i].ID = page.Letters[b.n-1-i].ID
	}
	return out
}

var (
	ordersBug = bug{topic: "orders", handler: "charge", reason: "permanent", errorType: "*shop.NotFoundError",
		err: "order %d not found", n: 7}
	panicBug = bug{topic: "orders", handler: "ship", reason: "panic", errorType: "runtime.Error",
		err: "assignment to entry in nil map", n: 3,
		stack: "goroutine 7 [running]:\nshop.(*Shipper).Handle(0xc000123456)\n\t/app/ship.go:42 +0x1d\n"}
)

// countStates counts the store's letters in each state.
func countStates(t *testing.T, s hospital.Store) map[hospital.State]int {
	t.Helper()
	out := map[hospital.State]int{}
	q := hospital.LetterQuery{Limit: 1000}
	for {
		page, err := s.Letters(context.Background(), q)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range page.Letters {
			out[l.State]++
		}
		if page.Next == 0 {
			return out
		}
		q.After = page.Next
	}
}

// serve starts the hospital's handler on a test server.
func serve(t *testing.T, cfg web.Config) *httptest.Server {
	t.Helper()
	h, err := web.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

// client is a browser-like client: a cookie jar, redirects not followed
// (so tests see them).
func client(t *testing.T) *http.Client {
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Jar: jar, Timeout: 60 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

type response struct {
	status int
	header http.Header
	body   string
}

// do sends a request; headers are pairs of name, value.
func do(t *testing.T, c *http.Client, method, u string, form url.Values, headers ...string) response {
	t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{resp.StatusCode, resp.Header, string(b)}
}

// login logs c in through the form, as name.
func login(t *testing.T, c *http.Client, srv *httptest.Server, name string) {
	t.Helper()
	r := do(t, c, "POST", srv.URL+"/login", url.Values{"token": {token}, "name": {name}, "next": {"/"}}, "Origin", srv.URL)
	if r.status != http.StatusSeeOther {
		t.Fatalf("login: %d %s", r.status, r.body)
	}
}

var (
	csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)
	uptoRE = regexp.MustCompile(`name="upto" value="(\d+)"`)
)

// csrf is the CSRF token of the page at path.
func csrf(t *testing.T, c *http.Client, srv *httptest.Server, path string) string {
	t.Helper()
	r := do(t, c, "GET", srv.URL+path, nil)
	m := csrfRE.FindStringSubmatch(r.body)
	if r.status != 200 || m == nil {
		t.Fatalf("GET %s: %d, no CSRF token in:\n%s", path, r.status, r.body)
	}
	return m[1]
}

// seedRate sets a group's letters in the hour that began ago hours ago,
// for a sparkline with history.
func seedRate(t *testing.T, pool *pgxpool.Pool, prefix, fp string, ago, n int) {
	t.Helper()
	_, err := pool.Exec(context.Background(), `INSERT INTO "`+prefix+`_rates" (fingerprint, hour, count)
VALUES ($1, date_trunc('hour', now()) - make_interval(hours => $2), $3)
ON CONFLICT (fingerprint, hour) DO UPDATE SET count = EXCLUDED.count`, fp, ago, n)
	if err != nil {
		t.Fatal(err)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
