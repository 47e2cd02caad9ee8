package hello

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/antidote-mq/antidote/adapters"
)

// dashboardFile is the Grafana dashboard deploy/docker-compose.yml provisions.
var dashboardFile = filepath.Join("..", "..", "..", "deploy", "grafana", "dashboards", "antidote.json")

// dashboardExprs returns the PromQL of every panel target.
func dashboardExprs(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		UID    string `json:"uid"`
		Panels []struct {
			Title      string `json:"title"`
			Datasource struct {
				UID string `json:"uid"`
			} `json:"datasource"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	var exprs []string
	for _, p := range d.Panels {
		if p.Datasource.UID != "prometheus" {
			t.Errorf("panel %q: data source %q, want the provisioned one (uid prometheus)", p.Title, p.Datasource.UID)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	return exprs
}

var (
	promLabels   = regexp.MustCompile(`\{[^}]*\}`)
	promRanges   = regexp.MustCompile(`\[[^\]]*\]`)
	promGrouping = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	promIdent    = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*\s*\(?`)
	promKeywords = map[string]bool{"by": true, "without": true, "bool": true, "offset": true, "and": true, "or": true, "unless": true}
)

// metricNames returns the metric names a PromQL expression reads: what is
// left once label matchers, ranges and grouping clauses are taken out,
// without function names and keywords.
func metricNames(expr string) []string {
	expr = promLabels.ReplaceAllString(expr, "")
	expr = promRanges.ReplaceAllString(expr, "")
	expr = promGrouping.ReplaceAllString(expr, "")
	var names []string
	for _, m := range promIdent.FindAllString(expr, -1) {
		if strings.HasSuffix(m, "(") || promKeywords[strings.TrimSpace(m)] {
			continue
		}
		names = append(names, strings.TrimSpace(m))
	}
	return names
}

func TestMetricNamesOfPromQL(t *testing.T) {
	got := metricNames(`histogram_quantile(0.99, sum by (le, messaging_destination_name) (rate(messaging_process_duration_seconds_bucket{job="x"}[$__rate_interval]))) / on (a) sum(up) > bool 0`)
	if strings.Join(got, ",") != "messaging_process_duration_seconds_bucket,up" {
		t.Fatalf("got %q", got)
	}
}

// exposedNames returns the metric names of a Prometheus text exposition.
func exposedNames(body []byte) map[string]bool {
	names := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if i := strings.IndexAny(line, "{ "); i > 0 {
			names[line[:i]] = true
		}
	}
	return names
}

// Every metric the Grafana dashboard in deploy/ queries is one the example
// serves on --metrics-addr: the kafka example (embedded broker) runs with
// poison, stuck and duplicate messages, and its /metrics is scraped while it
// runs until every name the dashboard needs has appeared, including the
// semconv messaging_process_duration_seconds and
// messaging_client_consumed_messages_total.
func TestDashboardMetricsAreExposedByTheExample(t *testing.T) {
	want := map[string]bool{}
	for _, e := range dashboardExprs(t) {
		for _, n := range metricNames(e) {
			want[n] = true
		}
	}
	for _, n := range []string{"messaging_process_duration_seconds_bucket", "antidote_messages_dead_lettered_total", "antidote_breaker_held", "antidote_consumer_lag"} {
		if !want[n] {
			t.Errorf("the dashboard does not query %s", n)
		}
	}
	if testing.Short() {
		t.Skip("runs the kafka example with an embedded broker; skipped with -short")
	}
	// The semconv names the issue asks for, whether or not a panel uses them.
	want["messaging_process_duration_seconds_count"] = true
	want["messaging_client_consumed_messages_total"] = true

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	_ = lis.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr bytes.Buffer
	done := make(chan int, 1)
	args := []string{"--messages", "60", "--poison-every", "7", "--stuck-every", "20", "--duplicate-every", "10",
		"--topic", topic(t), "--metrics-addr", addr, "--json"}
	go func() { done <- Run(ctx, adapters.KindKafka, args, &stdout, &stderr) }()

	seen := map[string]bool{}
	missing := func() []string {
		var out []string
		for n := range want {
			if !seen[n] {
				out = append(out, n)
			}
		}
		sort.Strings(out)
		return out
	}
	client := &http.Client{Timeout: 10 * time.Second}
	code, finished := 0, false
	for !finished && len(missing()) > 0 {
		select {
		case code = <-done:
			finished = true
			continue
		default:
		}
		resp, err := client.Get("http://" + addr + "/metrics")
		if err != nil { // not listening yet
			time.Sleep(20 * time.Millisecond)
			continue
		}
		body, _ := readAll(resp)
		for n := range exposedNames(body) {
			seen[n] = true
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !finished {
		cancel() // everything seen: the rest of the run is not this test's
		code = <-done
	}
	if m := missing(); len(m) > 0 {
		t.Fatalf("the example (exit %d) never exposed %v\nstderr:\n%s", code, m, stderr.String())
	}
	t.Logf("all %d metric names of the dashboard exposed (exit %s)", len(want), strconv.Itoa(code))
}

func readAll(resp *http.Response) ([]byte, error) {
	defer resp.Body.Close()
	var b bytes.Buffer
	_, err := b.ReadFrom(resp.Body)
	return b.Bytes(), err
}
