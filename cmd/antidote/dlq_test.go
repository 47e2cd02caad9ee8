package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/devkafka"
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

// publishLetter publishes one envelope to topic's DLQ as DeadLetter would.
func publishLetter(t *testing.T, cfg adapters.Config, topic, uuid string, payload []byte, errText string) {
	t.Helper()
	b, err := adapters.Open(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	letter := poison.Envelope(message.NewMessage(uuid, payload), poison.Origin{Topic: topic, Handler: "h"},
		poison.Failure{Reason: poison.ReasonPermanent, Err: errors.New(errText), Attempts: 1})
	if err := b.Publisher.Publish(topic+".dlq", letter); err != nil {
		t.Fatal(err)
	}
}

func postgresCLI(t *testing.T) adapters.Config {
	url := testenv.PostgresURL(t)
	t.Setenv("ANTIDOTE_BROKER", "postgres")
	t.Setenv("ANTIDOTE_POSTGRES_URL", url)
	return adapters.Config{Broker: adapters.KindPostgres, Postgres: adapters.PostgresConfig{URL: url}}
}

// Empty selections exit 3 and change nothing; counts are in the singular
// for one letter.
func TestDLQNothingMatchedAndPlurals(t *testing.T) {
	t.Run("postgres", func(t *testing.T) { testNothingMatchedAndPlurals(t, postgresCLI(t)) })
	t.Run("amqp", func(t *testing.T) {
		url := testenv.AMQPURL(t)
		t.Setenv("ANTIDOTE_BROKER", "amqp")
		t.Setenv("ANTIDOTE_AMQP_URL", url)
		testNothingMatchedAndPlurals(t, adapters.Config{Broker: adapters.KindAMQP, AMQP: adapters.AMQPConfig{URL: url}})
	})
	t.Run("kafka", func(t *testing.T) {
		k, err := devkafka.Start(devkafka.Config{Addr: "127.0.0.1:0", Partitions: 2})
		if err != nil {
			t.Fatal(err)
		}
		defer k.Close()
		t.Setenv("ANTIDOTE_BROKER", "kafka")
		t.Setenv("ANTIDOTE_KAFKA_BROKERS", strings.Join(k.Addrs(), ","))
		testNothingMatchedAndPlurals(t, adapters.Config{Broker: adapters.KindKafka, Kafka: adapters.KafkaConfig{Brokers: k.Addrs()}})
	})
}

func testNothingMatchedAndPlurals(t *testing.T, cfg adapters.Config) {
	topic := "cli_" + watermill.NewShortUUID()
	t.Setenv("COLUMNS", "")

	// An empty DLQ: list and group exit 3, --json prints nothing.
	code, out, errOut := runCode(t, "", "dlq", "list", "--topic", topic)
	if code != exitNoMatch || !strings.Contains(out, "0 letters in "+topic+".dlq") || errOut != "" {
		t.Fatalf("list of an empty DLQ: exit code %d, stdout %q, stderr %q", code, out, errOut)
	}
	if code, out, _ = runCode(t, "", "dlq", "list", "--topic", topic, "--json"); code != exitNoMatch || out != "" {
		t.Fatalf("list --json of an empty DLQ: exit code %d, %q", code, out)
	}
	if code, out, _ = runCode(t, "", "dlq", "group", "--topic", topic); code != exitNoMatch || !strings.Contains(out, "0 letters in 0 groups") {
		t.Fatalf("group of an empty DLQ: exit code %d, %q", code, out)
	}

	uuid := "one-" + watermill.NewShortUUID()
	publishLetter(t, cfg, topic, uuid, []byte(`{"id":1}`), "not found")
	code, out, _ = runCode(t, "", "dlq", "list", "--topic", topic)
	if code != exitOK || !strings.Contains(out, "\n1 letter in "+topic+".dlq\n") {
		t.Fatalf("list of one: exit code %d, %q", code, out)
	}
	if code, out, _ = runCode(t, "", "dlq", "group", "--topic", topic); code != exitOK || !strings.Contains(out, "\n1 letter in 1 group\n") {
		t.Fatalf("group of one: exit code %d, %q", code, out)
	}
	if code, out, _ = runCode(t, "", "dlq", "replay", "--topic", topic, "--dry-run"); code != exitOK || out != "would replay 1 letter from "+topic+".dlq\n" {
		t.Fatalf("replay --dry-run of one: exit code %d, %q", code, out)
	}
	if code, out, _ = runCode(t, "", "dlq", "purge", "--topic", topic, "--dry-run"); code != exitOK || out != "would purge 1 letter from "+topic+".dlq\n" {
		t.Fatalf("purge --dry-run of one: exit code %d, %q", code, out)
	}
	_, _, errOut = runCode(t, "n\n", "dlq", "replay", "--topic", topic)
	if !strings.Contains(errOut, "Replay 1 letter from") {
		t.Errorf("question: %q", errOut)
	}

	// Filters that select nothing: exit 3, the letter stays.
	for _, args := range [][]string{
		{"dlq", "list", "--topic", topic, "--reason", "panic"},
		{"dlq", "group", "--topic", topic, "--handler", "other"},
		{"dlq", "show", "--topic", topic, "no-such-uuid"},
		{"dlq", "replay", "--topic", topic, "--reason", "crash_loop", "--yes"},
		{"dlq", "replay", "--topic", topic, "--reason", "crash_loop", "--dry-run"},
		{"dlq", "purge", "--topic", topic, "--uuid", "no-such-uuid", "--yes"},
		{"dlq", "purge", "--topic", topic, "--since", "2999-01-01T00:00:00Z", "--yes", "--json"},
	} {
		code, out, errOut := runCode(t, "", args...)
		if code != exitNoMatch {
			t.Errorf("%v: exit code %d, want %d; %q %q", args, code, exitNoMatch, out, errOut)
		}
		if slices.Contains(args, "--json") && !strings.Contains(out, `"matched":0`) {
			t.Errorf("%v: %q", args, out)
		}
	}
	if code, out, _ = runCode(t, "", "dlq", "list", "--topic", topic, "--json"); code != exitOK || strings.Count(out, "\n") != 1 {
		t.Fatalf("the letter was touched by an empty selection: exit code %d, %q", code, out)
	}

	// A real replay of the one letter, then the DLQ is empty.
	code, out, errOut = runCode(t, "", "dlq", "replay", "--topic", topic, "--yes")
	if code != exitOK || out != "replayed 1 letter from "+topic+".dlq\n" {
		t.Fatalf("replay: exit code %d, %q %q", code, out, errOut)
	}
	if code, _, _ = runCode(t, "", "dlq", "list", "--topic", topic, "--json"); code != exitNoMatch {
		t.Fatalf("after the replay: exit code %d", code)
	}
	if code, out, _ = runCode(t, "", "dlq", "purge", "--topic", topic, "--yes"); code != exitNoMatch || !strings.Contains(out, "nothing to purge") {
		t.Fatalf("purge of an empty DLQ: exit code %d, %q", code, out)
	}
}

// The ERROR column fits $COLUMNS off a terminal, cut with an ellipsis on a
// rune boundary; without it, errors are whole.
func TestDLQErrorColumnFitsWidth(t *testing.T) {
	cfg := postgresCLI(t)
	topic := "cli_" + watermill.NewShortUUID()
	long := "ünïcödé 日本語のエラー: " + strings.Repeat("wörd ", 40) + "END"
	for i := 0; i < 2; i++ {
		publishLetter(t, cfg, topic, fmt.Sprintf("w%d-%s", i, watermill.NewShortUUID()), []byte("{}"), long)
	}
	for _, width := range []int{95, 100, 140} {
		t.Setenv("COLUMNS", strconv.Itoa(width))
		for _, sub := range []string{"list", "group"} {
			code, out, _ := runCode(t, "", "dlq", sub, "--topic", topic)
			if code != exitOK {
				t.Fatalf("%s: exit code %d", sub, code)
			}
			lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
			cut := 0
			for _, line := range lines {
				if !utf8.ValidString(line) {
					t.Errorf("%s at %d: invalid UTF-8 %q", sub, width, line)
				}
				if n := utf8.RuneCountInString(line); n > width {
					t.Errorf("%s at %d columns: line of %d: %q", sub, width, n, line)
				}
				if strings.HasSuffix(line, "…") {
					cut++
					if n := utf8.RuneCountInString(line); n != width {
						t.Errorf("%s at %d: a cut line of %d columns does not use the width: %q", sub, width, n, line)
					}
				}
			}
			if want := map[string]int{"list": 2, "group": 1}[sub]; cut != want {
				t.Errorf("%s at %d columns: %d cut lines, want %d:\n%s", sub, width, cut, want, out)
			}
		}
	}
	t.Setenv("COLUMNS", "")
	code, out, _ := runCode(t, "", "dlq", "list", "--topic", topic)
	if code != exitOK || strings.Count(out, strings.TrimSpace(strings.Join(strings.Fields(long), " "))) != 2 || strings.Contains(out, "…") {
		t.Fatalf("off a terminal without COLUMNS errors are whole: exit code %d\n%s", code, out)
	}
}

// show cuts payloads over 4 KiB unless --full, saying how much; binary
// payloads are a hex dump; --json has the whole payload.
func TestDLQShowPayloads(t *testing.T) {
	cfg := postgresCLI(t)
	topic := "cli_" + watermill.NewShortUUID()
	big := strings.Repeat("é", 3000) + strings.Repeat("x", 4000) // 10000 bytes
	bin := make([]byte, 5000)
	for i := range bin {
		bin[i] = byte(i)
	}
	small, esc := `{"id":7}`, "red \x1b[31mALERT\x1b[0m"
	ids := map[string][]byte{"big": []byte(big), "bin": bin, "small": []byte(small), "esc": []byte(esc)}
	for name, p := range ids {
		publishLetter(t, cfg, topic, name+"-"+topic, p, "bad "+name)
	}
	show := func(name string, flags ...string) string {
		t.Helper()
		code, out, errOut := runCode(t, "", append([]string{"dlq", "show", "--topic", topic, name + "-" + topic}, flags...)...)
		if code != exitOK {
			t.Fatalf("show %s: exit code %d, %s", name, code, errOut)
		}
		return out
	}

	out := show("big")
	if !strings.Contains(out, "payload (10000 bytes, text; the first 4096 bytes shown, 5904 bytes cut: --full shows all):\n") {
		t.Errorf("show big:\n%s", out)
	}
	if !strings.Contains(out, strings.Repeat("é", 2048)+"\n") || strings.Contains(out, strings.Repeat("é", 2049)) || strings.Contains(out, "xxxx") {
		t.Errorf("show big did not print exactly its first 4096 bytes")
	}
	out = show("big", "--full")
	if !strings.Contains(out, "payload (10000 bytes, text):\n"+big+"\n") {
		t.Errorf("show big --full lacks the whole payload")
	}
	out = show("bin")
	if !strings.Contains(out, "payload (5000 bytes, binary, as a hex dump; the first 4096 bytes shown, 904 bytes cut: --full shows all):\n") ||
		!strings.Contains(out, "00000000  00 01 02 03 04 05 06 07  08 09 0a 0b 0c 0d 0e 0f") || strings.Contains(out, "00001000") {
		t.Errorf("show bin:\n%s", out[:min(len(out), 2000)])
	}
	if out = show("bin", "--full"); !strings.Contains(out, "00001380  80 81 82 83 84 85 86 87") {
		t.Errorf("show bin --full lacks the last bytes")
	}
	out = show("esc")
	if strings.ContainsRune(out, 0x1b) || !strings.Contains(out, "binary, as a hex dump") {
		t.Errorf("a payload with escape sequences went to the terminal raw:\n%q", out)
	}
	out = show("small")
	if !strings.Contains(out, "payload (8 bytes, text):\n"+small+"\n") || !strings.Contains(out, `"error": "bad small"`) {
		t.Errorf("show small:\n%s", out)
	}
	out = show("big", "--json")
	if !strings.Contains(out, `"payload_bytes":10000`) || !strings.Contains(out, big) {
		t.Errorf("show --json lacks the whole payload")
	}
}

// The built binary's real process exit codes, its --version from the VCS
// stamp, and the ERROR column on a real terminal (a pty from script(1)).
func TestBinaryExitCodes(t *testing.T) {
	cfg := postgresCLI(t)
	bin := buildBinary(t)
	topic := "cli_" + watermill.NewShortUUID()
	pg := []string{"ANTIDOTE_BROKER=postgres", "ANTIDOTE_POSTGRES_URL=" + cfg.Postgres.URL, "COLUMNS="}

	for _, tc := range []struct {
		env  []string
		args []string
		want int
	}{
		{pg, []string{"dlq", "lsit"}, exitUsage},
		{pg, []string{"dlq", "list", "--topic", topic, "--reason", "bogus"}, exitUsage},
		{pg, []string{"nope"}, exitUsage},
		{pg, []string{"dlq", "list", "--topic", topic}, exitNoMatch},
		{pg, []string{"dlq", "show", "--topic", topic, "missing"}, exitNoMatch},
		{[]string{"ANTIDOTE_BROKER=amqp", "ANTIDOTE_AMQP_URL=amqp://guest:guest@127.0.0.1:1/", "ANTIDOTE_CONNECT_TIMEOUT=1s"}, []string{"dlq", "list", "--topic", topic}, exitUnreachable},
		{pg, []string{"dlq"}, exitOK},
		{pg, []string{"--version"}, exitOK},
	} {
		code, out, errOut := runBinary(t, bin, tc.env, tc.args...)
		if code != tc.want {
			t.Errorf("antidote %v: exit code %d, want %d\nstdout %q\nstderr %q", tc.args, code, tc.want, out, errOut)
		}
	}

	publishLetter(t, cfg, topic, "l1-"+topic, []byte("{}"), "ünïcödé "+strings.Repeat("wörd ", 40)+"END")
	if code, out, errOut := runBinary(t, bin, pg, "dlq", "purge", "--topic", topic, "--yes"); code != exitOK || out != "purged 1 letter from "+topic+".dlq\n" {
		t.Fatalf("purge: exit code %d, %q %q", code, out, errOut)
	}
	if code, _, _ := runBinary(t, bin, pg, "dlq", "list", "--topic", topic); code != exitNoMatch {
		t.Fatalf("list after purge: exit code %d", code)
	}

	// --version carries the commit the binary was built from.
	_, out, _ := runBinary(t, bin, nil, "--version")
	if rev, err := exec.Command("git", "rev-parse", "HEAD").Output(); err == nil {
		if !strings.Contains(out, "revision: "+strings.TrimSpace(string(rev))) {
			t.Errorf("--version lacks the revision %s:\n%s", rev, out)
		}
	} else if !strings.Contains(out, "revision: unknown") {
		t.Errorf("--version outside git:\n%s", out)
	}

	// On a terminal its width wins, even over COLUMNS.
	script, err := exec.LookPath("script")
	if err != nil {
		t.Log("no script(1): terminal width not checked")
		return
	}
	publishLetter(t, cfg, topic, "l2-"+topic, []byte("{}"), "ünïcödé "+strings.Repeat("wörd ", 40)+"END")
	shell := fmt.Sprintf("stty cols 97 rows 20 && ANTIDOTE_BROKER=postgres ANTIDOTE_POSTGRES_URL=%q COLUMNS=200 %q dlq list --topic %q",
		cfg.Postgres.URL, bin, topic)
	raw, err := exec.Command(script, "-qec", shell, "/dev/null").CombinedOutput()
	if err != nil {
		t.Fatalf("script: %v\n%s", err, raw)
	}
	var row string
	for _, line := range strings.Split(strings.ReplaceAll(string(raw), "\r", ""), "\n") {
		if strings.HasPrefix(line, "l2-") {
			row = line
		}
	}
	if n := utf8.RuneCountInString(row); n != 97 || !strings.HasSuffix(row, "…") {
		t.Errorf("on a 97-column terminal the row has %d columns: %q\n%s", n, row, raw)
	}
}
