package hello

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/internal/testenv/hospitalstore"
)

// `go run ./examples/kafka` with no flag shows the incident: poison pills
// in the flood, the malformed JSON object among them, dead-lettered with
// their reason, every message accounted for, exit 0; the human summary says
// what happened to them and what to run next.
func TestDefaultRunShowsTheIncident(t *testing.T) {
	t.Setenv("ANTIDOTE_KAFKA_BROKERS", "") // a fresh clone: the embedded broker
	s, stderr, code := runExample(t, adapters.KindKafka, "--json")
	if code != 0 {
		t.Fatalf("exit %d; stderr: %s", code, stderr)
	}
	if s.DeadLettered < 1 || s.DeadLettered != int64(ExpectedDeadLetters(1000, DefaultPoisonEvery)) ||
		s.Published != 1000 || s.Processed+s.DeadLettered+s.DuplicatesSkipped != s.Published {
		t.Fatalf("summary %+v: want poison dead-lettered and every message accounted for", s)
	}
	if s.DeadLetterReasons["permanent"] != 2 || s.DeadLetterReasons["panic"] != 1 || s.Retries != 2 {
		t.Fatalf("summary %+v: want 2 permanent letters (malformed, wrong types), 1 panic, the transient pill retried twice", s)
	}

	var stdout, errb bytes.Buffer
	if code := Run(context.Background(), adapters.KindKafka, nil, &stdout, &errb); code != 0 {
		t.Fatalf("exit %d; stderr: %s", code, errb.String())
	}
	out := stdout.String()
	for _, want := range []string{
		"dead-lettered 3",
		"4 poison pills (--poison-every 250; --poison-every 0 for a clean run)",
		`3 dead-lettered to "hello.dlq" (permanent 2, panic 1)`,
		`permanent  {"user_id":250, "msg":"Hello World"  invalid message: invalid hello payload: not a JSON object: unexpected end of JSON input`,
		"panic: assignment to entry in nil map",
		"\n  go run ./cmd/antidote devkafka &\n  export ANTIDOTE_KAFKA_BROKERS=127.0.0.1:9092\n  go run ./examples/kafka\n",
		"\n  go run ./cmd/antidote dlq group --broker kafka --topic hello\n",
		"go run ./cmd/antidote hospital serve --broker kafka\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the summary does not say %q:\n%s", want, out)
		}
	}

	stdout.Reset()
	if code := Run(context.Background(), adapters.KindKafka, []string{"--poison-every", "0"}, &stdout, &errb); code != 0 {
		t.Fatalf("--poison-every 0: exit %d; stderr: %s", code, errb.String())
	}
	if got := strings.TrimSpace(stdout.String()); strings.Contains(got, "\n") || !strings.Contains(got, "processed 1000, dead-lettered 0") {
		t.Fatalf("--poison-every 0: want the counts alone, a clean run: %q", got)
	}
}

// The commands the summary prints work as printed, on each broker: run
// against a broker that outlives the run, then `antidote dlq group` and
// `list` show the letters, `antidote hospital ingest` stores them and
// `hospital serve` shows their groups (each given a table of its own and,
// for serve, a free port, the only additions).
func TestSummaryCommandsWork(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the antidote CLI and runs it against every broker")
	}
	bin := antidoteBin(t)
	for _, kind := range []adapters.Kind{adapters.KindKafka, adapters.KindAMQP, adapters.KindPostgres} {
		t.Run(string(kind), func(t *testing.T) {
			needBroker(t, kind)
			if kind == adapters.KindKafka {
				t.Setenv("ANTIDOTE_KAFKA_BROKERS", devKafkaOf(t, bin))
			}
			tp := topic(t)
			var stdout, stderr bytes.Buffer
			if code := Run(context.Background(), kind, []string{"--topic", tp}, &stdout, &stderr); code != 0 {
				t.Fatalf("exit %d; stderr: %s", code, stderr.String())
			}
			var cmds [][]string
			for _, line := range strings.Split(stdout.String(), "\n") {
				if l := strings.TrimPrefix(line, "  "); strings.HasPrefix(l, "go run ./cmd/antidote ") || strings.HasPrefix(l, "ANTIDOTE_HOSPITAL_URL=") {
					cmds = append(cmds, shellWords(t, l))
				}
			}
			if len(cmds) != 4 {
				t.Fatalf("%d antidote commands in the summary, want 4 (dlq group, dlq list, hospital ingest, hospital serve):\n%s", len(cmds), stdout.String())
			}
			table := hospitalstore.Name(t, "hosp_cmds_")
			for _, words := range cmds {
				var env []string
				for len(words) > 0 && strings.Contains(words[0], "=") {
					env, words = append(env, words[0]), words[1:]
				}
				if len(words) < 4 || words[0] != "go" || words[1] != "run" || words[2] != "./cmd/antidote" {
					t.Fatalf("not a go run ./cmd/antidote command: %q", words)
				}
				args := words[3:]
				switch strings.Join(args[:2], " ") {
				case "dlq group":
					out := runCLI(t, bin, env, args)
					if !strings.Contains(out, "3 letters in 3 groups") || !strings.Contains(out, "unexpected end of JSON input") {
						t.Errorf("%q:\n%s", args, out)
					}
				case "dlq list":
					if out := runCLI(t, bin, env, args); !strings.Contains(out, "3 letters in "+tp+".dlq") {
						t.Errorf("%q:\n%s", args, out)
					}
				case "hospital ingest":
					if out := runCLI(t, bin, env, append(args, "--table", table)); !strings.Contains(out, "3 letters received: 3 new") {
						t.Errorf("%q:\n%s", args, out)
					}
				case "hospital serve":
					if groups := serveGroups(t, bin, env, append(args, "--table", table, "--addr", "127.0.0.1:0")); groups != 3 {
						t.Errorf("%q: %d groups, want 3", args, groups)
					}
				default:
					t.Errorf("unexpected command %q", args)
				}
			}
		})
	}
}

func runCLI(t *testing.T, bin string, env, args []string) string {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Errorf("antidote %q: %v\n%s%s", args, err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// serveGroups starts `antidote hospital serve` and returns how many groups
// its /api/groups lists.
func serveGroups(t *testing.T, bin string, env, args []string) int {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	var url string
	sc := bufio.NewScanner(stderr)
	for url == "" && sc.Scan() {
		if _, after, ok := strings.Cut(sc.Text(), "serving http://"); ok {
			url = "http://" + strings.Fields(after)[0]
		}
	}
	if url == "" {
		t.Fatalf("antidote %q did not say where it serves", args)
	}
	go func() { // keep reading, so the server never blocks on a full pipe
		for sc.Scan() {
		}
	}()
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url + "/api/groups")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var page struct {
		Groups []json.RawMessage `json:"groups"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&page); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("/api/groups: %s, %v", resp.Status, err)
	}
	return len(page.Groups)
}

// shellWords splits a command line as a POSIX shell would, for what the
// summary prints: words, '...' and "..." quoting, $VAR in double quotes.
func shellWords(t *testing.T, line string) []string {
	t.Helper()
	var words []string
	var w strings.Builder
	inWord := false
	for i := 0; i < len(line); i++ {
		switch c := line[i]; c {
		case ' ':
			if inWord {
				words, inWord = append(words, w.String()), false
				w.Reset()
			}
		case '\'', '"':
			end := strings.IndexByte(line[i+1:], c)
			if end < 0 {
				t.Fatalf("unterminated quote in %q", line)
			}
			s := line[i+1 : i+1+end]
			if c == '"' {
				s = os.ExpandEnv(s)
			}
			w.WriteString(s)
			inWord, i = true, i+1+end
		default:
			w.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, w.String())
	}
	return words
}
