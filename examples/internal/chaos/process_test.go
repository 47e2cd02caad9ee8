package chaos_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/jackc/pgx/v5"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/examples/internal/hello"
	"github.com/antidote-mq/antidote/poison"
)

// supervisor keeps the consumer running the way a process manager would:
// whenever it dies it is started again, until it exits 0 (idle: done).
type supervisor struct {
	bin  string
	env  []string
	args []string
	logs string // a stderr file per life

	mu                                sync.Mutex
	cur                               *exec.Cmd
	started                           time.Time
	killed                            map[int]bool // pids SIGKILLed by the test
	lives, kills, crashes, unexpected int
	exits                             []exit // the unexpected ones
	start                             time.Time
	final                             hello.Summary
	lastLog                           string
}

// maxLives bounds the restarts: a crash loop the guard failed to break
// ends the run instead of spinning until the timeout.
const maxLives = 200

func (s *supervisor) run(ctx context.Context) error {
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		s.mu.Lock()
		if s.lives >= maxLives {
			s.mu.Unlock()
			return fmt.Errorf("%d consumer lives and still not done: a crash loop was not broken", s.lives)
		}
		s.lives++
		logPath := filepath.Join(s.logs, fmt.Sprintf("life-%03d.stderr", s.lives))
		s.lastLog = logPath
		s.mu.Unlock()
		logFile, err := os.Create(logPath)
		if err != nil {
			return err
		}
		var stdout bytes.Buffer
		cmd := exec.Command(s.bin, s.args...)
		cmd.Env = childEnv(s.env)
		cmd.Stdout, cmd.Stderr = &stdout, logFile
		if err := cmd.Start(); err != nil {
			_ = logFile.Close()
			return err
		}
		s.mu.Lock()
		s.cur, s.started = cmd, time.Now()
		s.mu.Unlock()
		waitErr := cmd.Wait()
		_ = logFile.Close()
		s.mu.Lock()
		s.cur = nil
		pid := cmd.Process.Pid
		var exitErr *exec.ExitError
		switch {
		case s.killed[pid]:
			s.kills++
		case waitErr == nil:
			s.mu.Unlock()
			if err := jsonLast(stdout.Bytes(), &s.final); err != nil {
				return fmt.Errorf("consumer exited 0 without its summary: %w", err)
			}
			return nil
		case errors.As(waitErr, &exitErr) && exitErr.ExitCode() == 3:
			s.crashes++ // --crash-on: a process-killing message
		default:
			s.unexpected++
			s.exits = append(s.exits, exit{at: time.Since(s.start), err: waitErr, log: logPath})
		}
		s.mu.Unlock()
	}
}

// exit is a consumer exit the test did not cause.
type exit struct {
	at  time.Duration // since the run's start
	err error
	log string
}

func (e exit) stderr() string {
	b, _ := os.ReadFile(e.log)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// kill SIGKILLs the running consumer once it has lived at least minUp; it
// reports false when there is none to kill yet.
func (s *supervisor) kill(minUp time.Duration) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur == nil || time.Since(s.started) < minUp {
		return false
	}
	pid := s.cur.Process.Pid
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return false
	}
	s.killed[pid] = true
	return true
}

func (s *supervisor) killCurrent() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur != nil {
		_ = s.cur.Process.Kill()
	}
}

func (s *supervisor) lastStderr() string {
	s.mu.Lock()
	path := s.lastLog
	s.mu.Unlock()
	b, _ := os.ReadFile(path)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// childEnv is the test's env without Antidote's and OpenTelemetry's
// settings (which point at the shared servers), plus env.
func childEnv(env []string) []string {
	var out []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "ANTIDOTE_") || strings.HasPrefix(kv, "OTEL_") {
			continue
		}
		out = append(out, kv)
	}
	return append(out, env...)
}

func runProcess(bin string, env []string, args ...string) (stdout []byte, stderr string, err error) {
	cmd := exec.Command(bin, args...)
	cmd.Env = childEnv(env)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	return out.Bytes(), errOut.String(), err
}

func lastLine(out []byte) []byte {
	lines := bytes.Split(bytes.TrimSpace(out), []byte("\n"))
	return lines[len(lines)-1]
}

func jsonLast(out []byte, v any) error {
	if len(bytes.TrimSpace(out)) == 0 {
		return errors.New("no output")
	}
	return jsonUnmarshal(lastLine(out), v)
}

// devKafka is `antidote devkafka` run as its own process on a data
// directory: the broker outlives every consumer the test kills, and the
// test can crash (SIGKILL) or stop (SIGTERM) it and start it again on the
// same address and data.
type devKafka struct {
	bin, dir, addr string
	cmd            *exec.Cmd
}

func startDevKafka(t *testing.T, bin string) *devKafka {
	t.Helper()
	k := &devKafka{bin: bin, dir: t.TempDir(), addr: "127.0.0.1:0"}
	if err := k.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k.cmd.Process.Kill(); _ = k.cmd.Wait() })
	return k
}

func (k *devKafka) start() error {
	cmd := exec.Command(k.bin, "devkafka", "--addr", k.addr, "--partitions", "4", "--data-dir", k.dir)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	f := strings.Fields(line)
	if err != nil || len(f) < 4 || f[1] != "listening" {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return fmt.Errorf("devkafka: unexpected first line %q (%v)", line, err)
	}
	go func() { _, _ = bufio.NewReader(stdout).WriteTo(discard{}) }()
	k.cmd, k.addr = cmd, f[3]
	return nil
}

// restart stops the broker with sig (SIGKILL: a crash; SIGTERM: a clean
// stop), waits down, and starts it again on the same address and data.
func (k *devKafka) restart(sig syscall.Signal, down time.Duration) error {
	if err := k.cmd.Process.Signal(sig); err != nil {
		return err
	}
	_ = k.cmd.Wait()
	time.Sleep(down)
	return k.start()
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

func countEffects(ctx context.Context, url string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	var n int
	err = conn.QueryRow(ctx, "SELECT count(*) FROM "+hello.EffectsTable).Scan(&n)
	return n, err
}

// readEffects counts the sink's effect rows per user.
func readEffects(url string) (map[int64]int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, "SELECT user_id, count(*) FROM "+hello.EffectsTable+" GROUP BY user_id")
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", hello.EffectsTable, err)
	}
	out := map[int64]int{}
	for rows.Next() {
		var user int64
		var n int
		if err := rows.Scan(&user, &n); err != nil {
			return nil, err
		}
		out[user] = n
	}
	return out, rows.Err()
}

// readDLQ consumes the DLQ topic until every poison line has a letter and
// the topic stays quiet for 2 s, or it stays quiet for 20 s.
func readDLQ(cfg adapters.Config, topic string, w *workload) ([]letter, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cfg.SetDefaults()
	b, err := adapters.Open(ctx, cfg, watermill.NopLogger{})
	if err != nil {
		return nil, fmt.Errorf("open %s to read the DLQ: %w", cfg.Broker, err)
	}
	defer b.Close()
	msgs, err := b.LetterSubscriber().Subscribe(ctx, topic)
	if err != nil {
		return nil, fmt.Errorf("subscribe to DLQ %q: %w", topic, err)
	}
	wantLines := len(w.payloads) - w.effects()
	covered := map[int]bool{}
	var out []letter
	quiet := 30 * time.Second // the first letter may wait for a group join
	for {
		select {
		case m, ok := <-msgs:
			if !ok {
				return out, errors.New("DLQ subscription closed")
			}
			out = append(out, letter{uuid: m.UUID, payload: string(m.Payload), reason: poison.Reason(m.Metadata.Get(poison.KeyReason)), err: m.Metadata.Get(poison.KeyError), meta: m.Metadata})
			if i, ok := w.byText[string(m.Payload)]; ok {
				covered[i] = true
			}
			m.Ack()
			quiet = 20 * time.Second
			if len(covered) >= wantLines {
				quiet = 2 * time.Second
			}
		case <-time.After(quiet):
			return out, nil
		case <-ctx.Done():
			return out, fmt.Errorf("reading the DLQ: %w", ctx.Err())
		}
	}
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }
