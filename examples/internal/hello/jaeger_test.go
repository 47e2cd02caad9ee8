package hello

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/poison"
)

// The examples export traces to a real Jaeger; for each poison message the
// trace found through its dead letter's traceparent joins the producer's
// publish, the consumer's processing (failed attempts as events) and the
// dead-letter publish. On Kafka, RabbitMQ and PostgreSQL.
func TestPoisonTracesInJaeger(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Jaeger and consumer processes; skipped with -short")
	}
	j := testenv.StartJaeger(t)
	for _, kind := range []adapters.Kind{adapters.KindKafka, adapters.KindAMQP, adapters.KindPostgres} {
		t.Run(string(kind), func(t *testing.T) {
			needBroker(t, kind)
			tp := topic(t)
			dlqOut := filepath.Join(t.TempDir(), "dlq.jsonl")
			env := []string{
				"OTEL_EXPORTER_OTLP_ENDPOINT=" + j.OTLPHTTP,
				"OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
				"OTEL_SERVICE_NAME=hello-e2e-" + string(kind),
				"OTEL_BSP_SCHEDULE_DELAY=100",
			}
			code, out, stderr := child(t, "antidote", kind, env, "--messages", "200", "--poison-every", "20", "--topic", tp, "--dlq-out", dlqOut, "--json")
			if code != 0 {
				t.Fatalf("example exit %d\n%s\n%s", code, out, stderr)
			}
			letters := readLetters(t, dlqOut)
			if want := ExpectedDeadLetters(200, 20); len(letters) != want {
				t.Fatalf("%d letters, want %d", len(letters), want)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			for _, l := range letters {
				traceparent := l.Metadata[poison.KeyTraceparent]
				parts := strings.Split(traceparent, "-")
				if len(parts) != 4 {
					t.Fatalf("letter %s has no traceparent: %v", l.UUID, l.Metadata)
				}
				spans, err := j.Trace(ctx, parts[1], 3)
				if err != nil {
					t.Fatalf("letter %s: %v (spans %+v)", l.UUID, err, names(spans))
				}
				var publish, process, dlqPublish *testenv.JaegerSpan
				for i := range spans {
					s := &spans[i]
					switch {
					case s.OperationName == tp+" publish" && s.Tag("span.kind") == "producer":
						publish = s
					case s.Tag("span.kind") == "consumer" && strings.HasPrefix(s.OperationName, tp+" "):
						process = s
					case s.OperationName == tp+".dlq publish" && s.Tag("span.kind") == "producer":
						dlqPublish = s
					}
				}
				if publish == nil || process == nil || dlqPublish == nil {
					t.Fatalf("letter %s (%s): trace lacks publish/process/dlq publish: %v", l.UUID, l.Metadata[poison.KeyReason], names(spans))
				}
				if !childOf(*process, publish.SpanID) || !childOf(*dlqPublish, process.SpanID) {
					t.Errorf("letter %s: spans not joined: publish %s, process refs %+v, dlq refs %+v", l.UUID, publish.SpanID, process.References, dlqPublish.References)
				}
				if len(process.Logs) == 0 {
					t.Errorf("letter %s: the processing span has no events (failed attempts)", l.UUID)
				}
				if process.Tag("error") != "true" && process.Tag("otel.status_code") != "ERROR" {
					t.Errorf("letter %s: processing span not marked failed: %v", l.UUID, process.Tags)
				}
			}
			t.Logf("%s: %d poison traces joined publish → process → dead-letter publish", kind, len(letters))
		})
	}
}

func childOf(s testenv.JaegerSpan, parent string) bool {
	for _, r := range s.References {
		if r.SpanID == parent {
			return true
		}
	}
	return false
}

func names(spans []testenv.JaegerSpan) []string {
	var out []string
	for _, s := range spans {
		out = append(out, s.OperationName+"("+s.Tag("span.kind")+")")
	}
	return out
}
