package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/poison"
)

func runCLI(t *testing.T, stdin string, args ...string) (string, string, error) {
	t.Helper()
	cmd := newRootCmd()
	var out, errb bytes.Buffer
	cmd.SetArgs(args)
	cmd.SetOut(&out)
	cmd.SetErr(&errb)
	cmd.SetIn(strings.NewReader(stdin))
	err := cmd.ExecuteContext(context.Background())
	return out.String(), errb.String(), err
}

// deadLetter publishes n envelopes to topic's DLQ as DeadLetter would.
func deadLetter(t *testing.T, cfg adapters.Config, topic string, n int) {
	b, err := adapters.Open(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for i := 0; i < n; i++ {
		m := message.NewMessage(fmt.Sprintf("l%d-%s", i, watermill.NewShortUUID()), []byte(fmt.Sprintf(`{"user_id":%d`, i)))
		letter := poison.Envelope(m, poison.Origin{Topic: topic, Handler: "a-handler-with-a-very-long-name"},
			poison.Failure{Reason: poison.ReasonPermanent, Err: fmt.Errorf("user %d not found in a very long error message that would overflow any terminal column", i), Attempts: 1})
		if err := b.Publisher.Publish(topic+".dlq", letter); err != nil {
			t.Fatal(err)
		}
	}
}

func TestDLQCommandsOnPostgres(t *testing.T) {
	url := testenv.PostgresURL(t)
	t.Setenv("ANTIDOTE_BROKER", "postgres")
	t.Setenv("ANTIDOTE_POSTGRES_URL", url)
	topic := "cli_" + watermill.NewShortUUID()
	t.Setenv("COLUMNS", "100")
	deadLetter(t, adapters.Config{Broker: adapters.KindPostgres, Postgres: adapters.PostgresConfig{URL: url}}, topic, 3)

	out, _, err := runCLI(t, "", "dlq", "list", "--topic", topic, "--json")
	if err != nil || strings.Count(out, "\n") != 3 || !strings.Contains(out, `"reason":"permanent"`) {
		t.Fatalf("list --json: %v\n%s", err, out)
	}
	for _, sub := range []string{"list", "group"} {
		out, _, err = runCLI(t, "", "dlq", sub, "--topic", topic)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
			if n := utf8.RuneCountInString(line); n > 100 {
				t.Errorf("%s: line of %d columns: %q", sub, n, line)
			}
		}
	}
	if !strings.Contains(out, "user <n> not found") || !strings.Contains(out, "3 letters in 1 group\n") {
		t.Errorf("group output:\n%s", out)
	}
	out, _, err = runCLI(t, "", "dlq", "replay", "--topic", topic, "--dry-run")
	if err != nil || !strings.Contains(out, "would replay 3") {
		t.Fatalf("replay --dry-run: %v %s", err, out)
	}
	// Destructive without --yes and no answer: refused, nothing changes.
	if _, _, err = runCLI(t, "", "dlq", "purge", "--topic", topic); err == nil || !strings.Contains(err.Error(), "--yes") {
		t.Fatalf("purge without confirmation: %v", err)
	}
	if _, _, err = runCLI(t, "y\n", "dlq", "purge", "--topic", topic, "--reason", "panic"); exitCode(err) != exitNoMatch {
		t.Fatalf("purge of a reason no letter has: %v, exit code %d", err, exitCode(err))
	}
	out, _, _ = runCLI(t, "", "dlq", "list", "--topic", topic, "--json")
	if strings.Count(out, "\n") != 3 {
		t.Fatalf("purge of another reason removed letters: %s", out)
	}
	out, _, err = runCLI(t, "", "dlq", "purge", "--topic", topic, "--yes", "--json")
	if err != nil || !strings.Contains(out, `"purged":3`) {
		t.Fatalf("purge --yes: %v %s", err, out)
	}
	if _, _, err = runCLI(t, "", "dlq", "list"); exitCode(err) != exitUsage || !strings.Contains(err.Error(), "--topic") {
		t.Errorf("missing --topic: %v", err)
	}
	if _, _, err = runCLI(t, "", "dlq", "list", "--topic", topic, "--since", "yesterday"); exitCode(err) != exitUsage || !strings.Contains(err.Error(), "--since") {
		t.Errorf("bad --since: %v", err)
	}
}

// Credentials never appear in output or errors.
func TestDLQHidesCredentials(t *testing.T) {
	t.Setenv("ANTIDOTE_BROKER", "amqp")
	t.Setenv("ANTIDOTE_AMQP_URL", "amqp://guest:hunter2@127.0.0.1:1/")
	t.Setenv("ANTIDOTE_CONNECT_TIMEOUT", "1s")
	out, errOut, err := runCLI(t, "", "dlq", "list", "--topic", "x")
	if err == nil || !errors.Is(err, adapters.ErrUnreachable) || exitCode(err) != exitUnreachable {
		t.Fatalf("err = %v, exit code %d", err, exitCode(err))
	}
	if strings.Contains(err.Error()+out+errOut, "hunter2") {
		t.Fatalf("password printed: %v %s %s", err, out, errOut)
	}
}
