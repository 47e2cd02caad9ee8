package hello

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	wmiddleware "github.com/ThreeDotsLabs/watermill/message/router/middleware"

	"github.com/antidote-mq/antidote/adapters"
)

// Tests that need a consumer which really dies run this test binary again as
// a child process: HELLO_CHILD=antidote runs the example (Run), and
// HELLO_CHILD=watermill runs the same handler under Watermill's own
// Retry + PoisonQueue, for comparison.
func TestMain(m *testing.M) {
	switch os.Getenv("HELLO_CHILD") {
	case "":
		os.Exit(m.Run())
	case "antidote":
		var args []string
		_ = json.Unmarshal([]byte(os.Getenv("HELLO_CHILD_ARGS")), &args)
		os.Exit(Run(context.Background(), adapters.Kind(os.Getenv("HELLO_CHILD_KIND")), args, os.Stdout, os.Stderr))
	case "watermill":
		os.Exit(watermillChild(adapters.Kind(os.Getenv("HELLO_CHILD_KIND")), os.Getenv("HELLO_CHILD_TOPIC")))
	}
}

// watermillChild consumes topic with Watermill's recommended poison setup
// and a handler that exits the process on a payload containing CRASH.
func watermillChild(kind adapters.Kind, topic string) int {
	cfg, err := adapters.LoadConfig("")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	cfg.Broker = kind
	b, err := adapters.Open(context.Background(), cfg, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer b.Close()
	r, _ := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	pq, _ := wmiddleware.PoisonQueue(b.Publisher, topic+".poison")
	r.AddMiddleware(wmiddleware.Recoverer, pq, wmiddleware.Retry{MaxRetries: 2, InitialInterval: 10 * time.Millisecond}.Middleware)
	last := time.Now()
	r.AddConsumerHandler("hello", topic, b.Subscriber, func(msg *message.Message) error {
		last = time.Now()
		if bytes.Contains(msg.Payload, []byte("CRASH")) {
			os.Exit(3)
		}
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for time.Since(last) < 3*time.Second {
			time.Sleep(100 * time.Millisecond)
		}
		cancel()
	}()
	if err := r.Run(ctx); err != nil {
		return 1
	}
	return 0
}

// child runs this test binary as a consumer process and returns its exit
// code, stdout and stderr.
func child(t *testing.T, mode string, kind adapters.Kind, env []string, args ...string) (int, string, string) {
	t.Helper()
	a, _ := json.Marshal(args)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "HELLO_CHILD="+mode, "HELLO_CHILD_KIND="+string(kind), "HELLO_CHILD_ARGS="+string(a))
	cmd.Env = append(cmd.Env, env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), out.String(), errb.String()
		} else if err != nil {
			t.Fatal(err)
		}
		return 0, out.String(), errb.String()
	case <-time.After(3 * time.Minute):
		_ = cmd.Process.Kill()
		t.Fatalf("consumer process hung; stderr: %s", errb.String())
		return -1, "", ""
	}
}

// devKafka starts `antidote devkafka` as its own process, so the broker
// outlives the consumers, and returns its address (comma-separated for a
// cluster). extra are more devkafka flags.
func devKafka(t *testing.T, extra ...string) string {
	t.Helper()
	return devKafkaOf(t, antidoteBin(t), extra...)
}

// antidoteBin builds the antidote CLI into the test's temporary directory.
func antidoteBin(t *testing.T) string {
	t.Helper()
	bin := t.TempDir() + "/antidote"
	build := exec.Command("go", "build", "-o", bin, "github.com/antidote-mq/antidote/cmd/antidote")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build antidote: %v\n%s", err, out)
	}
	return bin
}

// devKafkaOf is devKafka with the antidote binary bin.
func devKafkaOf(t *testing.T, bin string, extra ...string) string {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"devkafka", "--addr", "127.0.0.1:0", "--partitions", "4"}, extra...)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line := make([]byte, 256)
	n, err := stdout.Read(line)
	if err != nil {
		t.Fatalf("devkafka said nothing: %v", err)
	}
	f := strings.Fields(string(line[:n]))
	if len(f) < 4 || f[1] != "listening" {
		t.Fatalf("unexpected devkafka output %q", line[:n])
	}
	return f[3]
}
