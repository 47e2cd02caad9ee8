package hello

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"time"
)

// Options are the examples' flags (see docs/design.md, "Examples contract").
type Options struct {
	Role         string
	Messages     int
	Topic        string
	Idle         time.Duration
	JSON         bool
	Config       string
	PoisonEvery  int
	StuckEvery   int
	Input        string
	CrashOn      string
	DLQOut       string
	Sink         string
	Tracker      string
	DupEvery     int
	IdemStore    string
	MetricsAddr  string
	Rate         float64
	Keys         int
	HandlerDelay time.Duration
	Concurrency  int
}

// DefaultPoisonEvery is --poison-every's default: the first run shows the
// incident the project exists for. With the default 1000 messages it makes
// four poison pills, one of each kind (the first the JSON object missing its
// closing brace), three of them dead-lettered; --poison-every 0 is a clean
// run.
const DefaultPoisonEvery = 250

// ParseFlags reads args (without the program name).
func ParseFlags(name string, args []string, stderr io.Writer) (Options, error) {
	var o Options
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.Role, "role", "all", "all (producer and consumer in one process), producer or consumer")
	fs.IntVar(&o.Messages, "messages", 1000, "how many messages the producer publishes")
	fs.StringVar(&o.Topic, "topic", "hello", "topic (queue) to publish to and consume from")
	fs.DurationVar(&o.Idle, "idle", 5*time.Second, "a consumer exits when nothing new arrived for this long")
	fs.BoolVar(&o.JSON, "json", false, "print the summary as one JSON object, the last line on stdout")
	fs.StringVar(&o.Config, "config", "", "adapters YAML config file (env ANTIDOTE_* overrides it)")
	fs.IntVar(&o.PoisonEvery, "poison-every", DefaultPoisonEvery, "make every Kth message poison, rotating: malformed JSON, wrong types, a handler panic, transient twice then fine; the default puts four among the default 1000 messages (0: none, a clean run)")
	fs.IntVar(&o.StuckEvery, "stuck-every", 0, "make every Kth message fail transiently on every attempt: the breaker holds it, then dead-letters it as retries_exhausted (0: none)")
	fs.StringVar(&o.Input, "input", "", "publish each line of FILE as one payload, raw bytes (instead of --messages generated ones)")
	fs.StringVar(&o.CrashOn, "crash-on", "", "the handler calls os.Exit(3) on a payload containing this, to show crash-loop quarantine")
	fs.StringVar(&o.DLQOut, "dlq-out", "", "append every dead letter to FILE as a JSON line {uuid, payload, metadata}")
	fs.StringVar(&o.Sink, "sink", "memory", "where processed writes go: memory, or postgres (table hello_messages)")
	fs.StringVar(&o.Tracker, "tracker", "memory", "crash-loop delivery counts: memory (lost on exit), postgres or redis (durable)")
	fs.IntVar(&o.DupEvery, "duplicate-every", 0, "publish every Kth message twice with the same idempotency key (0: none)")
	fs.StringVar(&o.IdemStore, "idempotency", "memory", "idempotency key store: memory (one process), postgres or redis (shared), or postgres-tx: the PostgreSQL store in transactional mode, the sink write and the key commit together (needs --sink postgres)")
	fs.Float64Var(&o.Rate, "rate", 0, "throttle the handler to R messages/s (0: unlimited)")
	fs.IntVar(&o.Keys, "keys", 0, "spread the messages over K record keys (partition_key k0..k<K-1>), each numbered in publish order, and count order_violations: a key's message handled before the one before it was done, or while another of its key was (0: every message its own key)")
	fs.DurationVar(&o.HandlerDelay, "handler-delay", 0, "the handler sleeps this long per message, a stand-in for I/O (0: none)")
	fs.IntVar(&o.Concurrency, "concurrency", 0, "kafka.concurrency: messages of one partition handled at once, one per key (0: the config's, default 1; Kafka only)")
	fs.StringVar(&o.MetricsAddr, "metrics-addr", "", "serve Prometheus metrics on this address (host:port), at /metrics")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q; every option is a --flag", fs.Arg(0))
	}
	return o, o.Validate()
}

// Validate names the flag that is wrong and what to use instead.
func (o Options) Validate() error {
	var errs []error
	switch o.Role {
	case "all", "producer", "consumer":
	default:
		errs = append(errs, fmt.Errorf("--role %q: use all, producer or consumer", o.Role))
	}
	if o.Messages < 0 {
		errs = append(errs, fmt.Errorf("--messages %d: use 0 or more", o.Messages))
	}
	if o.Topic == "" {
		errs = append(errs, errors.New("--topic is empty: name a topic"))
	}
	if o.Idle <= 0 {
		errs = append(errs, fmt.Errorf("--idle %s: use a positive duration such as 5s", o.Idle))
	}
	if o.PoisonEvery < 0 {
		errs = append(errs, fmt.Errorf("--poison-every %d: use 0 (none) or more", o.PoisonEvery))
	}
	if o.StuckEvery < 0 {
		errs = append(errs, fmt.Errorf("--stuck-every %d: use 0 (none) or more", o.StuckEvery))
	}
	switch o.Sink {
	case "memory", "postgres":
	default:
		errs = append(errs, fmt.Errorf("--sink %q: use memory or postgres", o.Sink))
	}
	if o.Rate < 0 {
		errs = append(errs, fmt.Errorf("--rate %v: use a positive rate in messages/s, or 0 for none", o.Rate))
	}
	if o.Keys < 0 {
		errs = append(errs, fmt.Errorf("--keys %d: use 0 (every message its own key) or more", o.Keys))
	}
	if o.HandlerDelay < 0 {
		errs = append(errs, fmt.Errorf("--handler-delay %s: use 0 or a positive duration such as 5ms", o.HandlerDelay))
	}
	if o.Concurrency < 0 {
		errs = append(errs, fmt.Errorf("--concurrency %d: use 1 or more (0: the config's kafka.concurrency)", o.Concurrency))
	}
	if o.DupEvery < 0 {
		errs = append(errs, fmt.Errorf("--duplicate-every %d: use 0 (none) or more", o.DupEvery))
	}
	switch o.IdemStore {
	case "memory", "postgres", "redis":
	case "postgres-tx":
		if o.Sink != "postgres" {
			errs = append(errs, fmt.Errorf("--idempotency postgres-tx commits the sink write with the key: add --sink postgres (got --sink %s)", o.Sink))
		}
	default:
		errs = append(errs, fmt.Errorf("--idempotency %q: use memory, postgres, redis or postgres-tx", o.IdemStore))
	}
	switch o.Tracker {
	case "memory":
		if o.CrashOn != "" {
			errs = append(errs, fmt.Errorf("--crash-on %q with --tracker memory would crash-loop forever: the in-memory tracker forgets its counts when the process dies; add --tracker postgres or --tracker redis", o.CrashOn))
		}
	case "postgres", "redis":
	default:
		errs = append(errs, fmt.Errorf("--tracker %q: use memory, postgres or redis", o.Tracker))
	}
	return errors.Join(errs...)
}
