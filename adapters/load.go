package adapters

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// ParseYAML reads a Config from YAML. Unknown keys are errors, so a typo
// never silently falls back to a default.
func ParseYAML(data []byte) (Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return Config{}, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	return c, nil
}

// LoadFile reads a Config from a YAML file.
func LoadFile(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read adapters config: %w", err)
	}
	c, err := ParseYAML(data)
	if err != nil {
		return Config{}, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// EnvVar documents one environment variable ApplyEnv reads.
type EnvVar struct {
	Name, Field, Doc string
	set              func(c *Config, v string) error
}

// EnvVars lists every variable ApplyEnv reads, in README order.
var EnvVars = []EnvVar{
	{"ANTIDOTE_BROKER", "broker", "memory, kafka, amqp or postgres", func(c *Config, v string) error { c.Broker = Kind(v); return nil }},
	{"ANTIDOTE_CONNECT_TIMEOUT", "connect_timeout", "how long to wait for an unreachable broker (Go duration)", func(c *Config, v string) error { return setDuration(&c.ConnectTimeout, v) }},
	{"ANTIDOTE_KAFKA_BROKERS", "kafka.brokers", "comma-separated host:port", func(c *Config, v string) error { c.Kafka.Brokers = splitList(v); return nil }},
	{"ANTIDOTE_KAFKA_EMBEDDED", "kafka.embedded", "true: an in-process test broker, nothing kept after exit", func(c *Config, v string) error { return setBool(&c.Kafka.Embedded, v) }},
	{"ANTIDOTE_KAFKA_CONSUMER_GROUP", "kafka.consumer_group", "consumer group", func(c *Config, v string) error { c.Kafka.ConsumerGroup = v; return nil }},
	{"ANTIDOTE_KAFKA_PARTITIONS", "kafka.partitions", "partitions of topics the adapter creates", func(c *Config, v string) error { return setInt(&c.Kafka.Partitions, v) }},
	{"ANTIDOTE_KAFKA_INITIAL_OFFSET", "kafka.initial_offset", "oldest or newest", func(c *Config, v string) error { c.Kafka.InitialOffset = v; return nil }},
	{"ANTIDOTE_KAFKA_VERSION", "kafka.version", "Kafka protocol version", func(c *Config, v string) error { c.Kafka.Version = v; return nil }},
	{"ANTIDOTE_KAFKA_COMMIT_INTERVAL", "kafka.commit_interval", "how often acked offsets are committed", func(c *Config, v string) error { return setDuration(&c.Kafka.CommitInterval, v) }},
	{"ANTIDOTE_KAFKA_SESSION_TIMEOUT", "kafka.session_timeout", "how long before a silent consumer's partitions move", func(c *Config, v string) error { return setDuration(&c.Kafka.SessionTimeout, v) }},
	{"ANTIDOTE_KAFKA_EMBEDDED_ADDR", "kafka.embedded_addr", "listen address of the embedded broker", func(c *Config, v string) error { c.Kafka.EmbeddedAddr = v; return nil }},
	{"ANTIDOTE_AMQP_URL", "amqp.url", "RabbitMQ URL", func(c *Config, v string) error { c.AMQP.URL = v; return nil }},
	{"ANTIDOTE_AMQP_QUORUM", "amqp.quorum", "true for quorum queues", func(c *Config, v string) error { return setBool(&c.AMQP.Quorum, v) }},
	{"ANTIDOTE_AMQP_PREFETCH", "amqp.prefetch", "consumer prefetch count", func(c *Config, v string) error { return setInt(&c.AMQP.Prefetch, v) }},
	{"ANTIDOTE_POSTGRES_URL", "postgres.url", "PostgreSQL URL", func(c *Config, v string) error { c.Postgres.URL = v; return nil }},
	{"ANTIDOTE_POSTGRES_TABLE_PREFIX", "postgres.table_prefix", "queue table name prefix", func(c *Config, v string) error { c.Postgres.TablePrefix = v; return nil }},
	{"ANTIDOTE_POSTGRES_BATCH_SIZE", "postgres.batch_size", "rows one subscriber query locks", func(c *Config, v string) error { return setInt(&c.Postgres.BatchSize, v) }},
	{"ANTIDOTE_POSTGRES_POLL_INTERVAL", "postgres.poll_interval", "poll interval when the queue is empty", func(c *Config, v string) error { return setDuration(&c.Postgres.PollInterval, v) }},
	// security
	{"ANTIDOTE_KAFKA_SASL_MECHANISM", "kafka.sasl.mechanism", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512; empty: no SASL", func(c *Config, v string) error { c.Kafka.SASL.Mechanism = v; return nil }},
	{"ANTIDOTE_KAFKA_SASL_USERNAME", "kafka.sasl.username", "SASL user", func(c *Config, v string) error { c.Kafka.SASL.Username = v; return nil }},
	{"ANTIDOTE_KAFKA_SASL_PASSWORD", "kafka.sasl.password", "SASL password (secret: never logged)", func(c *Config, v string) error { c.Kafka.SASL.Password = v; return nil }},
	{"ANTIDOTE_KAFKA_TLS_ENABLED", "kafka.tls.enabled", "true: TLS to the brokers", func(c *Config, v string) error { return setBool(&c.Kafka.TLS.Enabled, v) }},
	{"ANTIDOTE_KAFKA_TLS_CA_FILE", "kafka.tls.ca_file", "PEM CA file; empty: the system's CAs", func(c *Config, v string) error { c.Kafka.TLS.CAFile = v; return nil }},
	{"ANTIDOTE_KAFKA_TLS_CERT_FILE", "kafka.tls.cert_file", "PEM client certificate (mutual TLS)", func(c *Config, v string) error { c.Kafka.TLS.CertFile = v; return nil }},
	{"ANTIDOTE_KAFKA_TLS_KEY_FILE", "kafka.tls.key_file", "PEM key of the client certificate", func(c *Config, v string) error { c.Kafka.TLS.KeyFile = v; return nil }},
	{"ANTIDOTE_KAFKA_TLS_SERVER_NAME", "kafka.tls.server_name", "name the brokers' certificates must carry; empty: the dialled host", func(c *Config, v string) error { c.Kafka.TLS.ServerName = v; return nil }},
	{"ANTIDOTE_KAFKA_TLS_INSECURE_SKIP_VERIFY", "kafka.tls.insecure_skip_verify", "true: accept any certificate (tests only; logged as an error)", func(c *Config, v string) error { return setBool(&c.Kafka.TLS.InsecureSkipVerify, v) }},
	{"ANTIDOTE_AMQP_TLS_ENABLED", "amqp.tls.enabled", "true: TLS settings below for an amqps:// URL", func(c *Config, v string) error { return setBool(&c.AMQP.TLS.Enabled, v) }},
	{"ANTIDOTE_AMQP_TLS_CA_FILE", "amqp.tls.ca_file", "PEM CA file; empty: the system's CAs", func(c *Config, v string) error { c.AMQP.TLS.CAFile = v; return nil }},
	{"ANTIDOTE_AMQP_TLS_CERT_FILE", "amqp.tls.cert_file", "PEM client certificate", func(c *Config, v string) error { c.AMQP.TLS.CertFile = v; return nil }},
	{"ANTIDOTE_AMQP_TLS_KEY_FILE", "amqp.tls.key_file", "PEM key of the client certificate", func(c *Config, v string) error { c.AMQP.TLS.KeyFile = v; return nil }},
	{"ANTIDOTE_AMQP_TLS_SERVER_NAME", "amqp.tls.server_name", "name RabbitMQ's certificate must carry; empty: the URL's host", func(c *Config, v string) error { c.AMQP.TLS.ServerName = v; return nil }},
	{"ANTIDOTE_AMQP_TLS_INSECURE_SKIP_VERIFY", "amqp.tls.insecure_skip_verify", "true: accept any certificate (tests only; logged as an error)", func(c *Config, v string) error { return setBool(&c.AMQP.TLS.InsecureSkipVerify, v) }},
	{"ANTIDOTE_AMQP_EXTERNAL_AUTH", "amqp.external_auth", "true: SASL EXTERNAL, the user from the client certificate", func(c *Config, v string) error { return setBool(&c.AMQP.ExternalAuth, v) }},
}

// ApplyEnv overrides c with every variable of EnvVars that lookup finds set
// to a non-empty value. Pass os.LookupEnv for the process environment.
func (c *Config) ApplyEnv(lookup func(string) (string, bool)) error {
	var errs []error
	for _, e := range EnvVars {
		v, ok := lookup(e.Name)
		if !ok || v == "" {
			continue
		}
		if err := e.set(c, strings.TrimSpace(v)); err != nil {
			errs = append(errs, fmt.Errorf("%w: %s (%s): %v", ErrInvalidConfig, e.Name, e.Field, err))
		}
	}
	return errors.Join(errs...)
}

// LoadConfig loads path (skipped when empty) and applies the process
// environment over it, without defaults or validation: for programs that
// set some fields themselves (e.g. the broker) before Open, which fills
// defaults and validates.
func LoadConfig(path string) (Config, error) {
	var c Config
	if path != "" {
		var err error
		if c, err = LoadFile(path); err != nil {
			return Config{}, err
		}
	}
	if err := c.ApplyEnv(os.LookupEnv); err != nil {
		return Config{}, err
	}
	return c, nil
}

// ConfigFromEnv is LoadConfig, then SetDefaults and Validate.
func ConfigFromEnv(path string) (Config, error) {
	c, err := LoadConfig(path)
	if err != nil {
		return Config{}, err
	}
	c.SetDefaults()
	return c, c.Validate()
}

func splitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

func setDuration(d *time.Duration, v string) error {
	x, err := time.ParseDuration(v)
	if err != nil {
		return fmt.Errorf("%q is not a duration; write it like 5s or 250ms", v)
	}
	*d = x
	return nil
}

func setInt(i *int, v string) error {
	x, err := strconv.Atoi(v)
	if err != nil {
		return fmt.Errorf("%q is not a whole number", v)
	}
	*i = x
	return nil
}

func setBool(b *bool, v string) error {
	x, err := strconv.ParseBool(v)
	if err != nil {
		return fmt.Errorf("%q is not true or false", v)
	}
	*b = x
	return nil
}
