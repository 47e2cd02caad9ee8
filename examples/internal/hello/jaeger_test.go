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
// "send <topic>", the consumer's "process <topic>" (failed attempts as
// events, error.type the DLQ reason) and the dead-letter "send <topic>.dlq",
// named and attributed to the OpenTelemetry messaging conventions. On
// Kafka, RabbitMQ and PostgreSQL.
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
				// A loaded machine can fail a delivery before the one that
				// dead-letters (the breaker holds it while the sink's
				// database is slow to answer its health check): the trace
				// then has several process spans, and the one checked is
				// the parent of the DLQ send.
				var publish, process, dlqPublish *testenv.JaegerSpan
				var processes []*testenv.JaegerSpan
				for i := range spans {
					s := &spans[i]
					switch {
					case s.OperationName == "send "+tp && s.Tag("span.kind") == "producer":
						publish = s
					case s.OperationName == "process "+tp && s.Tag("span.kind") == "consumer":
						processes = append(processes, s)
					case s.OperationName == "send "+tp+".dlq" && s.Tag("span.kind") == "producer":
						dlqPublish = s
					}
				}
				for _, p := range processes {
					if dlqPublish != nil && childOf(*dlqPublish, p.SpanID) {
						process = p
					} else if p.Tag("antidote.outcome") == "" || p.Tag("error.type") == "" {
						t.Errorf("letter %s: a delivery before the one that dead-lettered has no outcome or error.type: %v", l.UUID, p.Tags)
					} else {
						t.Logf("letter %s: an earlier delivery %s: %s", l.UUID, p.Tag("antidote.outcome"), p.Tag("otel.status_description"))
					}
				}
				if publish == nil || process == nil || dlqPublish == nil {
					t.Fatalf("letter %s (%s): trace lacks send, dlq send or the process span that is its parent: %v", l.UUID, l.Metadata[poison.KeyReason], names(spans))
				}
				if !childOf(*process, publish.SpanID) {
					t.Errorf("letter %s: spans not joined: publish %s, process refs %+v", l.UUID, publish.SpanID, process.References)
				}
				if len(process.Logs) == 0 {
					t.Errorf("letter %s: the processing span has no events (failed attempts)", l.UUID)
				}
				if process.Tag("error") != "true" && process.Tag("otel.status_code") != "ERROR" {
					t.Errorf("letter %s: processing span not marked failed: %v", l.UUID, process.Tags)
				}
				if got, want := process.Tag("error.type"), l.Metadata[poison.KeyReason]; got == "" || got != want {
					t.Errorf("letter %s: error.type %q on the process span, want the DLQ reason %q", l.UUID, got, want)
				}
				system := kind.MessagingSystem()
				for _, s := range []*testenv.JaegerSpan{publish, process, dlqPublish} {
					if s.Tag("messaging.system") != system || s.Tag("messaging.operation.name") == "" || s.Tag("messaging.destination.name") == "" {
						t.Errorf("letter %s: span %s lacks the messaging attributes: %v", l.UUID, s.OperationName, s.Tags)
					}
					if s.Tag("server.address") == "" {
						t.Errorf("letter %s: span %s has no server.address: %v", l.UUID, s.OperationName, s.Tags)
					}
				}
				if process.Tag("messaging.operation.name") != "process" || dlqPublish.Tag("messaging.destination.name") != tp+".dlq" {
					t.Errorf("letter %s: process %v, dlq send %v", l.UUID, process.Tags, dlqPublish.Tags)
				}
			}
			t.Logf("%s: %d poison traces joined send → process → send to the DLQ", kind, len(letters))
		})
	}
}

// childOf: the reference to parent is CHILD_OF. The consumer span also links
// to its producer (its parent); Jaeger folds such a link into the parent
// reference with the link's opentracing.ref_type, which middleware.Tracing
// sets to child_of (without it Jaeger shows FOLLOWS_FROM).
func childOf(s testenv.JaegerSpan, parent string) bool {
	for _, r := range s.References {
		if r.SpanID == parent && r.RefType == "CHILD_OF" {
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
