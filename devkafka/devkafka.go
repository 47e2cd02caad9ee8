package devkafka

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/gofrs/flock"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/antidote-mq/antidote/adapters"
)

func init() {
	adapters.RegisterEmbeddedKafka(func(addr string, partitions int) ([]string, func(), error) {
		b, err := Start(Config{Addr: addr, Partitions: partitions})
		if err != nil {
			return nil, nil, err
		}
		return b.Addrs(), b.Close, nil
	})
}

// Config configures Start.
type Config struct {
	// Addr to listen on. If Addr is empty, Start listens on "127.0.0.1:0"
	// (a free port). With Brokers > 1 the brokers listen on consecutive
	// ports from Addr's (each on a free port when it is 0).
	Addr string
	// Partitions of auto-created topics. If Partitions is 0, Start uses 4.
	Partitions int

	// Brokers is the number of brokers of the cluster, all in this
	// process, sharing their data. If Brokers is 0, Start runs one.
	Brokers int

	// SASLMechanism makes clients authenticate: PLAIN, SCRAM-SHA-256 or
	// SCRAM-SHA-512, with SASLUser and SASLPassword (a superuser). If
	// SASLMechanism is empty, clients do not authenticate.
	SASLMechanism string
	// SASLUser is the user clients authenticate as; required with
	// SASLMechanism.
	SASLUser string
	// SASLPassword is SASLUser's password; required with SASLMechanism.
	SASLPassword string

	// TLSCertFile and TLSKeyFile are the PEM certificate and key the
	// brokers serve TLS with. If both are empty, the brokers speak plain
	// TCP; one without the other is an error.
	TLSCertFile string
	// TLSKeyFile is the PEM private key of TLSCertFile.
	TLSKeyFile string

	// DataDir keeps the cluster's topics, records and committed offsets
	// in this directory (created if needed), so that a broker started
	// again on it resumes where the last one stopped: after Close, and
	// after a SIGKILL with nothing acknowledged lost (see the package
	// documentation for what is kept and what a machine crash may lose).
	// One broker at a time: Start refuses a directory another running
	// broker holds. If DataDir is empty, the data lives in memory and is
	// gone on Close.
	DataDir string
}

func (c *Config) setDefaults() {
	if c.Addr == "" {
		c.Addr = "127.0.0.1:0"
	}
	if c.Partitions == 0 {
		c.Partitions = 4
	}
	if c.Brokers == 0 {
		c.Brokers = 1
	}
	if c.DataDir != "" {
		c.DataDir = filepath.Clean(c.DataDir)
	}
}

// Validate reports a config Start cannot use.
func (c Config) Validate() error {
	var errs []error
	if c.Partitions < 0 {
		errs = append(errs, fmt.Errorf("devkafka: partitions %d is negative; use 1 or more", c.Partitions))
	}
	if c.Brokers < 0 {
		errs = append(errs, fmt.Errorf("devkafka: brokers %d is negative; use 1 or more", c.Brokers))
	}
	switch c.SASLMechanism {
	case "":
		if c.SASLUser != "" || c.SASLPassword != "" {
			errs = append(errs, errors.New("devkafka: a SASL user or password without a SASL mechanism; choose PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"))
		}
	case "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512":
		if c.SASLUser == "" || c.SASLPassword == "" {
			errs = append(errs, fmt.Errorf("devkafka: SASL mechanism %s needs a user and a password", c.SASLMechanism))
		}
	default:
		errs = append(errs, fmt.Errorf("devkafka: unknown SASL mechanism %q; use PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", c.SASLMechanism))
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		errs = append(errs, errors.New("devkafka: a TLS certificate needs its key and a key its certificate: give both files"))
	}
	return errors.Join(errs...)
}

// Broker is a running broker, or cluster of brokers.
type Broker struct {
	cluster *kfake.Cluster
	addrs   []string
	lns     []*trackingListener
	lock    *flock.Flock // DataDir's lock; nil without one
}

// Start starts a broker (Config.Brokers > 1: a cluster) that creates topics
// on first use.
func Start(cfg Config) (*Broker, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	host, portStr, err := net.SplitHostPort(cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("devkafka: address %q is not host:port: %w", cfg.Addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("devkafka: port %q is not a number", portStr)
	}
	ports := make([]int, cfg.Brokers)
	for i := range ports {
		if port != 0 {
			ports[i] = port + i
		}
	}
	b := &Broker{}
	var tlsCfg *tls.Config
	if cfg.TLSCertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCertFile, cfg.TLSKeyFile)
		if err != nil {
			return nil, fmt.Errorf("devkafka: TLS certificate %s and key %s: %w", cfg.TLSCertFile, cfg.TLSKeyFile, err)
		}
		tlsCfg = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	// kfake always binds 127.0.0.1; honour the host the user asked for,
	// and keep each broker's connections so that StopBroker can cut them.
	// TLS is served here rather than by kfake.TLS, under groupListener,
	// which must read the requests in the clear.
	listen := func(network, address string) (net.Listener, error) {
		_, p, err := net.SplitHostPort(address)
		if err != nil {
			return nil, err
		}
		ln, err := net.Listen(network, net.JoinHostPort(host, p))
		if err != nil {
			return nil, err
		}
		if tlsCfg != nil {
			ln = tls.NewListener(ln, tlsCfg)
		}
		tl := &trackingListener{Listener: groupListener(ln), conns: map[net.Conn]struct{}{}}
		b.lns = append(b.lns, tl)
		return tl, nil
	}
	opts := []kfake.Opt{
		kfake.NumBrokers(cfg.Brokers),
		kfake.Ports(ports...),
		kfake.ListenFn(listen),
		// Not kfake.AllowAutoTopicCreation: autoCreate creates topics,
		// so that they are saved as CreateTopics' are.
		kfake.DefaultNumPartitions(cfg.Partitions),
	}
	if cfg.SASLMechanism != "" {
		opts = append(opts, kfake.EnableSASL(), kfake.Superuser(cfg.SASLMechanism, cfg.SASLUser, cfg.SASLPassword))
	}
	if cfg.DataDir != "" {
		lock, err := lockDataDir(cfg.DataDir)
		if err != nil {
			return nil, err
		}
		b.lock = lock
		if err := prepareDataDir(cfg); err != nil {
			b.unlock()
			return nil, err
		}
		opts = append(opts, kfake.DataDir(cfg.DataDir))
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		for _, ln := range b.lns {
			_ = ln.Close()
		}
		b.unlock()
		if cfg.DataDir != "" {
			return nil, fmt.Errorf("devkafka: start on %s with data directory %s (if its files are damaged, move the directory away to start empty): %w", cfg.Addr, cfg.DataDir, err)
		}
		return nil, fmt.Errorf("devkafka: listen on %s: %w", cfg.Addr, err)
	}
	// kfake listens from NewCluster on: a metadata request in between
	// is answered UNKNOWN_TOPIC_OR_PARTITION, which clients retry.
	c.ControlKey(int16(kmsg.Metadata), autoCreate(c))
	b.cluster = c
	b.addrs = c.ListenAddrs()
	return b, nil
}

// Addrs are the host:port addresses clients bootstrap from, one per broker
// in the order they started (a stopped broker's address stays listed).
func (e *Broker) Addrs() []string { return append([]string(nil), e.addrs...) }

// StopBroker kills broker i (an index into Addrs) of a cluster, as a crash
// would: it stops listening, its open connections are cut, and the
// partitions it led move to the brokers left (the data lives on: kfake
// keeps it for the whole cluster). The last broker cannot be stopped; use
// Close.
func (e *Broker) StopBroker(i int) error {
	if i < 0 || i >= len(e.lns) {
		return fmt.Errorf("devkafka: no broker %d (the cluster has %d)", i, len(e.lns))
	}
	// kfake numbers its nodes 0..n-1 in start order.
	if err := e.cluster.RemoveNode(int32(i)); err != nil {
		return fmt.Errorf("devkafka: stop broker %d: %w", i, err)
	}
	e.lns[i].cutAll()
	return nil
}

// Close stops the broker. Without Config.DataDir its data is gone; with
// it, the data is written out and the directory released for the next
// Start.
func (e *Broker) Close() {
	e.cluster.Close()
	e.unlock()
}

// prepareDataDir repairs what a devkafka before auto-created topics were
// saved may have left in cfg.DataDir (see repairDataDir), before kfake
// loads it.
func prepareDataDir(cfg Config) error {
	orphans, err := repairDataDir(cfg.DataDir)
	if err != nil || len(orphans) == 0 {
		return err
	}
	if err := adoptOrphans(cfg.DataDir, orphans, cfg.Brokers, cfg.Partitions); err != nil {
		return fmt.Errorf("devkafka: data directory %s (if its files are damaged, move the directory away to start empty): %w", cfg.DataDir, err)
	}
	return nil
}

// lockDataDir creates dir and takes its lock file, so that two brokers
// never write one directory (each would overwrite the other's state).
func lockDataDir(dir string) (*flock.Flock, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("devkafka: data directory %s: %w", dir, err)
	}
	l := flock.New(filepath.Join(dir, lockFile))
	ok, err := l.TryLock()
	if err != nil {
		return nil, fmt.Errorf("devkafka: lock data directory %s: %w", dir, err)
	}
	if !ok {
		return nil, fmt.Errorf("devkafka: data directory %s is in use by another running broker; stop it or give another directory", dir)
	}
	return l, nil
}

// lockFile is the lock's name inside DataDir.
const lockFile = ".devkafka.lock"

func (e *Broker) unlock() {
	if e.lock != nil {
		_ = e.lock.Unlock()
	}
}

// trackingListener remembers the connections it accepted.
type trackingListener struct {
	net.Listener
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		_ = c.Close()
		return nil, net.ErrClosed
	}
	tc := &trackedConn{Conn: c, l: l}
	l.conns[tc] = struct{}{}
	return tc, nil
}

// trackedConn leaves its listener's set when closed.
type trackedConn struct {
	net.Conn
	l    *trackingListener
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		delete(c.l.conns, c)
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}

// cutAll closes the listener and every connection it accepted.
func (l *trackingListener) cutAll() {
	l.mu.Lock()
	l.closed = true
	conns := l.conns
	l.conns = map[net.Conn]struct{}{}
	l.mu.Unlock()
	_ = l.Listener.Close()
	for c := range conns {
		_ = c.(*trackedConn).Conn.Close()
	}
}
