package adapters_test

import (
	"context"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/internal/testenv"
)

func valid(kind adapters.Kind) adapters.Config {
	c := adapters.Config{Broker: kind}
	c.SetDefaults()
	return c
}

func TestValidateRejectsWithFieldAndFix(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(*adapters.Config)
		want   []string // substrings: the field and the fix
	}{
		{"unknown broker", func(c *adapters.Config) { c.Broker = "kafak" }, []string{"broker", `"kafak"`, "memory, kafka, amqp, postgres"}},
		{"negative timeout", func(c *adapters.Config) { c.ConnectTimeout = -time.Second }, []string{"connect_timeout", "positive duration"}},
		{"kafka broker without port", func(c *adapters.Config) { c.Broker = "kafka"; c.Kafka.Brokers = []string{"localhost"} }, []string{"kafka.brokers[0]", "127.0.0.1:9092"}},
		{"kafka blank group", func(c *adapters.Config) { c.Broker = "kafka"; c.Kafka.ConsumerGroup = " " }, []string{"kafka.consumer_group", "name the consumer group"}},
		{"kafka partitions", func(c *adapters.Config) { c.Broker = "kafka"; c.Kafka.Partitions = -1 }, []string{"kafka.partitions", "1 or more"}},
		{"kafka offset", func(c *adapters.Config) { c.Broker = "kafka"; c.Kafka.InitialOffset = "latest" }, []string{"kafka.initial_offset", "oldest or newest"}},
		{"kafka version", func(c *adapters.Config) { c.Broker = "kafka"; c.Kafka.Version = "two" }, []string{"kafka.version", "2.1.0"}},
		{"amqp scheme", func(c *adapters.Config) { c.Broker = "amqp"; c.AMQP.URL = "http://guest:secret@h:5672/" }, []string{"amqp.url", "amqp://user:password@host:5672/"}},
		{"amqp prefetch", func(c *adapters.Config) { c.Broker = "amqp"; c.AMQP.Prefetch = -3 }, []string{"amqp.prefetch", "1 or more"}},
		{"postgres scheme", func(c *adapters.Config) { c.Broker = "postgres"; c.Postgres.URL = "mysql://u:secret@h/db" }, []string{"postgres.url", "postgres://user@host:5432/db"}},
		{"postgres prefix", func(c *adapters.Config) { c.Broker = "postgres"; c.Postgres.TablePrefix = "x; DROP" }, []string{"postgres.table_prefix", "letters, digits and underscores"}},
		{"postgres poll", func(c *adapters.Config) { c.Broker = "postgres"; c.Postgres.PollInterval = -1 }, []string{"postgres.poll_interval", "1s"}},
		{"postgres conns", func(c *adapters.Config) { c.Broker = "postgres"; c.Postgres.MaxConns = -1 }, []string{"postgres.max_conns"}},
		{"kafka commit interval", func(c *adapters.Config) { c.Broker = "kafka"; c.Kafka.CommitInterval = -time.Second }, []string{"kafka.commit_interval"}},
		{"kafka session timeout", func(c *adapters.Config) { c.Broker = "kafka"; c.Kafka.SessionTimeout = time.Millisecond }, []string{"kafka.session_timeout", "10s"}},
		{"kafka rebalance under session", func(c *adapters.Config) {
			c.Broker = "kafka"
			c.Kafka.SessionTimeout = 20 * time.Second
			c.Kafka.RebalanceTimeout = 15 * time.Second
		}, []string{"kafka.rebalance_timeout", "kafka.session_timeout", "60s"}},
		{"kafka rebalance too long", func(c *adapters.Config) { c.Broker = "kafka"; c.Kafka.RebalanceTimeout = time.Hour }, []string{"kafka.rebalance_timeout", "30m0s"}},
		{"postgres batch", func(c *adapters.Config) { c.Broker = "postgres"; c.Postgres.BatchSize = -1 }, []string{"postgres.batch_size"}},
		{"memory buffer", func(c *adapters.Config) { c.Memory.OutputBuffer = -1 }, []string{"memory.output_buffer"}},
		{"no broker", func(c *adapters.Config) { c.Broker = "" }, []string{"broker", "is not set", "memory keeps messages in this process only"}},
		{"kafka without brokers", func(c *adapters.Config) { c.Broker = "kafka" }, []string{"kafka.brokers", "is empty", "kafka.embedded: true"}},
		{"kafka embedded and brokers", func(c *adapters.Config) {
			c.Broker = "kafka"
			c.Kafka.Embedded = true
			c.Kafka.Brokers = []string{"h:9092"}
		}, []string{"kafka.embedded", "set only one"}},
		{"kafka max message bytes", func(c *adapters.Config) { c.Broker = "kafka"; c.Kafka.MaxMessageBytes = -1 }, []string{"kafka.max_message_bytes"}},
		{"amqp max message bytes", func(c *adapters.Config) { c.Broker = "amqp"; c.AMQP.MaxMessageBytes = -1 }, []string{"amqp.max_message_bytes"}},
		{"postgres max message bytes", func(c *adapters.Config) { c.Broker = "postgres"; c.Postgres.MaxMessageBytes = -1 }, []string{"postgres.max_message_bytes"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := valid(adapters.KindMemory)
			tc.mutate(&c)
			err := c.Validate()
			if err == nil {
				t.Fatal("Validate accepted an invalid config")
			}
			if !errors.Is(err, adapters.ErrInvalidConfig) {
				t.Errorf("error %v does not wrap ErrInvalidConfig", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("error %q leaks a password", err)
			}
			// Open validates too: no broker is contacted for a bad config.
			if _, oerr := adapters.Open(context.Background(), c, nil); !errors.Is(oerr, adapters.ErrInvalidConfig) {
				t.Errorf("Open = %v, want ErrInvalidConfig", oerr)
			}
		})
	}
}

func TestDefaultsAreValid(t *testing.T) {
	for _, k := range adapters.Kinds {
		c := valid(k)
		c.Kafka.Embedded = k == adapters.KindKafka
		if err := c.Validate(); err != nil {
			t.Errorf("%s defaults invalid: %v", k, err)
		}
	}
}

func TestYAMLAndEnvOverride(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "antidote.yaml")
	yaml := `
broker: kafka
connect_timeout: 2s
kafka:
  brokers: ["file-host:9092"]
  consumer_group: from-file
  partitions: 8
amqp:
  url: amqp://file:pw@file-host:5672/
postgres:
  poll_interval: 250ms
`
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := adapters.LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if c.Broker != adapters.KindKafka || c.ConnectTimeout != 2*time.Second || c.Kafka.Partitions != 8 ||
		c.Kafka.ConsumerGroup != "from-file" || c.Postgres.PollInterval != 250*time.Millisecond {
		t.Fatalf("file not read as written: %+v", c)
	}
	env := map[string]string{
		"ANTIDOTE_BROKER":               "amqp",
		"ANTIDOTE_KAFKA_BROKERS":        "a:1, b:2",
		"ANTIDOTE_KAFKA_CONSUMER_GROUP": "from-env",
		"ANTIDOTE_AMQP_URL":             "amqp://env:pw@env-host:5672/",
		"ANTIDOTE_AMQP_QUORUM":          "true",
		"ANTIDOTE_POSTGRES_URL":         "", // empty: does not override
	}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	if err := c.ApplyEnv(lookup); err != nil {
		t.Fatal(err)
	}
	if c.Broker != adapters.KindAMQP || c.Kafka.ConsumerGroup != "from-env" || !c.AMQP.Quorum ||
		strings.Join(c.Kafka.Brokers, "|") != "a:1|b:2" || c.AMQP.URL != "amqp://env:pw@env-host:5672/" {
		t.Fatalf("env did not override file: %+v", c)
	}
	if c.Kafka.Partitions != 8 {
		t.Errorf("a key env did not set was lost: partitions = %d", c.Kafka.Partitions)
	}
}

func TestConfigFromEnvUsesProcessEnv(t *testing.T) {
	t.Setenv("ANTIDOTE_BROKER", "postgres")
	t.Setenv("ANTIDOTE_POSTGRES_TABLE_PREFIX", "env_q_")
	c, err := adapters.ConfigFromEnv("")
	if err != nil {
		t.Fatal(err)
	}
	if c.Broker != adapters.KindPostgres || c.Postgres.TablePrefix != "env_q_" || c.Postgres.URL != adapters.DefaultPostgresURL {
		t.Fatalf("got %+v", c)
	}
	t.Setenv("ANTIDOTE_KAFKA_PARTITIONS", "four")
	if _, err := adapters.ConfigFromEnv(""); err == nil || !strings.Contains(err.Error(), "ANTIDOTE_KAFKA_PARTITIONS") {
		t.Fatalf("bad env value not named: %v", err)
	}
}

func TestYAMLRejectsUnknownKeys(t *testing.T) {
	_, err := adapters.ParseYAML([]byte("broker: kafka\nkafka:\n  consumer_grop: x\n"))
	if err == nil || !strings.Contains(err.Error(), "consumer_grop") {
		t.Fatalf("unknown key not reported: %v", err)
	}
	_, err = adapters.ParseYAML([]byte("connect_timeout: soon\n"))
	if err == nil {
		t.Fatal("bad duration accepted")
	}
}

// An address where nothing listens must fail fast, naming broker and address.
// A broker that comes up while Open waits (a consumer restarted during the
// broker's restart) is connected to, not reported unreachable: exiting at
// once would make a supervisor restart the consumer in a hot loop.
func TestOpenWaitsForABrokerStartingLate(t *testing.T) {
	testenv.Integration(t)
	for _, kind := range []adapters.Kind{adapters.KindAMQP, adapters.KindPostgres} {
		t.Run(string(kind), func(t *testing.T) {
			target, mk := "", func(string) adapters.Config { return adapters.Config{} }
			switch kind {
			case adapters.KindAMQP:
				u, _ := url.Parse(testenv.AMQPURL(t))
				target = u.Host
				mk = func(addr string) adapters.Config {
					u.Host = addr
					return adapters.Config{Broker: kind, AMQP: adapters.AMQPConfig{URL: u.String()}}
				}
			case adapters.KindPostgres:
				u, _ := url.Parse(testenv.PostgresURL(t))
				target = u.Host
				mk = func(addr string) adapters.Config {
					u.Host = addr
					return adapters.Config{Broker: kind, Postgres: adapters.PostgresConfig{URL: u.String()}}
				}
			}
			addr := freeClosedPort(t)
			cfg := mk(addr)
			cfg.ConnectTimeout = 20 * time.Second
			go func() {
				time.Sleep(time.Second)
				startCutProxyAt(t, addr, target)
			}()
			b, err := adapters.Open(context.Background(), cfg, nil)
			if err != nil {
				t.Fatalf("Open gave up on a broker that came up after 1s: %v", err)
			}
			_ = b.Close()
		})
	}
}

func TestUnreachableBrokerFailsWithinTimeout(t *testing.T) {
	testenv.Integration(t)
	ln := freeClosedPort(t)
	cases := []adapters.Config{
		{Broker: adapters.KindKafka, Kafka: adapters.KafkaConfig{Brokers: []string{ln}}},
		{Broker: adapters.KindAMQP, AMQP: adapters.AMQPConfig{URL: "amqp://guest:topsecret@" + ln + "/"}},
		{Broker: adapters.KindPostgres, Postgres: adapters.PostgresConfig{URL: "postgres://u:topsecret@" + ln + "/db"}},
	}
	for _, c := range cases {
		t.Run(string(c.Broker), func(t *testing.T) {
			c.ConnectTimeout = time.Second
			done := make(chan error, 1)
			go func() {
				b, err := adapters.Open(context.Background(), c, nil)
				if b != nil {
					_ = b.Close()
				}
				done <- err
			}()
			select {
			case err := <-done:
				if !errors.Is(err, adapters.ErrUnreachable) {
					t.Fatalf("err = %v, want ErrUnreachable", err)
				}
				for _, w := range []string{string(c.Broker), ln} {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not name %q", err, w)
					}
				}
				if strings.Contains(err.Error(), "topsecret") {
					t.Errorf("error leaks the password: %q", err)
				}
			case <-time.After(30 * time.Second):
				// A generous bound: this guards against a hang, not a speed.
				t.Fatal("Open hung on an unreachable broker")
			}
		})
	}
}
