package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/hospital"
	"github.com/antidote-mq/antidote/hospital/web"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/internal/testenv/hospitalstore"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/pgstore"
	"github.com/antidote-mq/antidote/poison"
	"github.com/antidote-mq/antidote/redisstore"
)

// sentLetters records the letters a publisher sent.
type sentLetters struct {
	message.Publisher
	mu      sync.Mutex
	letters []*message.Message
}

func (s *sentLetters) Publish(topic string, msgs ...*message.Message) error {
	if err := s.Publisher.Publish(topic, msgs...); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range msgs {
		s.letters = append(s.letters, m.Copy())
	}
	return nil
}

func (s *sentLetters) sent() []*message.Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*message.Message(nil), s.letters...)
}

func pgBroker(url string) adapters.Config {
	return adapters.Config{Broker: adapters.KindPostgres, Postgres: adapters.PostgresConfig{URL: url}}
}

// cardPayload is a payload with a card number in it: what must never be
// shown under another letter.
func cardPayload(i int) []byte {
	return fmt.Appendf(nil, `{"card":"4111-1111-1111-%04d","blob":"%s"}`, i, strings.Repeat("x", 200<<10))
}

// claimChecked sends n messages through Antidote's DeadLetter on the
// PostgreSQL broker, as a service does: each of ~200 KiB, with a card
// number and a 2 KB tenant entry, failing permanently. The DLQ's publisher
// takes 32 KiB (plus the letters' 64 KiB of headroom), so even shrunk
// the letters do not fit and their payload and tenant go to cc. It
// returns the originals and the letters as published, and deletes their
// claims (only those) from cc when t ends.
func claimChecked(t *testing.T, url, topic string, cc poison.ClaimCheck, n int) (origs, letters []*message.Message) {
	t.Helper()
	ctx := context.Background()
	src, err := adapters.Open(ctx, pgBroker(url), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	small := pgBroker(url)
	small.Postgres.MaxMessageBytes = 32 << 10
	dlqBroker, err := adapters.Open(ctx, small, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dlqBroker.Close()
	rec := &sentLetters{Publisher: dlqBroker.Publisher}
	dl, err := middleware.NewDeadLetter(middleware.DeadLetterConfig{Publisher: rec, ClaimCheck: cc, FailedPublishPause: -1})
	if err != nil {
		t.Fatal(err)
	}
	r, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	r.AddMiddleware(dl.Middleware)
	r.AddConsumerHandler("charge", topic, src.Subscriber, func(*message.Message) error {
		return poison.Permanent(errors.New("card declined"))
	})
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { _ = r.Run(runCtx) }()
	<-r.Running()
	for i := 0; i < n; i++ {
		m := message.NewMessage(fmt.Sprintf("%s-m%d", topic, i), cardPayload(i))
		m.Metadata.Set("tenant", strings.Repeat(fmt.Sprint(i), 2000))
		m.Metadata.Set("partition_key", "k")
		origs = append(origs, m)
	}
	if err := src.Publisher.Publish(topic, origs...); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 60*time.Second, fmt.Sprintf("%d letters dead-lettered", n), func() bool { return len(rec.sent()) >= n })
	_ = r.Close()
	letters = rec.sent()
	if len(letters) != n {
		t.Fatalf("%d letters, want %d", len(letters), n)
	}
	for i, l := range letters {
		key := l.Metadata.Get(poison.KeyClaimCheck)
		if key == "" || len(l.Payload) != 0 || l.UUID != origs[i].UUID {
			t.Fatalf("letter %d (%s) is not claim-checked: %d bytes, claim %q", i, l.UUID, len(l.Payload), key)
		}
		t.Cleanup(func() { _ = cc.Delete(context.Background(), key) })
	}
	return origs, letters
}

// cli runs the command line in-process, as main does, and wants exit
// code want.
func cli(t *testing.T, want int, args ...string) (string, string) {
	t.Helper()
	code, out, errOut := runCode(t, "", args...)
	if code != want {
		t.Fatalf("antidote %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, want, out, errOut)
	}
	return out, errOut
}

// stored is every letter of dlqTopic in the hospital store, whole, by
// UUID (of two with one UUID, the one ingested first).
func stored(t *testing.T, table, dlqTopic string) map[string]hospital.Letter {
	t.Helper()
	out := map[string]hospital.Letter{}
	for _, l := range storedAll(t, table, dlqTopic) {
		if _, dup := out[l.UUID]; !dup {
			out[l.UUID] = l
		}
	}
	return out
}

// storedAll is every letter of dlqTopic in the hospital store, whole, in
// ingest order.
func storedAll(t *testing.T, table, dlqTopic string) []hospital.Letter {
	t.Helper()
	ctx := context.Background()
	store, err := pgstore.NewHospitalStore(ctx, pgstore.HospitalStoreConfig{Pool: hospitalstore.Pool(t), Table: table})
	if err != nil {
		t.Fatal(err)
	}
	ids, err := hospital.Select(ctx, store, hospital.LetterQuery{DLQTopic: dlqTopic})
	if err != nil {
		t.Fatal(err)
	}
	var out []hospital.Letter
	for _, id := range ids {
		l, err := store.Letter(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, l)
	}
	return out
}

// wantWhole checks that the store holds each original whole: payload,
// the tenant that was in the claim, no claim reference, no problem.
func wantWhole(t *testing.T, got map[string]hospital.Letter, origs ...*message.Message) {
	t.Helper()
	for _, o := range origs {
		l, ok := got[o.UUID]
		switch {
		case !ok:
			t.Errorf("letter %s not stored", o.UUID)
		case !bytes.Equal(l.Payload, o.Payload) || l.Metadata["tenant"] != o.Metadata.Get("tenant") || l.Metadata["partition_key"] != "k" ||
			l.Metadata[poison.KeyClaimCheck] != "" || l.Problem != "" || l.Handler != "charge" || l.Reason != string(poison.ReasonPermanent):
			t.Errorf("letter %s stored with %d bytes (want %d), tenant of %d bytes, claim %q, handler %q, reason %q, problem %q",
				o.UUID, len(l.Payload), len(o.Payload), len(l.Metadata["tenant"]), l.Metadata[poison.KeyClaimCheck], l.Handler, l.Reason, l.Problem)
		}
	}
}

// A letter DeadLetter claim-checked on a real broker, ingested with
// --claim-check postgres (or redis), is stored with its whole payload and
// metadata: counted in and out.
func TestHospitalIngestStoresClaimCheckedLettersWhole(t *testing.T) {
	url := testenv.PostgresURL(t)
	for _, kind := range []string{"postgres", "redis"} {
		t.Run(kind, func(t *testing.T) {
			t.Setenv("ANTIDOTE_BROKER", "postgres")
			t.Setenv("ANTIDOTE_POSTGRES_URL", url)
			t.Setenv(envHospitalURL, url)
			t.Setenv(envClaimCheck, "")
			var cc poison.ClaimCheck
			if kind == "postgres" {
				st, err := pgstore.NewClaimCheckStore(context.Background(), pgstore.ClaimCheckStoreConfig{URL: url})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = st.Close() })
				cc = st
			} else {
				addr := testenv.RedisAddr(t)
				t.Setenv(envRedisAddr, addr)
				st, err := redisstore.NewClaimCheckStore(redisstore.ClaimCheckStoreConfig{Addr: addr})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = st.Close() })
				cc = st
			}
			topic := "hclaim_" + watermill.NewShortUUID()
			table := hospitalstore.Name(t, "hclaim_")
			origs, _ := claimChecked(t, url, topic, cc, 3)
			out, _ := cli(t, exitOK, "hospital", "ingest", "--topics", topic, "--idle", "3s", "--table", table, "--claim-check", kind)
			if !strings.Contains(out, "3 letters received: 3 new, 0 already stored, 0 with a problem") {
				t.Errorf("ingest: %q", out)
			}
			got := stored(t, table, topic+".dlq")
			if len(got) != 3 {
				t.Errorf("%d letters stored, want 3", len(got))
			}
			wantWhole(t, got, origs...)
		})
	}
}

// forgeries publishes, with a raw client straight to topic's DLQ, letters
// that carry the claim reference of victim (a claim-checked letter): one
// of the forger's own (own UUID and envelope), a copy of the victim's
// letter under another UUID, and one with the victim's UUID but another
// handler (and another failure time, so the hospital stores it as a
// letter of its own). It returns them.
func forgeries(t *testing.T, url, topic string, victim *message.Message) []*message.Message {
	t.Helper()
	key := victim.Metadata.Get(poison.KeyClaimCheck)
	own := message.NewMessage(topic+"-forger", nil)
	own.Metadata.Set(poison.KeyOriginalTopic, topic)
	own.Metadata.Set(poison.KeyHandler, "coupons")
	own.Metadata.Set(poison.KeyReason, string(poison.ReasonPermanent))
	own.Metadata.Set(poison.KeyLastFailedAt, time.Now().UTC().Format(time.RFC3339Nano))
	own.Metadata.Set(poison.KeyClaimCheck, key)
	copied := victim.Copy()
	copied.UUID = topic + "-copy"
	sameUUID := victim.Copy()
	sameUUID.Metadata.Set(poison.KeyHandler, "coupons")
	sameUUID.Metadata.Set(poison.KeyLastFailedAt, time.Now().Add(time.Hour).UTC().Format(time.RFC3339Nano))
	forged := []*message.Message{own, copied, sameUUID}
	b, err := adapters.Open(context.Background(), pgBroker(url), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for _, m := range forged {
		if err := b.Publisher.Publish(topic+".dlq", m.Copy()); err != nil {
			t.Fatal(err)
		}
	}
	return forged
}

// A claim reference a forger copied into letters of their own (written
// straight to the DLQ) resolves to nothing, the mismatch named: in
// antidote dlq show, at ingest (stored with the problem noted, without the
// victim's payload, and ingest goes on: every letter counted) and in the
// web UI of antidote hospital serve. The victim's own letter stays whole.
func TestForgedClaimReferenceResolvesToNothing(t *testing.T) {
	url := testenv.PostgresURL(t)
	t.Setenv("ANTIDOTE_BROKER", "postgres")
	t.Setenv("ANTIDOTE_POSTGRES_URL", url)
	t.Setenv(envHospitalURL, "")
	t.Setenv(envClaimCheck, "")
	st, err := pgstore.NewClaimCheckStore(context.Background(), pgstore.ClaimCheckStoreConfig{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	topic := "hforge_" + watermill.NewShortUUID()
	origs, letters := claimChecked(t, url, topic, st, 1)
	forged := forgeries(t, url, topic, letters[0])
	victimCard := "4111-1111-1111-0000"

	// antidote dlq show, reading the broker's DLQ.
	out, _ := cli(t, exitOK, "dlq", "show", "--topic", topic, "--claim-check", "postgres", "--json", origs[0].UUID)
	if !strings.Contains(out, victimCard) {
		t.Errorf("dlq show of the victim's own letter does not show its payload")
	}
	for _, f := range forged[:2] { // the third has the victim's UUID: show finds the victim's letter
		// The rest of the letter is shown, its problem named, never the
		// victim's payload.
		code, out, errOut := runCode(t, "", "dlq", "show", "--topic", topic, "--claim-check", "postgres", f.UUID)
		if code != exitOK || strings.Contains(out, victimCard) || !strings.Contains(out, "made for another letter") ||
			!strings.Contains(out, f.UUID) || !strings.Contains(out, f.Metadata.Get(poison.KeyClaimCheck)) {
			t.Errorf("dlq show %s: exit %d\nstdout: %s\nstderr: %s\nwant the letter shown with its problem naming the key and the mismatch, without the victim's payload", f.UUID, code, out, errOut)
		}
	}

	// Ingest, with the claim-check store.
	t.Setenv(envHospitalURL, url)
	table := hospitalstore.Name(t, "hforge_")
	out, _ = cli(t, exitOK, "hospital", "ingest", "--topics", topic, "--idle", "3s", "--table", table, "--claim-check", "postgres")
	if !strings.Contains(out, "4 letters received: 4 new, 0 already stored, 3 with a problem") {
		t.Errorf("ingest: %q", out)
	}
	all := storedAll(t, table, topic+".dlq")
	if len(all) != 4 {
		t.Fatalf("%d letters stored, want 4", len(all))
	}
	var ids []int64
	for _, l := range all {
		switch {
		case l.UUID == origs[0].UUID && l.Handler == "charge":
			wantWhole(t, map[string]hospital.Letter{l.UUID: l}, origs[0])
			continue
		case l.UUID == origs[0].UUID: // the victim's UUID, another handler
			if !strings.Contains(l.Problem, `antidote.handler was "charge", this letter's is "coupons"`) {
				t.Errorf("the same-UUID forgery stored with problem %q", l.Problem)
			}
		default:
			if !strings.Contains(l.Problem, "made for another letter ("+origs[0].UUID+")") {
				t.Errorf("forged letter %s stored with problem %q", l.UUID, l.Problem)
			}
		}
		if len(l.Payload) != 0 || l.Metadata["tenant"] != "" || !strings.Contains(l.Problem, l.Metadata[poison.KeyClaimCheck]) {
			t.Errorf("forged letter %s stored with %d bytes, tenant of %d bytes, problem %q", l.UUID, len(l.Payload), len(l.Metadata["tenant"]), l.Problem)
		}
		ids = append(ids, l.ID)
	}
	if len(ids) != 3 {
		t.Errorf("%d forged letters stored, want 3", len(ids))
	}

	// The web UI, which reads the claims the forged letters still name.
	base := serveCLI(t, "--table", table, "--claim-check", "postgres")
	for _, id := range ids {
		r := httpGet(t, base+"/api/letters/"+itoa(id))
		var l web.APILetter
		if err := json.Unmarshal([]byte(r), &l); err != nil {
			t.Fatalf("GET /api/letters/%d: %v\n%s", id, err, r)
		}
		if len(l.Payload) != 0 || strings.Contains(r, victimCard) || l.ClaimCheck == nil || !l.ClaimCheck.Mismatch || !strings.Contains(l.ClaimCheck.Problem, "made for another letter") {
			t.Errorf("web API, forged letter %d: %d bytes, claim %+v", id, len(l.Payload), l.ClaimCheck)
		}
		if page := httpGet(t, base+"/letters/"+itoa(id)); strings.Contains(page, victimCard) || !strings.Contains(page, "made for another letter") {
			t.Errorf("web page of forged letter %d shows the victim's payload or hides the mismatch", id)
		}
	}
}

// A letter ingested before the claim-check store was configured (payload
// empty, the problem noted) is shown whole by antidote hospital serve
// --claim-check postgres: its letter page and /api/letters/{id}.
func TestHospitalServeShowsLettersIngestedWithoutClaims(t *testing.T) {
	url := testenv.PostgresURL(t)
	t.Setenv("ANTIDOTE_BROKER", "postgres")
	t.Setenv("ANTIDOTE_POSTGRES_URL", url)
	t.Setenv(envHospitalURL, url)
	t.Setenv(envClaimCheck, "")
	st, err := pgstore.NewClaimCheckStore(context.Background(), pgstore.ClaimCheckStoreConfig{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	topic := "hserve_" + watermill.NewShortUUID()
	table := hospitalstore.Name(t, "hserve_")
	origs, _ := claimChecked(t, url, topic, st, 2)
	out, _ := cli(t, exitOK, "hospital", "ingest", "--topics", topic, "--idle", "3s", "--table", table)
	if !strings.Contains(out, "2 letters received: 2 new, 0 already stored, 2 with a problem") {
		t.Errorf("ingest without the claim-check store: %q", out)
	}
	got := stored(t, table, topic+".dlq")
	base := serveCLI(t, "--table", table, "--claim-check", "postgres")
	for _, o := range origs {
		l := got[o.UUID]
		if len(l.Payload) != 0 || !strings.Contains(l.Problem, "claim check") {
			t.Fatalf("letter %s stored with %d bytes, problem %q; want it as ingest without the store keeps it", o.UUID, len(l.Payload), l.Problem)
		}
		var a web.APILetter
		if err := json.Unmarshal([]byte(httpGet(t, base+"/api/letters/"+itoa(l.ID))), &a); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a.Payload, o.Payload) || a.Metadata["tenant"] != o.Metadata.Get("tenant") || a.ClaimCheck == nil || !a.ClaimCheck.Resolved {
			t.Errorf("web API, letter %s: %d bytes (want %d), tenant of %d bytes, claim %+v", o.UUID, len(a.Payload), len(o.Payload), len(a.Metadata["tenant"]), a.ClaimCheck)
		}
		page := httpGet(t, base+"/letters/"+itoa(l.ID)+"?full=1")
		if !strings.Contains(page, string(o.Payload[9:28])) || !strings.Contains(page, strings.Repeat("x", 200<<10)) || !strings.Contains(page, "read from the claim-check store") {
			t.Errorf("web page of letter %s does not show its payload whole", o.UUID)
		}
	}
}

// A claim gone (deleted from the store; or with a Redis restarted without
// persistence) is a letter stored with the problem noted, and ingest goes
// on with the letters behind it: each counted.
func TestIngestGoesOnPastClaimsGone(t *testing.T) {
	url := testenv.PostgresURL(t)
	t.Run("deleted", func(t *testing.T) {
		t.Setenv("ANTIDOTE_BROKER", "postgres")
		t.Setenv("ANTIDOTE_POSTGRES_URL", url)
		t.Setenv(envHospitalURL, url)
		t.Setenv(envClaimCheck, "postgres")
		st, err := pgstore.NewClaimCheckStore(context.Background(), pgstore.ClaimCheckStoreConfig{URL: url})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = st.Close() })
		topic := "hgone_" + watermill.NewShortUUID()
		table := hospitalstore.Name(t, "hgone_")
		origs, letters := claimChecked(t, url, topic, st, 3)
		if err := st.Delete(context.Background(), letters[0].Metadata.Get(poison.KeyClaimCheck)); err != nil {
			t.Fatal(err)
		}
		deadLetter(t, pgBroker(url), topic, 2) // small letters behind them
		out, _ := cli(t, exitOK, "hospital", "ingest", "--topics", topic, "--idle", "3s", "--table", table)
		if !strings.Contains(out, "5 letters received: 5 new, 0 already stored, 1 with a problem") {
			t.Errorf("ingest: %q", out)
		}
		got := stored(t, table, topic+".dlq")
		if len(got) != 5 {
			t.Errorf("%d letters stored, want 5", len(got))
		}
		wantGone(t, got[origs[0].UUID])
		wantWhole(t, got, origs[1:]...)
	})
	t.Run("redis restarted without persistence", func(t *testing.T) {
		redis := testenv.StartRedis(t)
		t.Setenv("ANTIDOTE_BROKER", "postgres")
		t.Setenv("ANTIDOTE_POSTGRES_URL", url)
		t.Setenv(envHospitalURL, url)
		t.Setenv(envClaimCheck, "redis")
		t.Setenv(envRedisAddr, redis.Addr)
		st, err := redisstore.NewClaimCheckStore(redisstore.ClaimCheckStoreConfig{Addr: redis.Addr})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = st.Close() })
		topic := "hrgone_" + watermill.NewShortUUID()
		table := hospitalstore.Name(t, "hrgone_")
		before, _ := claimChecked(t, url, topic+"_a", st, 2)
		if err := redis.Stop(); err != nil {
			t.Fatal(err)
		}
		if err := redis.Start(); err != nil {
			t.Fatal(err)
		}
		after, _ := claimChecked(t, url, topic+"_b", st, 1)
		deadLetter(t, pgBroker(url), topic+"_b", 2)
		out, _ := cli(t, exitOK, "hospital", "ingest", "--topics", topic+"_a,"+topic+"_b", "--idle", "3s", "--table", table)
		if !strings.Contains(out, "5 letters received: 5 new, 0 already stored, 2 with a problem") {
			t.Errorf("ingest: %q", out)
		}
		a, b := stored(t, table, topic+"_a.dlq"), stored(t, table, topic+"_b.dlq")
		if len(a) != 2 || len(b) != 3 {
			t.Errorf("%d and %d letters stored, want 2 and 3", len(a), len(b))
		}
		for _, o := range before {
			wantGone(t, a[o.UUID])
		}
		wantWhole(t, b, after...)
	})
}

// wantGone checks a letter whose claim is gone: stored, empty, the
// problem naming the claim not found.
func wantGone(t *testing.T, l hospital.Letter) {
	t.Helper()
	if l.ID == 0 || len(l.Payload) != 0 || !strings.Contains(l.Problem, "claim check not found") || l.Metadata[poison.KeyClaimCheck] == "" {
		t.Errorf("letter %s whose claim is gone: id %d, %d bytes, problem %q", l.UUID, l.ID, len(l.Payload), l.Problem)
	}
}

// One claim-check setting for every command that reads letters: the flag,
// else ANTIDOTE_CLAIM_CHECK, else claim_check in --config. A bad value is
// exit code 2 naming where it came from and the choices; a store that does
// not answer is exit code 4.
func TestClaimCheckConfiguration(t *testing.T) {
	url := testenv.PostgresURL(t)
	t.Setenv("ANTIDOTE_BROKER", "postgres")
	t.Setenv("ANTIDOTE_POSTGRES_URL", url)
	t.Setenv(envHospitalURL, url)
	t.Setenv(envClaimCheck, "")
	t.Setenv(envRedisAddr, "")
	table := hospitalstore.Name(t, "hcfg_")
	commands := [][]string{
		{"hospital", "ingest", "--topics", "hcfg_none", "--idle", "1s", "--table", table},
		{"hospital", "serve", "--addr", "127.0.0.1:0", "--table", table},
		{"dlq", "list", "--topic", "hcfg_none"},
	}
	dir := t.TempDir()
	config := func(text string) string {
		p := filepath.Join(dir, fmt.Sprintf("c%d.yaml", time.Now().UnixNano()))
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, args := range commands {
		name := strings.Join(args[:2], " ")
		for _, tc := range []struct {
			env   string
			extra []string
			want  []string
		}{
			{extra: []string{"--claim-check", "s3"}, want: []string{`--claim-check "s3"`, "postgres, redis"}},
			{env: "s3", want: []string{envClaimCheck + ` "s3"`, "postgres, redis"}},
			{extra: []string{"--config", config("broker: postgres\nclaim_check:\n  store: s3\n")}, want: []string{`line 2: claim_check.store "s3"`, "postgres, redis"}},
			{extra: []string{"--config", config("claim_check:\n  bucket: x\n")}, want: []string{"claim_check.bucket", "store, table, prefix"}},
			{extra: []string{"--config", config("claim_check: {store: redis, table: x}\n")}, want: []string{"claim_check.table is for the postgres store"}},
		} {
			t.Setenv(envClaimCheck, tc.env)
			code, _, errOut := runCode(t, "", append(append([]string{}, args...), tc.extra...)...)
			if code != exitUsage {
				t.Errorf("%s %v (%s=%q): exit %d, want 2\n%s", name, tc.extra, envClaimCheck, tc.env, code, errOut)
			}
			for _, w := range tc.want {
				if !strings.Contains(errOut, w) {
					t.Errorf("%s %v (%s=%q): %q does not say %q", name, tc.extra, envClaimCheck, tc.env, errOut, w)
				}
			}
		}
		t.Setenv(envClaimCheck, "")
		t.Setenv(envRedisAddr, "127.0.0.1:1")
		if code, _, errOut := runCode(t, "", append(append([]string{}, args...), "--claim-check", "redis")...); code != exitUnreachable || !strings.Contains(errOut, "claim-check store redis at 127.0.0.1:1") {
			t.Errorf("%s with an unreachable Redis: exit %d, want 4\n%s", name, code, errOut)
		}
		t.Setenv(envRedisAddr, "")
	}
	// postgres is found at postgres.url / ANTIDOTE_POSTGRES_URL.
	t.Setenv("ANTIDOTE_POSTGRES_URL", "postgres://nobody@127.0.0.1:1/none?connect_timeout=2")
	if code, _, errOut := runCode(t, "", "dlq", "list", "--topic", "hcfg_none", "--claim-check", "postgres"); code != exitUnreachable || !strings.Contains(errOut, "claim-check store postgres") {
		t.Errorf("dlq with an unreachable PostgreSQL claim-check store: exit %d, want 4\n%s", code, errOut)
	}

	// Which one wins, and the section is the adapters' parser's no more.
	t.Setenv("ANTIDOTE_POSTGRES_URL", url)
	path := config("broker: postgres\nclaim_check:\n  store: redis\npostgres:\n  url: " + url + "\n")
	for _, tc := range []struct{ env, flag, want string }{
		{"", "", "redis"}, {"postgres", "", "postgres"}, {"postgres", "redis", "redis"}, {"", "postgres", "postgres"},
	} {
		t.Setenv(envClaimCheck, tc.env)
		f := &hospitalFlags{config: path, claimCheck: tc.flag}
		cfg, _, err := f.loadOptional()
		if err != nil || cfg.Postgres.URL != url {
			t.Fatalf("%v (postgres.url %q)", err, cfg.Postgres.URL)
		}
		if f.claims.Store != tc.want {
			t.Errorf("file redis, %s=%q, --claim-check %q: store %q, want %q", envClaimCheck, tc.env, tc.flag, f.claims.Store, tc.want)
		}
	}
	t.Setenv(envClaimCheck, "")
	f := &hospitalFlags{config: config("claim_check: {store: redis, prefix: 'p:'}\n")}
	if _, _, err := f.loadOptional(); err != nil || f.claims.Prefix != "p:" {
		t.Errorf("claim_check.prefix: %q, %v", f.claims.Prefix, err)
	}
}

var servingRE = regexp.MustCompile(`serving (http://\S+) `)

// serveCLI runs antidote hospital serve in-process, as an operator starts
// it (on loopback, so without a token), and returns its base URL; it is
// stopped when t ends.
func serveCLI(t *testing.T, args ...string) string {
	t.Helper()
	t.Setenv(envHospitalToken, "")
	ctx, cancel := context.WithCancel(context.Background())
	stderr := &syncBuffer{}
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, append([]string{"hospital", "serve", "--addr", "127.0.0.1:0"}, args...), strings.NewReader(""), io.Discard, stderr)
	}()
	var base string
	testenv.Eventually(t, 30*time.Second, "hospital serve to listen", func() bool {
		select {
		case code := <-done:
			t.Fatalf("hospital serve exited %d:\n%s", code, stderr.String())
		default:
		}
		if m := servingRE.FindStringSubmatch(stderr.String()); m != nil {
			base = m[1]
		}
		return base != ""
	})
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != exitOK {
			t.Errorf("hospital serve exited %d:\n%s", code, stderr.String())
		}
	})
	return base
}

func httpGet(t *testing.T, u string) string {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d\n%s", u, resp.StatusCode, b)
	}
	return string(b)
}

func itoa(n int64) string { return fmt.Sprint(n) }
