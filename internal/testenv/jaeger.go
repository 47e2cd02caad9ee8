package testenv

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/antidote-mq/antidote/internal/clock"
)

// Jaeger is a real Jaeger v2 (all-in-one, in-memory storage) run by a test.
type Jaeger struct {
	// OTLPHTTP is the OTLP/HTTP endpoint (http://127.0.0.1:port) for
	// OTEL_EXPORTER_OTLP_ENDPOINT.
	OTLPHTTP string
	// Query is the base URL of the query API (http://127.0.0.1:port).
	Query string
}

// JaegerSpan is a span as Jaeger's HTTP API returns it.
type JaegerSpan struct {
	TraceID       string `json:"traceID"`
	SpanID        string `json:"spanID"`
	OperationName string `json:"operationName"`
	References    []struct {
		RefType string `json:"refType"`
		TraceID string `json:"traceID"`
		SpanID  string `json:"spanID"`
	} `json:"references"`
	Tags []struct {
		Key   string `json:"key"`
		Value any    `json:"value"`
	} `json:"tags"`
	Logs []struct {
		Fields []struct {
			Key   string `json:"key"`
			Value any    `json:"value"`
		} `json:"fields"`
	} `json:"logs"`
	ProcessID string `json:"processID"`
}

// Tag returns the value of a span tag as text, "" when absent.
func (s JaegerSpan) Tag(key string) string {
	for _, t := range s.Tags {
		if t.Key == key {
			return fmt.Sprint(t.Value)
		}
	}
	return ""
}

// StartJaeger runs the binary named by ANTIDOTE_JAEGER_BIN (scripts/jaeger
// prints it) on free loopback ports until the test ends. Without it the test
// skips, or fails under ANTIDOTE_REQUIRE_SERVICES=1.
func StartJaeger(t testing.TB) Jaeger {
	t.Helper()
	bin := os.Getenv("ANTIDOTE_JAEGER_BIN")
	if bin == "" {
		if Required() {
			t.Fatal("ANTIDOTE_JAEGER_BIN is not set (ANTIDOTE_REQUIRE_SERVICES=1): run `export ANTIDOTE_JAEGER_BIN=$(scripts/jaeger)`")
		}
		t.Skip("ANTIDOTE_JAEGER_BIN is not set: run `export ANTIDOTE_JAEGER_BIN=$(scripts/jaeger)` to run the Jaeger end-to-end test")
	}
	ports := FreePorts(t, 8)
	addr := func(i int) string { return fmt.Sprintf("127.0.0.1:%d", ports[i]) }
	cmd := exec.Command(bin,
		"--set=receivers.otlp.protocols.http.endpoint="+addr(0),
		"--set=receivers.otlp.protocols.grpc.endpoint="+addr(1),
		"--set=extensions.jaeger_query.http.endpoint="+addr(2),
		"--set=extensions.jaeger_query.grpc.endpoint="+addr(3),
		"--set=extensions.healthcheckv2.http.endpoint="+addr(4),
		"--set=service.telemetry.metrics.level=none",
	)
	cmd.Env = append(os.Environ(), "JAEGER_LISTEN_HOST=127.0.0.1")
	logf, err := os.CreateTemp("", "jaeger-*.log")
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start jaeger: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		_ = logf.Close()
		_ = os.Remove(logf.Name())
	})
	j := Jaeger{OTLPHTTP: "http://" + addr(0), Query: "http://" + addr(2)}
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(j.Query + "/api/services")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return j
			}
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logf.Name())
			t.Fatalf("jaeger did not answer on %s: %v\n%s", j.Query, err, log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Trace polls the query API until the trace has at least min spans (spans
// appear a moment after the exporter flushes) or the deadline passes, and
// returns what it has.
func (j Jaeger) Trace(ctx context.Context, traceID string, min int) ([]JaegerSpan, error) {
	var last []JaegerSpan
	for {
		spans, err := j.fetch(traceID)
		if err == nil {
			last = spans
			if len(spans) >= min {
				return spans, nil
			}
		}
		if !clock.Sleep(ctx, 100*time.Millisecond) {
			return last, fmt.Errorf("trace %s: %d spans, want %d: %w", traceID, len(last), min, ctx.Err())
		}
	}
}

func (j Jaeger) fetch(traceID string) ([]JaegerSpan, error) {
	resp, err := http.Get(j.Query + "/api/traces/" + traceID)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %d", resp.StatusCode)
	}
	var body struct {
		Data []struct {
			Spans []JaegerSpan `json:"spans"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, err
	}
	var out []JaegerSpan
	for _, d := range body.Data {
		out = append(out, d.Spans...)
	}
	return out, nil
}
