package main

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/antidote-mq/antidote/internal/testenv"
)

func TestMain(m *testing.M) {
	if os.Getenv("ANTIDOTE_CONSUMER_CHILD") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestREADMEShowsThisConsumer keeps the README's consumer this file, so that
// what a reader pastes is what CI builds and runs.
func TestREADMEShowsThisConsumer(t *testing.T) {
	src, err := os.ReadFile("main.go")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	code := string(src[bytes.Index(src, []byte("package main")):])
	if !strings.Contains(string(readme), "```go\n"+code+"```\n") {
		t.Fatal("README.md does not show examples/consumer/main.go from `package main` on in a ```go block; copy the file's code into the README")
	}
}

// syncBuffer is the child's output, read while it is written.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestConsumerHandlesOneOrderAndDeadLettersThePoison runs the README's
// consumer as a reader would (ANTIDOTE_BROKER=postgres), on a queue table of
// its own: the good order is handled, the one missing its closing brace is
// dead-lettered as permanent, and Ctrl-C stops it with exit status 0.
func TestConsumerHandlesOneOrderAndDeadLettersThePoison(t *testing.T) {
	pgURL := testenv.PostgresURL(t)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Env = append(os.Environ(),
		"ANTIDOTE_CONSUMER_CHILD=1",
		"ANTIDOTE_BROKER=postgres",
		"ANTIDOTE_POSTGRES_URL="+pgURL,
		"ANTIDOTE_POSTGRES_TABLE_PREFIX=readme_consumer_"+strings.ReplaceAll(time.Now().Format("150405.000000"), ".", "")+"_",
	)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
		}
	}()
	testenv.Eventually(t, time.Minute, "the consumer handled the good order and dead-lettered the poison one", func() bool {
		s := out.String()
		return strings.Contains(s, "order from user 10023: Hello World") &&
			strings.Contains(s, "Message dead-lettered") && strings.Contains(s, "reason=permanent")
	})
	if strings.Contains(out.String(), "order from user 10024") {
		t.Errorf("the poison order was handled:\n%s", out.String())
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("after Ctrl-C the consumer exited with %v:\n%s", err, out.String())
		}
	case <-time.After(time.Minute):
		t.Fatalf("the consumer did not stop within a minute of Ctrl-C:\n%s", out.String())
	}
}
