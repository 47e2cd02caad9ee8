package testenv

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Private servers: a test that stops and starts its server (the chaos
// test) gets one of its own, so it never disturbs the shared servers other
// packages' tests use at the same time, nor a developer's own.

// Postgres is a private PostgreSQL cluster started from the machine's
// binaries (initdb, pg_ctl) in a temporary directory.
type Postgres struct {
	URL  string // postgres://postgres@127.0.0.1:PORT/postgres?sslmode=disable
	Port int

	bin, dir, data string
	asUser         []string // runuser prefix when running as root
}

// StartPostgres initialises and starts a private cluster on a free port and
// stops and removes it when t ends. The binaries come from
// ANTIDOTE_PG_BIN (a directory), else initdb on PATH, else the newest
// /usr/lib/postgresql/*/bin. Missing binaries skip the test, or fail it under
// ANTIDOTE_REQUIRE_SERVICES=1.
func StartPostgres(t testing.TB) *Postgres {
	t.Helper()
	bin := os.Getenv("ANTIDOTE_PG_BIN")
	if bin == "" {
		if p, err := exec.LookPath("initdb"); err == nil {
			bin = filepath.Dir(p)
		} else if dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin"); len(dirs) > 0 {
			sort.Slice(dirs, func(i, j int) bool { return versionOf(dirs[i]) < versionOf(dirs[j]) })
			bin = dirs[len(dirs)-1]
		}
	}
	if _, err := os.Stat(filepath.Join(bin, "initdb")); bin == "" || err != nil {
		missing(t, "PostgreSQL server binaries (initdb, pg_ctl)", "install postgresql or set ANTIDOTE_PG_BIN to their directory")
	}
	dir, err := os.MkdirTemp("", "antidote-pg-")
	if err != nil {
		t.Fatal(err)
	}
	p := &Postgres{bin: bin, dir: dir, data: filepath.Join(dir, "data"), Port: FreePorts(t, 1)[0]}
	if os.Geteuid() == 0 {
		// initdb refuses to run as root: run the cluster as postgres.
		u, err := user.Lookup("postgres")
		if err != nil {
			_ = os.RemoveAll(dir)
			missing(t, "a postgres user to run a private cluster as (running as root)", "create the postgres system user")
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
		p.asUser = []string{"runuser", "-u", "postgres", "--"}
	}
	t.Cleanup(func() {
		_ = p.pgctl("stop", "-m", "immediate")
		_ = os.RemoveAll(dir)
	})
	if out, err := p.run(filepath.Join(bin, "initdb"), "-D", p.data, "-A", "trust", "-U", "postgres", "--no-sync"); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	p.URL = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", p.Port)
	return p
}

// Stop stops the server the way a crash would (pg_ctl -m immediate: no
// shutdown checkpoint, clients cut off); the next Start recovers from WAL.
func (p *Postgres) Stop() error { return p.pgctl("stop", "-m", "immediate") }

// Start starts the server and waits until it accepts connections.
func (p *Postgres) Start() error {
	return p.pgctl("start", "-l", filepath.Join(p.dir, "log"),
		"-o", fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1", p.Port, p.dir))
}

func (p *Postgres) pgctl(args ...string) error {
	args = append([]string{"-D", p.data, "-w", "-t", "60"}, args...)
	out, err := p.run(filepath.Join(p.bin, "pg_ctl"), args...)
	if err != nil {
		return fmt.Errorf("pg_ctl %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

func (p *Postgres) run(name string, args ...string) ([]byte, error) {
	argv := append(append(append([]string{}, p.asUser...), name), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = p.dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.Bytes(), err
}

func versionOf(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

// RabbitMQ is a private RabbitMQ node (its own node name, ports and data
// directory) started with the machine's rabbitmq-server.
type RabbitMQ struct {
	URL  string // amqp://guest:guest@127.0.0.1:PORT/
	Node string
	// TLSURL is amqps://guest:guest@localhost:PORT/ when the node was
	// started with RabbitMQTLS, else empty.
	TLSURL string

	ctl string
	env []string
}

// RabbitMQTLS adds a TLS listener to a private node: the server's PEM
// certificate and key, and the CA its clients' certificates must be signed
// by (a client without a certificate is refused). SASL EXTERNAL is enabled,
// taking the user from the client certificate's common name.
type RabbitMQTLS struct {
	CAFile, CertFile, KeyFile string
}

// StartRabbitMQ starts a private node on free ports and shuts it down and
// removes its files when t ends. Missing rabbitmq-server skips the test, or
// fails it under ANTIDOTE_REQUIRE_SERVICES=1.
func StartRabbitMQ(t testing.TB) *RabbitMQ {
	t.Helper()
	return StartRabbitMQWithTLS(t, nil)
}

// StartRabbitMQWithTLS is StartRabbitMQ with, if tc is not nil, a TLS
// listener (RabbitMQ.TLSURL) as tc says.
func StartRabbitMQWithTLS(t testing.TB, tc *RabbitMQTLS) *RabbitMQ {
	t.Helper()
	return StartRabbitMQWith(t, RabbitMQOptions{TLS: tc})
}

// RabbitMQOptions are the settings of a private node that differ from a
// default server's.
type RabbitMQOptions struct {
	// TLS, when set, adds a TLS listener (see RabbitMQTLS).
	TLS *RabbitMQTLS
	// Conf are extra rabbitmq.conf lines, e.g. "frame_max = 1048576"
	// (settings the shared server must never be given).
	Conf []string
}

// StartRabbitMQWith is StartRabbitMQ with the settings of o.
func StartRabbitMQWith(t testing.TB, o RabbitMQOptions) *RabbitMQ {
	t.Helper()
	tc := o.TLS
	server, ctl := sbin("rabbitmq-server"), sbin("rabbitmqctl")
	if server == "" || ctl == "" {
		missing(t, "rabbitmq-server and rabbitmqctl", "install rabbitmq-server")
	}
	dir, err := os.MkdirTemp("", "antidote-rabbitmq-")
	if err != nil {
		t.Fatal(err)
	}
	// The server may drop to the rabbitmq user: let it write here.
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	ports := FreePorts(t, 3)
	conf := filepath.Join(dir, "rabbitmq.conf")
	plugins := filepath.Join(dir, "enabled_plugins")
	confText := fmt.Sprintf("listeners.tcp.local = 127.0.0.1:%d\n", ports[0])
	enabled := "[]." // no management listener to collide
	if tc != nil {
		// The server may run as the rabbitmq user: give it copies it can read.
		cp := func(src, name string) string {
			data, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			dst := filepath.Join(dir, name)
			if err := os.WriteFile(dst, data, 0o644); err != nil {
				t.Fatal(err)
			}
			return dst
		}
		confText += fmt.Sprintf("listeners.ssl.local = 127.0.0.1:%d\n", ports[2]) +
			"ssl_options.cacertfile = " + cp(tc.CAFile, "tls-ca.pem") + "\n" +
			"ssl_options.certfile = " + cp(tc.CertFile, "tls-cert.pem") + "\n" +
			"ssl_options.keyfile = " + cp(tc.KeyFile, "tls-key.pem") + "\n" +
			"ssl_options.verify = verify_peer\n" +
			"ssl_options.fail_if_no_peer_cert = true\n" +
			"ssl_cert_login_from = common_name\n" +
			"auth_mechanisms.1 = PLAIN\n" +
			"auth_mechanisms.2 = AMQPLAIN\n" +
			"auth_mechanisms.3 = EXTERNAL\n" +
			"loopback_users = none\n"
		enabled = "[rabbitmq_auth_mechanism_ssl]."
	}
	for _, line := range o.Conf {
		confText += line + "\n"
	}
	if err := os.WriteFile(conf, []byte(confText), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(plugins, []byte(enabled+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := &RabbitMQ{
		Node: fmt.Sprintf("antidote-%d-%d@localhost", os.Getpid(), ports[0]),
		URL:  fmt.Sprintf("amqp://guest:guest@127.0.0.1:%d/", ports[0]),
		ctl:  ctl,
	}
	if tc != nil {
		r.TLSURL = fmt.Sprintf("amqps://guest:guest@localhost:%d/", ports[2])
	}
	r.env = append(os.Environ(),
		"RABBITMQ_NODENAME="+r.Node,
		"RABBITMQ_DIST_PORT="+strconv.Itoa(ports[1]),
		"RABBITMQ_CONFIG_FILE="+conf,
		"RABBITMQ_ENABLED_PLUGINS_FILE="+plugins,
		"RABBITMQ_MNESIA_BASE="+filepath.Join(dir, "mnesia"),
		"RABBITMQ_LOG_BASE="+filepath.Join(dir, "log"),
		"RABBITMQ_PID_FILE="+filepath.Join(dir, "pid"),
	)
	t.Cleanup(func() {
		_, _ = r.rabbitmqctl(60*time.Second, "shutdown")
		_ = os.RemoveAll(dir)
	})
	start := exec.Command(server, "-detached")
	start.Env = r.env
	if out, err := start.CombinedOutput(); err != nil {
		t.Fatalf("rabbitmq-server -detached: %v\n%s", err, out)
	}
	// await_startup fails at once until the node has registered with epmd.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		out, err := r.rabbitmqctl(30*time.Second, "await_startup")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("private RabbitMQ node %s did not start: %v\n%s\nlogs in %s", r.Node, err, out, dir)
		}
		time.Sleep(500 * time.Millisecond)
	}
	return r
}

// SetPolicy sets a policy on the node's default vhost (`rabbitmqctl
// set_policy --apply-to queues NAME PATTERN DEFINITION`), e.g. a queue length
// limit that makes a queue refuse publishes when full.
func (r *RabbitMQ) SetPolicy(name, pattern, definition string) error {
	if out, err := r.rabbitmqctl(time.Minute, "set_policy", "--apply-to", "queues", name, pattern, definition); err != nil {
		return fmt.Errorf("rabbitmqctl set_policy %s: %w\n%s", name, err, out)
	}
	return nil
}

// AddUser adds a user with every permission on the default vhost, e.g.
// the common name of a client certificate for SASL EXTERNAL.
func (r *RabbitMQ) AddUser(name, password string) error {
	for _, args := range [][]string{{"add_user", name, password}, {"set_permissions", "-p", "/", name, ".*", ".*", ".*"}} {
		if out, err := r.rabbitmqctl(time.Minute, args...); err != nil {
			return fmt.Errorf("rabbitmqctl %s: %w\n%s", args[0], err, out)
		}
	}
	return nil
}

// Eval evaluates an Erlang expression on the node (`rabbitmqctl eval`),
// e.g. application:set_env(rabbit, frame_max, 131072). to change a
// setting for the connections opened from then on.
func (r *RabbitMQ) Eval(expr string) (string, error) {
	out, err := r.rabbitmqctl(time.Minute, "eval", expr)
	if err != nil {
		return "", fmt.Errorf("rabbitmqctl eval %s: %w\n%s", expr, err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

// StopApp stops the RabbitMQ application (`rabbitmqctl stop_app`): clients
// are disconnected, durable queues and persistent messages are kept.
func (r *RabbitMQ) StopApp() error { return r.do("stop_app") }

// StartApp starts it again (`rabbitmqctl start_app`).
func (r *RabbitMQ) StartApp() error { return r.do("start_app") }

func (r *RabbitMQ) do(cmd string) error {
	if out, err := r.rabbitmqctl(2*time.Minute, cmd); err != nil {
		return fmt.Errorf("rabbitmqctl -n %s %s: %w\n%s", r.Node, cmd, err, out)
	}
	return nil
}

func (r *RabbitMQ) rabbitmqctl(timeout time.Duration, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, r.ctl, append([]string{"-n", r.Node}, args...)...)
	cmd.Env = r.env
	return cmd.CombinedOutput()
}

// Redis is a private Redis server started from the machine's
// redis-server, with persistence off (no RDB snapshots, no AOF): a
// restarted server holds nothing, as a Redis configured without
// persistence loses every key when it restarts.
type Redis struct {
	Addr string // 127.0.0.1:PORT
	Port int

	bin, dir string
	proc     *exec.Cmd
	exited   chan error // Wait's result, once the process ends
}

// StartRedis starts a private server on a free port and stops it and
// removes its files when t ends. The binary is redis-server on PATH, else
// /usr/bin/redis-server. A missing binary skips the test, or fails it under
// ANTIDOTE_REQUIRE_SERVICES=1.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		bin = "/usr/bin/redis-server"
	}
	if !fileExists(bin) {
		missing(t, "redis-server", "install redis-server")
	}
	dir, err := os.MkdirTemp("", "antidote-redis-")
	if err != nil {
		t.Fatal(err)
	}
	r := &Redis{bin: bin, dir: dir, Port: FreePorts(t, 1)[0]}
	r.Addr = fmt.Sprintf("127.0.0.1:%d", r.Port)
	t.Cleanup(func() {
		_ = r.Stop()
		_ = os.RemoveAll(dir)
	})
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	return r
}

// Start starts the server (again, on the same port: empty) and waits until
// it answers PING.
func (r *Redis) Start() error {
	r.proc = exec.Command(r.bin, "--port", strconv.Itoa(r.Port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", r.dir, "--logfile", filepath.Join(r.dir, "log"))
	if err := r.proc.Start(); err != nil {
		return fmt.Errorf("redis-server: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- r.proc.Wait() }()
	err := poll(30*time.Second, func() error {
		select {
		case err := <-exited:
			exited <- err
			return nil // stop polling: it is not coming up
		default:
		}
		return r.ping()
	})
	select {
	case werr := <-exited:
		r.proc = nil
		log, _ := os.ReadFile(filepath.Join(r.dir, "log"))
		return fmt.Errorf("private redis-server on %s exited: %v\n%s", r.Addr, werr, log)
	default:
	}
	if err != nil {
		return fmt.Errorf("private redis-server on %s did not answer: %w", r.Addr, err)
	}
	r.exited = exited
	return nil
}

// Stop kills the server the way a crash would (SIGKILL) and waits for it
// to exit; with persistence off, what it held is gone.
func (r *Redis) Stop() error {
	if r.proc == nil {
		return nil
	}
	_ = r.proc.Process.Kill()
	<-r.exited
	r.proc = nil
	return nil
}

func (r *Redis) ping() error {
	c, err := net.DialTimeout("tcp", r.Addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	buf := make([]byte, 7)
	n, err := c.Read(buf)
	if err != nil {
		return err
	}
	if string(buf[:n]) != "+PONG\r\n" {
		return fmt.Errorf("PING answered %q", buf[:n])
	}
	return nil
}

func sbin(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/usr/local/sbin", "/usr/lib/rabbitmq/bin"} {
		if p := filepath.Join(dir, name); fileExists(p) {
			return p
		}
	}
	return ""
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func missing(t testing.TB, what, fix string) {
	t.Helper()
	if Required() {
		t.Fatalf("%s required (ANTIDOTE_REQUIRE_SERVICES=1) but not found: %s", what, fix)
	}
	t.Skipf("%s not found (%s); set ANTIDOTE_REQUIRE_SERVICES=1 to make this a failure", what, fix)
}

// FreePorts returns n TCP ports on 127.0.0.1 that were free a moment ago.
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
	var out []int
	var ls []net.Listener
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		_ = l.Close()
	}
	return out
}
