package hello

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	"go.yaml.in/yaml/v3"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/fingerprint"
	"github.com/antidote-mq/antidote/hospital"
	"github.com/antidote-mq/antidote/hospital/web"
	"github.com/antidote-mq/antidote/internal/testenv/hospitalstore"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/poison"
	"github.com/antidote-mq/antidote/telemetry"
	"github.com/antidote-mq/antidote/throttle"
)

// The files in deploy/ this test reads.
var (
	deployDir        = filepath.Join("..", "..", "..", "deploy")
	dashboardFile    = filepath.Join(deployDir, "grafana", "dashboards", "antidote.json")
	alertsFile       = filepath.Join(deployDir, "prometheus", "alerts.yml")
	prometheusConfig = filepath.Join(deployDir, "prometheus.yml")
)

// promQuery is one PromQL expression of deploy/: where names it in
// failure messages.
type promQuery struct{ where, expr string }

// grafanaVar is $name or ${name} (Grafana's variables and $__ macros).
var grafanaVar = regexp.MustCompile(`\$\{?(\w+)\}?`)

// toPromQL replaces Grafana's variables in a panel's query: interval macros
// by a duration, the others (inside label matchers) by a regex.
func toPromQL(expr string) string {
	return grafanaVar.ReplaceAllStringFunc(expr, func(v string) string {
		if strings.HasPrefix(strings.Trim(v, "${}"), "__") {
			return "5m"
		}
		return ".*"
	})
}

const datasourceRef = "${datasource}"

type grafanaDS struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

// dashboardQueries checks the dashboard's structure (the data-source
// variable used by every panel and query, the job, topic and handler
// variables defined and used) and returns its PromQL: every target and
// every variable's label_values selector.
func dashboardQueries(t *testing.T) []promQuery {
	t.Helper()
	data, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		UID        string `json:"uid"`
		Templating struct {
			List []struct {
				Name       string          `json:"name"`
				Type       string          `json:"type"`
				Query      json.RawMessage `json:"query"`
				Datasource grafanaDS       `json:"datasource"`
			} `json:"list"`
		} `json:"templating"`
		Panels []struct {
			Title      string    `json:"title"`
			Type       string    `json:"type"`
			Datasource grafanaDS `json:"datasource"`
			Targets    []struct {
				Expr       string    `json:"expr"`
				Datasource grafanaDS `json:"datasource"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	if d.UID != "antidote-messaging" {
		t.Errorf("dashboard uid %q: docker-compose.yml links to /d/antidote-messaging", d.UID)
	}
	var queries []promQuery
	vars := map[string]bool{}
	labelValues := regexp.MustCompile(`^label_values\((.+),\s*(\w+)\)$`)
	for _, v := range d.Templating.List {
		vars[v.Name] = true
		switch v.Type {
		case "datasource":
			var q string
			if err := json.Unmarshal(v.Query, &q); err != nil || q != "prometheus" || v.Name != "datasource" {
				t.Errorf("data-source variable %q: query %s, want the variable \"datasource\" of type prometheus", v.Name, v.Query)
			}
		case "query":
			if v.Datasource != (grafanaDS{Type: "prometheus", UID: datasourceRef}) {
				t.Errorf("variable %q queries data source %+v, want %s", v.Name, v.Datasource, datasourceRef)
			}
			var q struct {
				Query string `json:"query"`
			}
			if err := json.Unmarshal(v.Query, &q); err != nil {
				t.Errorf("variable %q: query %s: %v", v.Name, v.Query, err)
			}
			m := labelValues.FindStringSubmatch(q.Query)
			if m == nil {
				t.Errorf("variable %q: query %q is not label_values(selector, label)", v.Name, q.Query)
				continue
			}
			queries = append(queries, promQuery{"variable " + v.Name, toPromQL(m[1])})
		default:
			t.Errorf("variable %q has type %q", v.Name, v.Type)
		}
	}
	for _, name := range []string{"datasource", "job", "topic", "handler"} {
		if !vars[name] {
			t.Errorf("the dashboard has no variable %q", name)
		}
	}
	used := map[string]bool{}
	for _, p := range d.Panels {
		if p.Type == "row" {
			continue
		}
		if p.Datasource != (grafanaDS{Type: "prometheus", UID: datasourceRef}) {
			t.Errorf("panel %q: data source %+v, want the variable (uid %s)", p.Title, p.Datasource, datasourceRef)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			if tg.Datasource != (grafanaDS{Type: "prometheus", UID: datasourceRef}) {
				t.Errorf("panel %q: a query's data source %+v, want the variable (uid %s)", p.Title, tg.Datasource, datasourceRef)
			}
			refs := map[string]bool{}
			for _, m := range grafanaVar.FindAllStringSubmatch(tg.Expr, -1) {
				refs[m[1]] = true
				if !strings.HasPrefix(m[1], "__") && !vars[m[1]] {
					t.Errorf("panel %q uses $%s, which is not a variable", p.Title, m[1])
				}
				used[m[1]] = true
			}
			// Every query follows the job picker; one that did not would
			// mix in every other service scraped by the same Prometheus.
			if !refs["job"] {
				t.Errorf("panel %q: query %q does not filter on $job", p.Title, tg.Expr)
			}
			queries = append(queries, promQuery{"panel " + p.Title, toPromQL(tg.Expr)})
		}
	}
	for _, name := range []string{"job", "topic", "handler"} {
		if !used[name] {
			t.Errorf("no panel query uses $%s", name)
		}
	}
	return queries
}

// alertQueries parses the alert rules with Prometheus' own rule-file
// parser (which also parses each expression and annotation template),
// checks what every alert needs to be actionable, and checks that
// prometheus.yml loads the file.
func alertQueries(t *testing.T) []promQuery {
	t.Helper()
	groups, errs := rulefmt.ParseFile(alertsFile, false, model.LegacyValidation)
	for _, err := range errs {
		t.Errorf("%s: %v", alertsFile, err)
	}
	if groups == nil {
		t.FailNow()
	}
	var queries []promQuery
	alerts := map[string]bool{}
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				t.Errorf("group %s: a recording rule %q; this file holds alerts only", g.Name, r.Record)
				continue
			}
			alerts[r.Alert] = true
			if r.For <= 0 {
				t.Errorf("alert %s has no for: one bad scrape would page", r.Alert)
			}
			if s := r.Labels["severity"]; s != "critical" && s != "warning" {
				t.Errorf("alert %s: severity %q, want critical or warning", r.Alert, s)
			}
			if r.Annotations["summary"] == "" || !strings.Contains(r.Annotations["description"], "Runbook:") {
				t.Errorf("alert %s needs a summary and a description with a Runbook: hint", r.Alert)
			}
			queries = append(queries, promQuery{"alert " + r.Alert, r.Expr})
		}
	}
	// What issue 25 asks the rules to cover.
	for _, a := range []string{"AntidoteDeadLetterRatioHigh", "AntidoteCrashLoopQuarantine", "AntidoteBreakerOpen",
		"AntidoteMessagesHeld", "AntidoteThrottleSaturated", "AntidoteBackpressureBlocking", "AntidoteHospitalGroupsGrowing"} {
		if !alerts[a] {
			t.Errorf("no alert %s", a)
		}
	}

	data, err := os.ReadFile(prometheusConfig)
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		RuleFiles []string `yaml:"rule_files"`
	}
	if err := yaml.Unmarshal(data, &cfg); err != nil {
		t.Fatalf("%s: %v", prometheusConfig, err)
	}
	loaded := false
	for _, f := range cfg.RuleFiles {
		loaded = loaded || filepath.Join(deployDir, f) == alertsFile
	}
	if !loaded {
		t.Errorf("%s: rule_files %q does not load %s (paths are relative to the config file)", prometheusConfig, cfg.RuleFiles, alertsFile)
	}
	return queries
}

// selector is one series selector of a query: its metric name (or the
// __name__ matcher, for {__name__=~"..."}), its other matchers, and the
// labels the aggregations above it group by.
type selector struct {
	q        promQuery
	name     string
	nameRe   *labels.Matcher
	matchers []*labels.Matcher
}

// grouping is one "by (...)" clause and the selectors it aggregates.
type grouping struct {
	q      promQuery
	labels []string
	under  []selector
}

// parseQueries parses every query with Prometheus' PromQL parser and
// returns its series selectors and groupings.
func parseQueries(t *testing.T, queries []promQuery) ([]selector, []grouping) {
	t.Helper()
	var sels []selector
	var groups []grouping
	for _, q := range queries {
		expr, err := parser.ParseExpr(q.expr)
		if err != nil {
			t.Errorf("%s: %q does not parse: %v", q.where, q.expr, err)
			continue
		}
		collect := func(n parser.Node) []selector {
			var out []selector
			parser.Inspect(n, func(n parser.Node, _ []parser.Node) error {
				vs, ok := n.(*parser.VectorSelector)
				if !ok {
					return nil
				}
				s := selector{q: q, name: vs.Name}
				for _, m := range vs.LabelMatchers {
					switch {
					case m.Name != labels.MetricName:
						s.matchers = append(s.matchers, m)
					case m.Type != labels.MatchEqual:
						s.nameRe = m
					}
				}
				out = append(out, s)
				return nil
			})
			return out
		}
		sels = append(sels, collect(expr)...)
		parser.Inspect(expr, func(n parser.Node, _ []parser.Node) error {
			if a, ok := n.(*parser.AggregateExpr); ok && !a.Without && len(a.Grouping) > 0 {
				groups = append(groups, grouping{q: q, labels: a.Grouping, under: collect(a.Expr)})
			}
			return nil
		})
	}
	return sels, groups
}

// exposition is what scrapes returned: per metric name as PromQL sees it
// (histograms as _bucket, _sum and _count), its label names and values.
type exposition map[string]map[string]map[string]bool

func (e exposition) add(t *testing.T, body []byte) {
	t.Helper()
	p := expfmt.NewTextParser(model.LegacyValidation)
	families, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("scrape does not parse: %v\n%s", err, body)
	}
	for name, f := range families {
		names := []string{name}
		switch f.GetType() {
		case dto.MetricType_HISTOGRAM:
			names = []string{name + "_bucket", name + "_sum", name + "_count"}
		case dto.MetricType_SUMMARY:
			names = []string{name, name + "_sum", name + "_count"}
		}
		for i, n := range names {
			if e[n] == nil {
				e[n] = map[string]map[string]bool{}
			}
			for _, m := range f.GetMetric() {
				for _, lp := range m.GetLabel() {
					if e[n][lp.GetName()] == nil {
						e[n][lp.GetName()] = map[string]bool{}
					}
					e[n][lp.GetName()][lp.GetValue()] = true
				}
				if f.GetType() == dto.MetricType_HISTOGRAM && i == 0 {
					e[n]["le"] = map[string]bool{"+Inf": true}
				}
			}
		}
	}
}

func (e exposition) names() []string {
	var out []string
	for n := range e {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// scrape reads url's /metrics into e.
func scrape(t *testing.T, e exposition, url string, header http.Header) error {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header = header
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return err
	}
	body, err := readAll(resp)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	e.add(t, body)
	return nil
}

// The labels Prometheus adds at scrape time, which no exporter serves.
var targetLabels = map[string]bool{"job": true, "instance": true}

// knownValues are label values a query may match with = although the
// scrapes did not show them: every reason Antidote dead-letters with
// (crash_loop needs the process to die, which the in-process run does not).
var knownValues = map[string][]string{
	"reason": {string(poison.ReasonPermanent), string(poison.ReasonRetriesExhausted), string(poison.ReasonCrashLoop),
		string(poison.ReasonUndecodable), string(poison.ReasonPanic), string(poison.ReasonFloodGuard)},
}

// checkAgainst reports every selector, matcher and grouping of deploy/'s
// queries that the exposition does not back: a metric name no scrape
// served, a label that metric does not have, a value it never takes.
func checkAgainst(t *testing.T, e exposition, sels []selector, groups []grouping) {
	t.Helper()
	matching := func(s selector) []string {
		if s.name != "" {
			if e[s.name] == nil {
				return nil
			}
			return []string{s.name}
		}
		var out []string
		for _, n := range e.names() {
			if s.nameRe != nil && s.nameRe.Matches(n) {
				out = append(out, n)
			}
		}
		return out
	}
	hasLabel := func(names []string, l string) bool {
		for _, n := range names {
			if e[n][l] != nil {
				return true
			}
		}
		return false
	}
	for _, s := range sels {
		names := matching(s)
		if len(names) == 0 {
			var served []string
			for _, n := range e.names() {
				if !strings.HasPrefix(n, "go_") && !strings.HasPrefix(n, "process_") {
					served = append(served, n)
				}
			}
			t.Errorf("%s: %q reads %s%v, which no scrape served (served: %v)", s.q.where, s.q.expr, s.name, s.nameRe, served)
			continue
		}
		for _, m := range s.matchers {
			if targetLabels[m.Name] {
				continue
			}
			if !hasLabel(names, m.Name) {
				t.Errorf("%s: %s has no label %q", s.q.where, names, m.Name)
				continue
			}
			if m.Type == labels.MatchEqual && m.Value != "" {
				seen := slices.Contains(knownValues[m.Name], m.Value)
				for _, n := range names {
					seen = seen || e[n][m.Name][m.Value]
				}
				if !seen {
					t.Errorf("%s: %s never has %s=%q", s.q.where, names, m.Name, m.Value)
				}
			}
		}
	}
	for _, g := range groups {
		var names []string
		for _, s := range g.under {
			names = append(names, matching(s)...)
		}
		for _, l := range g.labels {
			if !targetLabels[l] && !hasLabel(names, l) {
				t.Errorf("%s: %q groups by %q, which %v do not have", g.q.where, g.q.expr, l, names)
			}
		}
	}
}

// The rules, the dashboard and prometheus.yml parse, with Prometheus' own
// parsers, and have the structure the issue asks for; promtool checks
// them too where it is installed (not needed: apt-get install prometheus).
func TestDeployFilesParse(t *testing.T) {
	queries := append(dashboardQueries(t), alertQueries(t)...)
	sels, _ := parseQueries(t, queries)
	names := map[string]bool{}
	for _, s := range sels {
		names[s.name] = true
	}
	for _, n := range []string{"messaging_process_duration_seconds_bucket", "antidote_messages_dead_lettered_total",
		"antidote_breaker_held", "antidote_breaker_state", "antidote_consumer_lag", "antidote_hospital_groups",
		"antidote_hospital_group_dead_letters", "antidote_throttle_wait_seconds_total", "antidote_backpressure_blocks_total"} {
		if !names[n] {
			t.Errorf("nothing in deploy/ queries %s", n)
		}
	}
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Log("promtool not installed: checked with the Go parsers only")
		return
	}
	for _, args := range [][]string{{"check", "rules", alertsFile}, {"check", "config", "--syntax-only", prometheusConfig}} {
		if out, err := exec.Command(promtool, args...).CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// Every metric, label and label value the alert rules and the dashboard
// query is one the code serves, seen in live scrapes of
//   - the kafka example (embedded broker) with poison, stuck and duplicate
//     messages, throttled: the handler metrics, the breaker opening and
//     holding, throttle wait, consumer lag and the semconv metrics;
//   - the hospital's web handler (antidote hospital serve) over a
//     PostgreSQL store holding the dead letters that run produced;
//   - a backpressure publisher refusing a publish, wired to Metrics as
//     BackpressureConfig's documentation says.
func TestDeployQueriesUseExportedMetrics(t *testing.T) {
	queries := append(dashboardQueries(t), alertQueries(t)...)
	sels, groups := parseQueries(t, queries)
	if t.Failed() {
		t.FailNow()
	}
	if testing.Short() {
		t.Skip("runs the kafka example with an embedded broker and uses PostgreSQL; skipped with -short")
	}
	e := exposition{}

	// Backpressure: the example publishes without it.
	scrapeBackpressure(t, e)

	// The example, scraped while it runs until every name deploy/ reads
	// (but the hospital's and backpressure's) has appeared.
	wantFromExample := map[string]bool{}
	for _, s := range sels {
		if s.name != "" && !strings.HasPrefix(s.name, "antidote_hospital_") && e[s.name] == nil {
			wantFromExample[s.name] = true
		}
	}
	letters := runExampleScraped(t, e, wantFromExample)

	// The hospital, holding that run's dead letters.
	scrapeHospital(t, e, letters)

	checkAgainst(t, e, sels, groups)
	t.Logf("%d queries, %d selectors checked against %d metric names served", len(queries), len(sels), len(e))
}

func scrapeBackpressure(t *testing.T, e exposition) {
	t.Helper()
	mp, handler, err := telemetry.NewPrometheusMeterProvider()
	if err != nil {
		t.Fatal(err)
	}
	m, err := middleware.NewMetrics(middleware.MetricsConfig{MeterProvider: mp})
	if err != nil {
		t.Fatal(err)
	}
	pubsub := gochannel.NewGoChannel(gochannel.Config{}, watermill.NopLogger{})
	bp, err := throttle.NewBackpressurePublisher(throttle.BackpressureConfig{
		Publisher:     pubsub,
		Source:        throttle.LagSourceFunc(func(context.Context, string) (int64, error) { return 1_000_000, nil }),
		HighWatermark: 10,
		Mode:          throttle.Reject,
		OnWait: func(topic string, waited time.Duration, _ error) {
			m.RecordBackpressureBlock(context.Background(), topic, waited)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer bp.Close()
	if err := bp.Publish("orders", message.NewMessage(watermill.NewUUID(), []byte("{}"))); err == nil {
		t.Fatal("a publish far above the high watermark was not refused")
	}
	srv := httptest.NewServer(handler)
	defer srv.Close()
	if err := scrape(t, e, srv.URL, nil); err != nil {
		t.Fatal(err)
	}
}

// runExampleScraped runs the kafka example with --metrics-addr, scrapes it
// into e until it served every name of want (or exited), and returns its
// dead letters.
func runExampleScraped(t *testing.T, e exposition, want map[string]bool) []Letter {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	_ = lis.Close()
	dlqOut := filepath.Join(t.TempDir(), "dlq.jsonl")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr bytes.Buffer
	done := make(chan int, 1)
	// --stuck-every 2: half the messages fail transiently, which opens the
	// breaker (antidote_breaker_state, _transitions) and holds messages.
	// --duplicate-every 5 (odd numbers): a stuck message never succeeds, so
	// its duplicate would never be skipped. --idle 1m: with the breaker
	// open nothing arrives for a while; the test cancels the run once it
	// has seen what it needs.
	args := []string{"--messages", "60", "--poison-every", "7", "--stuck-every", "2", "--duplicate-every", "5",
		"--rate", "500", "--idle", "1m", "--topic", topic(t), "--metrics-addr", addr, "--dlq-out", dlqOut, "--json"}
	go func() { done <- Run(ctx, adapters.KindKafka, args, &stdout, &stderr) }()
	missing := func() []string {
		var out []string
		for n := range want {
			if e[n] == nil {
				out = append(out, n)
			}
		}
		sort.Strings(out)
		return out
	}
	code, finished := 0, false
	deadline := time.Now().Add(2 * time.Minute)
	for !finished && len(missing()) > 0 && time.Now().Before(deadline) {
		select {
		case code = <-done:
			finished = true
			continue
		case <-time.After(50 * time.Millisecond): // poll interval, not a timing assertion
		}
		_ = scrape(t, e, "http://"+addr+"/metrics", nil) // an error: not listening yet
	}
	if !finished {
		cancel() // everything seen: the rest of the run is not this test's
		code = <-done
	}
	if m := missing(); len(m) > 0 {
		t.Fatalf("the example (exit %d) never served %v\nstderr:\n%s", code, m, stderr.String())
	}
	letters := readLetters(t, dlqOut)
	if len(letters) == 0 {
		t.Fatalf("the example (exit %d) dead-lettered nothing\nstderr:\n%s", code, stderr.String())
	}
	return letters
}

// scrapeHospital puts letters into a PostgreSQL hospital store, as
// antidote hospital ingest does, and scrapes the web handler antidote
// hospital serve runs.
func scrapeHospital(t *testing.T, e exposition, letters []Letter) {
	t.Helper()
	ctx := context.Background()
	store, _, _ := hospitalstore.New(t, "deploy_")
	for _, l := range letters {
		m := message.NewMessage(l.UUID, []byte(l.Payload))
		if l.PayloadBase64 != nil {
			m.Payload = l.PayloadBase64
		}
		m.Metadata = l.Metadata
		letter := hospital.FromMessage(ctx, m, string(adapters.KindKafka), l.Metadata[poison.KeyOriginalTopic]+".dlq", nil, fingerprint.Options{})
		if _, err := store.Put(ctx, letter); err != nil {
			t.Fatal(err)
		}
	}
	const token = "deploy-test-token-0123456789"
	h, err := web.New(web.Config{Store: store, Token: token, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	if err := scrape(t, e, srv.URL+"/metrics", http.Header{"Authorization": {"Bearer " + token}}); err != nil {
		t.Fatal(err)
	}
}

func readAll(resp *http.Response) ([]byte, error) {
	defer resp.Body.Close()
	var b bytes.Buffer
	_, err := b.ReadFrom(resp.Body)
	return b.Bytes(), err
}
