package adapters_test

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/antidote-mq/antidote/adapters"
)

// kafka.brokers is a YAML list or one comma-separated string.
func TestYAMLBrokersListOrString(t *testing.T) {
	cases := []struct {
		name, doc string
		want      []string
	}{
		{"flow list", "kafka:\n  brokers: [a:1, b:2]\n", []string{"a:1", "b:2"}},
		{"block list", "kafka:\n  brokers:\n    - a:1\n    - b:2\n", []string{"a:1", "b:2"}},
		{"one address", "kafka:\n  brokers: a:1\n", []string{"a:1"}},
		{"comma-separated", "kafka:\n  brokers: a:1,b:2\n", []string{"a:1", "b:2"}},
		{"comma-separated with blanks", "kafka:\n  brokers: \" a:1 , b:2 ,\"\n", []string{"a:1", "b:2"}},
		{"list items with commas", "kafka:\n  brokers: [\"a:1,b:2\", c:3]\n", []string{"a:1", "b:2", "c:3"}},
		{"null", "kafka:\n  brokers:\n", nil},
		{"empty list", "kafka:\n  brokers: []\n", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := adapters.ParseYAML([]byte(c.doc))
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(cfg.Kafka.Brokers, c.want) {
				t.Fatalf("brokers = %q, want %q", cfg.Kafka.Brokers, c.want)
			}
		})
	}
	if _, err := adapters.ParseYAML([]byte("kafka:\n  brokers: [[a:1]]\n")); !errors.Is(err, adapters.ErrInvalidConfig) {
		t.Errorf("a nested list was accepted: %v", err)
	}
	if _, err := adapters.ParseYAML([]byte("kafka:\n  brokers: {a: 1}\n")); !errors.Is(err, adapters.ErrInvalidConfig) {
		t.Errorf("a mapping was accepted: %v", err)
	}
	// Code still assigns a plain []string.
	cfg := adapters.Config{Broker: adapters.KindKafka, Kafka: adapters.KafkaConfig{Brokers: []string{"h:9092"}}}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
}

// An unknown key is an error naming its line, its full path and the key
// meant: the same key in another section, else the closest of its level,
// else all of its level's. Every unknown key is reported.
func TestYAMLUnknownKeyNamesClosest(t *testing.T) {
	cases := []struct {
		name, doc string
		want      []string
	}{
		{"typo in a section", "broker: kafka\nkafka:\n  brokres: [a:1]\n", []string{"line 3", "unknown key kafka.brokres", "did you mean kafka.brokers?"}},
		{"one letter off", "kafka:\n  consumer_grop: x\n", []string{"line 2", "kafka.consumer_grop", "did you mean kafka.consumer_group?"}},
		{"typo at the top", "brokr: kafka\n", []string{"line 1", "unknown key brokr", "did you mean broker?"}},
		{"typo of a section", "kafak:\n  brokers: [a:1]\n", []string{"line 1", "unknown key kafak", "did you mean kafka?"}},
		{"key of another section", "broker: kafka\nbrokers: [a:1]\n", []string{"line 2", "unknown key brokers", "did you mean kafka.brokers?"}},
		{"key of several sections", "amqp:\n  table_prefix: q_\n", []string{"unknown key amqp.table_prefix", "did you mean postgres.table_prefix?"}},
		{"url at the top", "url: amqp://h/\n", []string{"did you mean amqp.url or postgres.url?"}},
		{"nothing close", "postgres:\n  zzzzzzzzzzzz: 1\n", []string{"line 2", "unknown key postgres.zzzzzzzzzzzz", "valid keys here: postgres.url, postgres.table_prefix,", "postgres.max_message_bytes"}},
		{"code-only field", "kafka:\n  unmarshaler: x\n", []string{"unknown key kafka.unmarshaler"}},
		{"under an alias", "base: &b\n  brokres: x\nkafka: *b\n", []string{"unknown key base", "unknown key kafka.brokres", "did you mean kafka.brokers?"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := adapters.ParseYAML([]byte(c.doc))
			if !errors.Is(err, adapters.ErrInvalidConfig) {
				t.Fatalf("err = %v, want ErrInvalidConfig", err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}

	_, err := adapters.ParseYAML([]byte("broker: kafka\nconect_timeout: 1s\nkafka:\n  partitons: 2\n  brokers: [a:1]\namqp:\n  prefech: 1\n"))
	if err == nil {
		t.Fatal("unknown keys accepted")
	}
	msgs := strings.Split(err.Error(), "\n")
	want := []string{"line 2: unknown key conect_timeout", "line 4: unknown key kafka.partitons", "line 7: unknown key amqp.prefech"}
	if len(msgs) != len(want) {
		t.Fatalf("want %d errors, got %q", len(want), err)
	}
	for i, w := range want {
		if !strings.Contains(msgs[i], w) {
			t.Errorf("error %d %q does not mention %q", i, msgs[i], w)
		}
	}
}

// Known keys, anchors and merge keys still decode; a file with no document
// is an empty Config.
func TestYAMLStillDecodes(t *testing.T) {
	doc := `
defaults: &d
  poll_interval: 250ms
broker: postgres
`
	if _, err := adapters.ParseYAML([]byte(doc)); err == nil || !strings.Contains(err.Error(), "unknown key defaults") {
		t.Fatalf("an anchor under an unknown key: %v", err)
	}
	doc = `
broker: postgres
postgres: &p
  poll_interval: 250ms
  batch_size: 5
`
	c, err := adapters.ParseYAML([]byte(doc))
	if err != nil || c.Postgres.BatchSize != 5 || c.Postgres.PollInterval.String() != "250ms" {
		t.Fatalf("got %+v, %v", c.Postgres, err)
	}
	for _, empty := range []string{"", "# nothing\n", "---\n"} {
		c, err := adapters.ParseYAML([]byte(empty))
		if err != nil || c.Broker != "" {
			t.Errorf("ParseYAML(%q) = %+v, %v", empty, c, err)
		}
	}
}
