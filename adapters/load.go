package adapters

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// ParseYAML reads a Config from YAML. Unknown keys are errors, each naming
// its line and the closest valid key, so a typo never silently falls back
// to a default.
func ParseYAML(data []byte) (Config, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return Config{}, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	if errs := checkKeys(&root, reflect.TypeFor[Config](), ""); len(errs) > 0 {
		return Config{}, errors.Join(errs...)
	}
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true) // checkKeys found none; this guards what it does not walk (merge keys)
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

// HostList is a list of host:port addresses. In YAML it is a list or one
// comma-separated string ("a:9092,b:9092"), like its env variable; code
// assigns it a []string.
type HostList []string

// UnmarshalYAML reads a list or a comma-separated string; blanks around and
// between commas are dropped.
func (h *HostList) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if n.Kind == yaml.ScalarNode {
		if n.ShortTag() == "!!null" {
			*h = nil
			return nil
		}
		*h = splitList(n.Value)
		return nil
	}
	var items []string
	if err := n.Decode(&items); err != nil {
		return err
	}
	*h = splitList(strings.Join(items, ","))
	return nil
}

// EnvVar documents one environment variable ApplyEnv reads. Each sets one
// config key, Field, and is named after it (see envVar).
type EnvVar struct {
	// Name of the variable: ANTIDOTE_ then Field upper-cased, dots as
	// underscores, e.g. ANTIDOTE_KAFKA_REPLICATION_FACTOR.
	Name string

	// Field is the key the variable sets, as in YAML, e.g.
	// "kafka.replication_factor".
	Field string

	// Doc is one line of Markdown: the "meaning" column of docs/brokers.md's table.
	Doc string

	// Secret marks a value that may hold a password. It is never printed,
	// errors included, and Name_FILE may instead name a file holding it (a
	// Kubernetes secret mounted as a file), read with its trailing newline
	// removed. Setting both is an error.
	Secret bool
}

// fileSuffix is appended to a Secret variable's Name to name the variable
// that points at a file holding its value instead.
const fileSuffix = "_FILE"

// Default is the value SetDefaults gives Field, formatted as in docs/brokers.md's table
// ("" when there is none).
func (e EnvVar) Default() string {
	var c Config
	c.SetDefaults()
	f, err := fieldByKey(reflect.ValueOf(&c).Elem(), e.Field)
	if err != nil {
		return ""
	}
	switch v := f.Interface().(type) {
	case time.Duration:
		return v.String()
	}
	if f.Kind() == reflect.Slice {
		items := make([]string, f.Len())
		for i := range items {
			items[i] = fmt.Sprint(f.Index(i).Interface())
		}
		return strings.Join(items, ",")
	}
	return fmt.Sprint(f.Interface())
}

// envVar is the EnvVar of config key field.
func envVar(field, doc string) EnvVar {
	return EnvVar{Name: "ANTIDOTE_" + strings.ToUpper(strings.ReplaceAll(field, ".", "_")), Field: field, Doc: doc}
}

// secretVar is envVar for a value that may hold a password.
func secretVar(field, doc string) EnvVar {
	e := envVar(field, doc)
	e.Secret = true
	return e
}

// EnvVars lists every variable ApplyEnv reads: one per config key, in the
// order of Config's fields (the table's order in docs/brokers.md, and the order of errors).
// A test fails naming any YAML key without one.
var EnvVars = []EnvVar{
	envVar("broker", "`memory`, `kafka`, `amqp` or `postgres`. Required (the examples pick their own)"),
	envVar("connect_timeout", "how long Open waits for an unreachable broker"),
	envVar("memory.output_buffer", "subscriber channel buffer"),
	envVar("kafka.brokers", "bootstrap brokers, `host:port`: a YAML list or one comma-separated string. Required unless `kafka.embedded`"),
	envVar("kafka.embedded", "start an in-process Kafka-protocol broker (kfake) instead: for tests and demos, nothing kept after exit. The program must import `_ \"github.com/antidote-mq/antidote/devkafka\"` (the examples and the CLI do); without it `Open` refuses the setting and says so, and no broker is compiled in"),
	envVar("kafka.consumer_group", "consumer group"),
	envVar("kafka.partitions", "partitions of the topics the adapter creates when missing: those it subscribes or publishes to, DLQs, the embedded broker's; an existing topic is left as it is"),
	envVar("kafka.replication_factor", "replication of the topics the adapter creates (3 in production)"),
	envVar("kafka.initial_offset", "where a new group starts: `oldest` or `newest`"),
	envVar("kafka.version", "protocol version (higher breaks consumer groups with Sarama 1.43)"),
	envVar("kafka.partition_key", "metadata key used as the record key"),
	envVar("kafka.nack_resend_sleep", "pause before a nacked message is redelivered"),
	envVar("kafka.concurrency", "messages of one partition handled at once; 1: watermill-kafka's subscriber, one at a time. Above 1: up to N at once in `kafka.ordering`'s order, committing the lowest unacked offset"),
	envVar("kafka.ordering", "with `kafka.concurrency` above 1: `key` (same record key one at a time, in order; keyless messages unordered), `partition` (one at a time) or `unordered`"),
	envVar("kafka.read_ahead_bytes", "with `kafka.concurrency` above 1: the most bytes of records a partition holds read and not finished (a held-back key of large records cannot fill memory); one record always passes"),
	envVar("kafka.sync_commit", "commit each acked offset before the next message instead of every `commit_interval` (a round trip per message; after a crash nothing processed comes again)"),
	envVar("kafka.commit_interval", "how often acked offsets are committed (shorter: exact lag for backpressure, less redelivery after a crash)"),
	envVar("kafka.session_timeout", "how long before a silent (crashed) consumer's partitions move to others"),
	envVar("kafka.rebalance_timeout", "how long a rebalance waits for the members to rejoin (each finishing its messages first) before dropping the rest; at least `kafka.session_timeout`, at most 30m. The consumers' read timeout is this + 5s (at least 30s), so a JoinGroup is never given up while the group waits: longer lets slow handlers finish, but a dead broker is noticed that late"),
	envVar("kafka.client_id", "client id"),
	envVar("kafka.embedded_addr", "listen address of the embedded broker"),
	envVar("kafka.max_message_bytes", "the largest record published, as Kafka counts it (value, key, headers, overheads); larger is refused at Publish naming size, limit and setting. Keep it at or below the topics' `max.message.bytes`; DLQ topics get 64 KiB more for the envelope"),
	envVar("kafka.tls.enabled", "true: TLS to the brokers"),
	envVar("kafka.tls.ca_file", "PEM CA file; empty: the system's CAs"),
	envVar("kafka.tls.cert_file", "PEM client certificate (mutual TLS)"),
	envVar("kafka.tls.key_file", "PEM key of the client certificate"),
	envVar("kafka.tls.server_name", "name the brokers' certificates must carry; empty: the dialled host"),
	envVar("kafka.tls.insecure_skip_verify", "true: accept any certificate (tests only; logged as an error)"),
	envVar("kafka.sasl.mechanism", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512; empty: no SASL"),
	envVar("kafka.sasl.username", "SASL user"),
	secretVar("kafka.sasl.password", "SASL password (secret: never logged)"),
	secretVar("amqp.url", "RabbitMQ URL"),
	envVar("amqp.quorum", "declare quorum queues"),
	envVar("amqp.single_active_consumer", "declare topic queues with `x-single-active-consumer`: one worker of a queue at a time gets its messages, in order, the next taking over when it dies; throughput of one consumer per queue. Not on DLQs; `DelayedRetry` refused with it; a queue declared otherwise is refused by RabbitMQ (delete it or match)"),
	envVar("amqp.prefetch", "consumer prefetch count (default 1 with `amqp.single_active_consumer`: a nacked message then comes back before the next)"),
	envVar("amqp.max_message_bytes", "the largest body published: RabbitMQ 3.x's `max_message_size` (RabbitMQ 4: 16 MiB; set it to your server's)"),
	envVar("amqp.tls.enabled", "true: TLS settings below for an amqps:// URL"),
	envVar("amqp.tls.ca_file", "PEM CA file; empty: the system's CAs"),
	envVar("amqp.tls.cert_file", "PEM client certificate"),
	envVar("amqp.tls.key_file", "PEM key of the client certificate"),
	envVar("amqp.tls.server_name", "name RabbitMQ's certificate must carry; empty: the URL's host"),
	envVar("amqp.tls.insecure_skip_verify", "true: accept any certificate (tests only; logged as an error)"),
	envVar("amqp.external_auth", "true: SASL EXTERNAL, the user from the client certificate"),
	secretVar("postgres.url", "database URL"),
	envVar("postgres.table_prefix", "queue table prefix"),
	envVar("postgres.poll_interval", "poll interval when the queue is empty"),
	envVar("postgres.resend_interval", "pause before a nacked message is delivered again"),
	envVar("postgres.ack_deadline", "an unacked message is delivered again after this"),
	envVar("postgres.batch_size", "rows one subscriber query locks and hands out (1: exact backlog counts, slower)"),
	envVar("postgres.max_conns", "pgx pool size"),
	envVar("postgres.max_message_bytes", "the largest message (payload + metadata as JSON) published; a batch of rows is held in memory by the subscriber"),
}

// ApplyEnv overrides c with every variable of EnvVars that lookup finds set
// to a non-empty value (blanks around it removed, except a Secret's), or,
// for a Secret, with the contents of the file its Name_FILE names. Pass
// os.LookupEnv for the process environment. Every bad value is reported,
// naming the variable, the key and the fix; a Secret's value never is.
func (c *Config) ApplyEnv(lookup func(string) (string, bool)) error {
	var errs []error
	rc := reflect.ValueOf(c).Elem()
	for _, e := range EnvVars {
		v, err := e.value(lookup)
		if err != nil {
			errs = append(errs, fmt.Errorf("%w: %v", ErrInvalidConfig, err))
			continue
		}
		if v == "" {
			continue
		}
		if err := e.set(rc, v); err != nil {
			errs = append(errs, fmt.Errorf("%w: %s (%s): %v", ErrInvalidConfig, e.Name, e.Field, err))
		}
	}
	return errors.Join(errs...)
}

// value is e's value from lookup, or from the file e.Name_FILE names.
func (e EnvVar) value(lookup func(string) (string, bool)) (string, error) {
	v, _ := lookup(e.Name)
	if !e.Secret {
		return strings.TrimSpace(v), nil
	}
	v = strings.TrimRight(v, "\r\n")
	fileVar := e.Name + fileSuffix
	path, _ := lookup(fileVar)
	path = strings.TrimSpace(path)
	switch {
	case path == "":
		return v, nil
	case v != "":
		return "", fmt.Errorf("%s and %s are both set (%s); unset one", e.Name, fileVar, e.Field)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err // the path is named below; the message is the reason
		}
		return "", fmt.Errorf("%s (%s): cannot read %s: %v; point it at the file holding the value", fileVar, e.Field, path, err)
	}
	v = strings.TrimRight(string(data), "\r\n")
	if v == "" {
		return "", fmt.Errorf("%s (%s): %s is empty; put the value in it, or unset %s", fileVar, e.Field, path, fileVar)
	}
	return v, nil
}

var durationType = reflect.TypeFor[time.Duration]()

// set parses v into the field of c that e names.
func (e EnvVar) set(c reflect.Value, v string) error {
	f, err := fieldByKey(c, e.Field)
	if err != nil {
		return err
	}
	shown := strconv.Quote(v)
	if e.Secret {
		shown = "the value (not shown: it is secret)"
	}
	switch {
	case f.Type() == durationType:
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("%s is not a duration; write it like 5s or 250ms", shown)
		}
		f.SetInt(int64(d))
	case f.Kind() == reflect.String:
		f.SetString(v)
	case f.Kind() == reflect.Bool:
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("%s is not true or false", shown)
		}
		f.SetBool(b)
	case f.CanInt():
		i, err := strconv.ParseInt(v, 10, f.Type().Bits())
		if errors.Is(err, strconv.ErrRange) {
			return fmt.Errorf("%s is out of range for a %s; use a smaller number, e.g. %s (the default)", shown, f.Type(), e.Default())
		}
		if err != nil {
			return fmt.Errorf("%s is not a whole number; write digits only, e.g. %s (the default)", shown, e.Default())
		}
		f.SetInt(i)
	case f.Kind() == reflect.Slice && f.Type().Elem().Kind() == reflect.String:
		list := splitList(v)
		s := reflect.MakeSlice(f.Type(), len(list), len(list))
		for i, x := range list {
			s.Index(i).SetString(x)
		}
		f.Set(s)
	default:
		return fmt.Errorf("adapters cannot set a %s from the environment (a bug: ApplyEnv lacks a parser for it)", f.Type())
	}
	return nil
}

// fieldByKey is the field of the Config c that key (as in YAML, dotted)
// names.
func fieldByKey(c reflect.Value, key string) (reflect.Value, error) {
	v := c
	for part := range strings.SplitSeq(key, ".") {
		if v.Kind() == reflect.Pointer && v.Type().Elem().Kind() == reflect.Struct {
			if v.IsNil() {
				v.Set(reflect.New(v.Type().Elem())) // a section behind a pointer: allocated when set
			}
			v = v.Elem()
		}
		i := slices.IndexFunc(yamlFields(v.Type()), func(f yamlField) bool { return f.name == part })
		if i < 0 || v.Kind() != reflect.Struct {
			return reflect.Value{}, fmt.Errorf("no config key %s (a bug: EnvVars names a key Config lacks)", key)
		}
		v = v.FieldByIndex(yamlFields(v.Type())[i].index)
	}
	return v, nil
}

// yamlField is a field of a struct as YAML sees it.
type yamlField struct {
	name  string
	index []int
	typ   reflect.Type
}

// yamlFields lists the YAML keys of struct type t in field order: exported
// fields not tagged "-", named by their tag or, untagged, their lower-cased
// name (as yaml does); inline structs contribute their own.
func yamlFields(t reflect.Type) []yamlField {
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return nil
	}
	var out []yamlField
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		switch {
		case name == "-":
			continue
		case slices.Contains(strings.Split(opts, ","), "inline"):
			for _, in := range yamlFields(f.Type) {
				in.index = append([]int{i}, in.index...)
				out = append(out, in)
			}
			continue
		case name == "":
			name = strings.ToLower(f.Name)
		}
		out = append(out, yamlField{name: name, index: []int{i}, typ: f.Type})
	}
	return out
}

var unmarshalerType = reflect.TypeFor[yaml.Unmarshaler]()

// isSection tells whether YAML sees t as a mapping of keys of its own.
// A pointer to a section is a section too.
func isSection(t reflect.Type) bool {
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t.Kind() == reflect.Struct && !reflect.PointerTo(t).Implements(unmarshalerType) && t != reflect.TypeFor[time.Time]()
}

// configKeys lists every leaf key of Config as in YAML (dotted), in field
// order: the keys EnvVars must cover.
func configKeys() []string {
	var keys []string
	var walk func(t reflect.Type, prefix string)
	walk = func(t reflect.Type, prefix string) {
		for _, f := range yamlFields(t) {
			if isSection(f.typ) {
				walk(f.typ, prefix+f.name+".")
				continue
			}
			keys = append(keys, prefix+f.name)
		}
	}
	walk(reflect.TypeFor[Config](), "")
	return keys
}

// checkKeys reports every key of the YAML mapping n that the struct type t
// lacks, with its line and the closest valid key.
func checkKeys(n *yaml.Node, t reflect.Type, prefix string) []error {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if n.Kind == yaml.DocumentNode {
		if len(n.Content) == 0 {
			return nil
		}
		return checkKeys(n.Content[0], t, prefix)
	}
	if n.Kind != yaml.MappingNode || !isSection(t) {
		return nil // not a mapping where one belongs: the decoder says so
	}
	fields := yamlFields(t)
	var errs []error
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode || k.Value == "<<" {
			continue // a merge key or a complex key: the decoder checks those
		}
		j := slices.IndexFunc(fields, func(f yamlField) bool { return f.name == k.Value })
		if j < 0 {
			errs = append(errs, fmt.Errorf("%w: line %d: unknown key %s%s; %s", ErrInvalidConfig, k.Line, prefix, k.Value, suggest(k.Value, prefix, fields)))
			continue
		}
		if isSection(fields[j].typ) {
			errs = append(errs, checkKeys(v, fields[j].typ, prefix+k.Value+".")...)
		}
	}
	return errs
}

// suggest names the keys meant by the unknown key under prefix: the same
// key in another section, else the closest key of this level, else all of
// this level's.
func suggest(key, prefix string, fields []yamlField) string {
	var elsewhere []string
	for _, full := range configKeys() {
		if full != prefix+key && (full == key || strings.HasSuffix(full, "."+key)) {
			elsewhere = append(elsewhere, full)
		}
	}
	if len(elsewhere) > 0 {
		return "did you mean " + strings.Join(elsewhere, " or ") + "?"
	}
	best, bestD := "", -1
	names := make([]string, len(fields))
	for i, f := range fields {
		names[i] = prefix + f.name
		if d := levenshtein(key, f.name); bestD < 0 || d < bestD {
			best, bestD = f.name, d
		}
	}
	if bestD >= 0 && bestD <= max(2, len(key)/3) {
		return "did you mean " + prefix + best + "?"
	}
	return "valid keys here: " + strings.Join(names, ", ")
}

// levenshtein is the edit distance between a and b, in runes.
func levenshtein(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(rb)]
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
