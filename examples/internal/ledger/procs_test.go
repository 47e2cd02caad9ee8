package ledger_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc keeps one relay or worker running the way a process manager would:
// whenever it dies (SIGKILLed by the test, or on its own) it is started
// again, until ctx ends.
type proc struct {
	name string
	env  []string
	logs string // a stderr file per life

	mu         sync.Mutex
	cur        *exec.Cmd
	started    time.Time
	killed     map[int]bool
	lives      int
	kills      int
	unexpected []string // exits the test did not cause: error and stderr tail
	done       chan struct{}
}

func startProc(ctx context.Context, name, logs string, env []string) *proc {
	p := &proc{name: name, env: env, logs: logs, killed: map[int]bool{}, done: make(chan struct{})}
	go p.run(ctx)
	return p
}

func (p *proc) run(ctx context.Context) {
	defer close(p.done)
	for ctx.Err() == nil {
		p.mu.Lock()
		p.lives++
		logPath := filepath.Join(p.logs, fmt.Sprintf("%s-life-%02d.stderr", p.name, p.lives))
		p.mu.Unlock()
		logFile, err := os.Create(logPath)
		if err != nil {
			p.fail(err.Error())
			return
		}
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
		cmd.Env = childEnv(p.env)
		cmd.Stderr = logFile
		if err := cmd.Start(); err != nil {
			_ = logFile.Close()
			p.fail(err.Error())
			return
		}
		p.mu.Lock()
		p.cur, p.started = cmd, time.Now()
		p.mu.Unlock()
		waitErr := cmd.Wait()
		_ = logFile.Close()
		p.mu.Lock()
		p.cur = nil
		switch {
		case ctx.Err() != nil:
		case p.killed[cmd.Process.Pid]:
			p.kills++
		default:
			p.unexpected = append(p.unexpected, fmt.Sprintf("%s exited (%v):\n%s", p.name, waitErr, tail(logPath, 1500)))
		}
		p.mu.Unlock()
		if ctx.Err() == nil {
			time.Sleep(100 * time.Millisecond) // no spin if it keeps failing
		}
	}
}

func (p *proc) fail(msg string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.unexpected = append(p.unexpected, p.name+": "+msg)
}

// pid is the running process's pid once it has lived minUp; 0 if none
// (or only one the test killed and that has not exited yet).
func (p *proc) pid(minUp time.Duration) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cur == nil || p.killed[p.cur.Process.Pid] || time.Since(p.started) < minUp {
		return 0
	}
	return p.cur.Process.Pid
}

// kill SIGKILLs pid if it is still the running process.
func (p *proc) kill(pid int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cur == nil || p.cur.Process.Pid != pid {
		return false
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return false
	}
	p.killed[pid] = true
	return true
}

func (p *proc) counts() (lives, kills int, unexpected []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lives, p.kills, append([]string(nil), p.unexpected...)
}

// childEnv is the test's environment without Antidote's and
// OpenTelemetry's settings (which may point at the shared servers), plus
// env.
func childEnv(env []string) []string {
	var out []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "ANTIDOTE_") || strings.HasPrefix(kv, "OTEL_") || strings.HasPrefix(kv, "LEDGER_") {
			continue
		}
		out = append(out, kv)
	}
	return append(out, env...)
}

func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// kafkaBroker is devkafka in its own process on a data directory, which
// the test SIGKILLs and starts again on the same address and data.
type kafkaBroker struct {
	dir, addr, logs string
	cmd             *exec.Cmd
	starts          int
}

func (k *kafkaBroker) start() error {
	k.starts++
	logFile, err := os.Create(filepath.Join(k.logs, fmt.Sprintf("devkafka-%02d.stderr", k.starts)))
	if err != nil {
		return err
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = childEnv([]string{envRole + "=devkafka", envAddr + "=" + k.addr, envDataDir + "=" + k.dir})
	cmd.Stderr = logFile
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	f := strings.Fields(line)
	if err != nil || len(f) != 3 || f[1] != "listening" {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return fmt.Errorf("devkafka: unexpected first line %q (%v)", line, err)
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	k.cmd, k.addr = cmd, f[2]
	return nil
}

// crash SIGKILLs the broker, runs meanwhile, waits down and starts it
// again on its address and data directory.
func (k *kafkaBroker) crash(down time.Duration, meanwhile func() error) error {
	if err := k.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		return err
	}
	_ = k.cmd.Wait()
	err := meanwhile()
	time.Sleep(down)
	if serr := k.start(); serr != nil {
		return serr
	}
	return err
}

func (k *kafkaBroker) stop() {
	if k.cmd != nil {
		_ = k.cmd.Process.Kill()
		_ = k.cmd.Wait()
	}
}
