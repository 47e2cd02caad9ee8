package hello

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/devkafka"
	"github.com/antidote-mq/antidote/internal/testenv"
)

func needBroker(t *testing.T, kind adapters.Kind) {
	switch kind {
	case adapters.KindAMQP:
		testenv.AMQPURL(t)
	case adapters.KindPostgres:
		testenv.PostgresURL(t)
	}
}

func runExample(t *testing.T, kind adapters.Kind, args ...string) (Summary, string, int) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := Run(context.Background(), kind, args, &stdout, &stderr)
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	var s Summary
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &s); err != nil {
		t.Fatalf("last stdout line is not the JSON summary: %q (stderr %q)", stdout.String(), stderr.String())
	}
	return s, stderr.String(), code
}

func topic(t *testing.T) string { return "hello_test_" + watermill.NewShortUUID() }

// The contract's main job, on each broker: by default the flood carries
// poison (two pills in 500 messages: the malformed one and the wrong types),
// dead-lettered, every other message processed; --poison-every 0 is a clean
// run, every message processed.
func TestRunAllRoles(t *testing.T) {
	for _, kind := range []adapters.Kind{adapters.KindKafka, adapters.KindAMQP, adapters.KindPostgres} {
		t.Run(string(kind), func(t *testing.T) {
			needBroker(t, kind)
			s, stderr, code := runExample(t, kind, "--messages", "500", "--json", "--topic", topic(t))
			if code != 0 {
				t.Fatalf("exit %d; stderr: %s", code, stderr)
			}
			dead := int64(ExpectedDeadLetters(500, DefaultPoisonEvery))
			if s.Broker != string(kind) || s.Published != 500 || dead != 2 || s.DeadLettered != dead || s.Processed != 500-dead ||
				s.DeadLetterReasons["permanent"] != dead {
				t.Fatalf("summary %+v, want %d dead-lettered as permanent", s, dead)
			}
			s, stderr, code = runExample(t, kind, "--messages", "500", "--poison-every", "0", "--json", "--topic", topic(t))
			if code != 0 {
				t.Fatalf("clean run: exit %d; stderr: %s", code, stderr)
			}
			if s.Published != 500 || s.Processed != 500 || s.DeadLettered != 0 || s.DeadLetterReasons != nil {
				t.Fatalf("clean run: summary %+v", s)
			}
		})
	}
}

// Producer and consumer as separate runs: the messages wait in the broker.
func TestRunSeparateRoles(t *testing.T) {
	for _, kind := range []adapters.Kind{adapters.KindKafka, adapters.KindAMQP, adapters.KindPostgres} {
		t.Run(string(kind), func(t *testing.T) {
			needBroker(t, kind)
			if kind == adapters.KindKafka {
				k, err := devkafka.Start(devkafka.Config{})
				if err != nil {
					t.Fatal(err)
				}
				defer k.Close()
				t.Setenv("ANTIDOTE_KAFKA_BROKERS", strings.Join(k.Addrs(), ","))
			}
			tp := topic(t)
			p, stderr, code := runExample(t, kind, "--role", "producer", "--messages", "300", "--json", "--topic", tp)
			if code != 0 || p.Published != 300 || p.Processed != 0 {
				t.Fatalf("producer exit %d summary %+v; stderr: %s", code, p, stderr)
			}
			// The default poison: message 250, the malformed one.
			c, stderr, code := runExample(t, kind, "--role", "consumer", "--idle", "2s", "--json", "--topic", tp)
			if code != 0 || c.Processed != 299 || c.DeadLettered != 1 || c.Published != 0 {
				t.Fatalf("consumer exit %d summary %+v; stderr: %s", code, c, stderr)
			}
		})
	}
}

func TestKafkaRolesNeedAnOutlivingBroker(t *testing.T) {
	t.Setenv("ANTIDOTE_KAFKA_BROKERS", "")
	var out, errb bytes.Buffer
	if code := Run(context.Background(), adapters.KindKafka, []string{"--role", "consumer"}, &out, &errb); code != 1 {
		t.Fatalf("exit %d", code)
	}
	if !strings.Contains(errb.String(), "devkafka") {
		t.Fatalf("error does not say what to do: %q", errb.String())
	}
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--role", "both"}, {"--messages", "-1"}, {"--idle", "0s"}, {"--topic", ""}, {"stray"}, {"--messages", "x"},
	} {
		var out, errb bytes.Buffer
		if code := Run(context.Background(), adapters.KindAMQP, args, &out, &errb); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
		if errb.Len() == 0 {
			t.Errorf("%v: no error message", args)
		}
	}
}

// --keys numbers messages per key and the consumer counts order
// violations: 0 with key-ordered concurrency (poison included: a
// dead-lettered message settles its place in the key's order), and the
// count is real: unordered concurrency makes some.
func TestRunKeysConcurrency(t *testing.T) {
	s, stderr, code := runExample(t, adapters.KindKafka, "--messages", "1000", "--keys", "20", "--handler-delay", "1ms",
		"--concurrency", "16", "--poison-every", "37", "--json", "--topic", topic(t))
	if code != 0 || s.OrderViolations != 0 || s.Processed+s.DeadLettered != 1000 {
		t.Fatalf("exit %d, summary %+v; stderr: %s", code, s, stderr)
	}
	t.Setenv("ANTIDOTE_KAFKA_ORDERING", "unordered")
	s, _, code = runExample(t, adapters.KindKafka, "--messages", "1000", "--keys", "2", "--handler-delay", "1ms",
		"--concurrency", "16", "--json", "--topic", topic(t))
	if s.OrderViolations == 0 || code == 0 {
		t.Fatalf("unordered: exit %d, summary %+v: no violation counted", code, s)
	}
	var out, errOut bytes.Buffer
	if code := Run(context.Background(), adapters.KindAMQP, []string{"--concurrency", "4"}, &out, &errOut); code != 1 || !strings.Contains(errOut.String(), "--concurrency 4: Kafka only") {
		t.Fatalf("--concurrency on RabbitMQ: exit %d, %s", code, errOut.String())
	}
}
