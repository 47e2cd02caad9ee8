package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/hospital"
	"github.com/antidote-mq/antidote/hospital/web"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/internal/testenv/hospitalstore"
	"github.com/antidote-mq/antidote/pgstore"
	"github.com/antidote-mq/antidote/poison"
)

// groupView is what the comparison keeps of a group.
type groupView struct {
	Count               int64
	FirstSeen, LastSeen time.Time
}

// One hospital: `antidote dlq group` on a broker's DLQ, the web UI's groups
// of the same letters once ingested, and `antidote dlq group` on the store
// are the same groups: the same fingerprints, counts, and first and last
// seen (when the letters failed).
func TestDLQGroupIsTheHospitalsGrouping(t *testing.T) {
	url := testenv.PostgresURL(t)
	t.Setenv("ANTIDOTE_BROKER", "postgres")
	t.Setenv("ANTIDOTE_POSTGRES_URL", url)
	t.Setenv("COLUMNS", "")
	cfg := adapters.Config{Broker: adapters.KindPostgres, Postgres: adapters.PostgresConfig{URL: url}}
	topic := "hgrp_" + strings.ToLower(watermill.NewShortUUID())
	b, err := adapters.Open(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now().UTC().Add(-3 * time.Hour)
	for i := range 40 {
		m := message.NewMessage(watermill.NewUUID(), fmt.Appendf(nil, `{"user_id":%d,"msg":"hi"}`, i))
		m.Metadata.Set(poison.KeyProducer, fmt.Sprintf("billing/host-%d-%d", i%5, 1000+i%5))
		var err error
		reason := poison.ReasonPermanent
		switch i % 4 {
		case 0:
			err = fmt.Errorf("user %d not found", i)
		case 1:
			err = fmt.Errorf("stock negative for sku %d: %d left", 100+i, -i)
		case 2:
			err = errors.New("connection refused")
			reason = poison.ReasonRetriesExhausted
		case 3:
			err = &poison.PanicError{Value: "nil map", Stack: []byte(fmt.Sprintf("goroutine %d [running]:\nshop.handle(0x%x)\n\t/app/shop.go:%d +0x1\n", i, i, 10+i))}
			reason = poison.ReasonPanic
		}
		at := start.Add(time.Duration(i) * time.Minute)
		letter := poison.Envelope(m, poison.Origin{Topic: topic, Handler: "orders"},
			poison.Failure{Reason: reason, Err: err, Attempts: 1, FirstFailedAt: at.Add(-time.Second), LastFailedAt: at})
		if err := b.Publisher.Publish(topic+".dlq", letter); err != nil {
			t.Fatal(err)
		}
	}
	_ = b.Close()

	cliGroups := func(args ...string) map[string]groupView {
		t.Helper()
		code, out, errOut := runCode(t, "", append([]string{"dlq", "group", "--topic", topic, "--json"}, args...)...)
		if code != exitOK {
			t.Fatalf("dlq group %v: exit code %d\n%s", args, code, errOut)
		}
		got := map[string]groupView{}
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			var g hospital.Group
			if err := json.Unmarshal([]byte(line), &g); err != nil {
				t.Fatalf("%v: %s", err, line)
			}
			got[g.Fingerprint.ID] = groupView{g.Count, g.FirstSeen, g.LastSeen}
		}
		return got
	}
	onBroker := cliGroups()

	t.Setenv(envHospitalURL, url)
	table := hospitalstore.Name(t, "hgrp_")
	if code, out, errOut := runCode(t, "", "hospital", "ingest", "--topics", topic, "--idle", "3s", "--table", table); code != exitOK || !strings.Contains(out, "40 letters received: 40 new") {
		t.Fatalf("ingest: exit code %d\n%s\n%s", code, out, errOut)
	}
	store, err := pgstore.NewHospitalStore(context.Background(), pgstore.HospitalStoreConfig{Pool: hospitalstore.Pool(t), Table: table})
	if err != nil {
		t.Fatal(err)
	}
	h, err := web.New(web.Config{Store: store})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "http://127.0.0.1/api/groups?order=count&limit=1000", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /api/groups: %d %s", rec.Code, rec.Body)
	}
	var api web.APIGroups
	if err := json.Unmarshal(rec.Body.Bytes(), &api); err != nil {
		t.Fatal(err)
	}
	inWeb := map[string]groupView{}
	for _, g := range api.Groups {
		inWeb[g.Fingerprint] = groupView{g.Dead, g.FirstSeen, g.LastSeen}
	}
	onStore := cliGroups("--hospital-table", table)

	same := func(what string, a, b map[string]groupView) {
		t.Helper()
		if len(a) != len(b) || len(a) == 0 {
			t.Errorf("%s: %d groups and %d", what, len(a), len(b))
		}
		for fp, ga := range a {
			gb, ok := b[fp]
			// The store keeps microseconds.
			close := func(x, y time.Time) bool { return x.Sub(y).Abs() <= time.Microsecond }
			if !ok || ga.Count != gb.Count || !close(ga.FirstSeen, gb.FirstSeen) || !close(ga.LastSeen, gb.LastSeen) {
				t.Errorf("%s: group %s is %+v and %+v", what, fp, ga, gb)
			}
		}
	}
	same("dlq group on the broker vs the web UI", onBroker, inWeb)
	same("the web UI vs dlq group on the store", inWeb, onStore)
	var counts []int64
	for _, g := range inWeb {
		counts = append(counts, g.Count)
	}
	sort.Slice(counts, func(i, j int) bool { return counts[i] > counts[j] })
	// Four bugs from five producer processes of one service: four groups.
	if len(inWeb) != 4 || counts[0] != 10 || counts[3] != 10 {
		t.Errorf("%d groups %v, want 4 of 10: one per bug, whichever process produced it", len(inWeb), counts)
	}
	// First and last seen are failures, all over two hours before the
	// ingest.
	for fp, g := range inWeb {
		if g.FirstSeen.Before(start.Add(-time.Minute)) || g.LastSeen.After(start.Add(40*time.Minute)) {
			t.Errorf("group %s seen %s to %s, want its failures (%s to 40 minutes later)", fp, g.FirstSeen, g.LastSeen, start)
		}
	}
}
