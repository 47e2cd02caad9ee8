package adapters_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/antidote-mq/antidote/adapters"
)

// leafKeys walks Config by reflection, independently of the package's own
// walk: every exported field with a yaml tag other than "-", nested
// sections included, in field order. An exported field without a yaml tag
// fails the test: its YAML key would be whatever yaml makes of its name.
func leafKeys(t *testing.T) []string {
	t.Helper()
	unmarshaler := reflect.TypeFor[yaml.Unmarshaler]()
	var keys []string
	var walk func(typ reflect.Type, prefix string)
	walk = func(typ reflect.Type, prefix string) {
		for i := range typ.NumField() {
			f := typ.Field(i)
			if !f.IsExported() {
				continue
			}
			tag, ok := f.Tag.Lookup("yaml")
			if !ok {
				t.Errorf("%s%s (field %s of %s) has no yaml tag; give it one, or `yaml:\"-\"` for code-only settings", prefix, f.Name, f.Name, typ)
				continue
			}
			name, _, _ := strings.Cut(tag, ",")
			if name == "-" {
				continue
			}
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct && !reflect.PointerTo(ft).Implements(unmarshaler) {
				walk(ft, prefix+name+".")
				continue
			}
			keys = append(keys, prefix+name)
		}
	}
	walk(reflect.TypeFor[adapters.Config](), "")
	return keys
}

// fieldOf is the field of c at key (dotted YAML path), found by tags.
func fieldOf(t *testing.T, c *adapters.Config, key string) reflect.Value {
	t.Helper()
	v := reflect.ValueOf(c).Elem()
next:
	for part := range strings.SplitSeq(key, ".") {
		if v.Kind() == reflect.Pointer {
			if v.IsNil() {
				v.Set(reflect.New(v.Type().Elem()))
			}
			v = v.Elem()
		}
		for i := range v.NumField() {
			if name, _, _ := strings.Cut(v.Type().Field(i).Tag.Get("yaml"), ","); name == part {
				v = v.Field(i)
				continue next
			}
		}
		t.Fatalf("Config has no key %s", key)
	}
	return v
}

// TestEnvVarsCoverEveryYAMLKey fails naming every config key no variable
// sets, so a key added later without one is caught.
func TestEnvVarsCoverEveryYAMLKey(t *testing.T) {
	keys := leafKeys(t)
	if len(keys) < 30 {
		t.Fatalf("walked only %d keys: %v", len(keys), keys)
	}
	byField := map[string]adapters.EnvVar{}
	names := map[string]bool{}
	var fields []string
	for _, e := range adapters.EnvVars {
		if _, dup := byField[e.Field]; dup {
			t.Errorf("two variables set %s", e.Field)
		}
		if names[e.Name] {
			t.Errorf("%s listed twice", e.Name)
		}
		byField[e.Field], names[e.Name] = e, true
		fields = append(fields, e.Field)
		if want := "ANTIDOTE_" + strings.ToUpper(strings.ReplaceAll(e.Field, ".", "_")); e.Name != want {
			t.Errorf("variable for %s is %s, want %s (ANTIDOTE_<SECTION>_<KEY>)", e.Field, e.Name, want)
		}
		if strings.TrimSpace(e.Doc) == "" || strings.ContainsAny(e.Doc, "\n|") {
			t.Errorf("%s: Doc %q must be one non-empty line without |", e.Name, e.Doc)
		}
		if !slices.Contains(keys, e.Field) {
			t.Errorf("%s sets %s, which is not a config key", e.Name, e.Field)
		}
	}
	for _, k := range keys {
		if _, ok := byField[k]; !ok {
			t.Errorf("config key %s has no environment variable: add envVar(%q, \"<one-line doc>\") to adapters.EnvVars (secretVar if it may hold a password)", k, k)
		}
	}
	if !t.Failed() && !slices.Equal(fields, keys) {
		i := 0
		for fields[i] == keys[i] {
			i++
		}
		t.Errorf("EnvVars[%d] sets %s where the order of Config's fields (the README's and the errors' order) puts %s; the whole order:\n%s", i, fields[i], keys[i], strings.Join(keys, "\n"))
	}
	if got := adapters.ConfigKeys(); !slices.Equal(got, keys) {
		t.Errorf("the package's key walk disagrees with the test's:\n got %v\nwant %v", got, keys)
	}
}

// sample is a raw env value for a field of typ and the value it must set.
func sample(t *testing.T, name string, typ reflect.Type) (string, reflect.Value) {
	t.Helper()
	v := reflect.New(typ).Elem()
	switch {
	case typ == reflect.TypeFor[time.Duration]():
		v.SetInt(int64(1500 * time.Millisecond))
		return "1.5s", v
	case typ.Kind() == reflect.String:
		s := "v-" + strings.ToLower(name)
		v.SetString(s)
		return s, v
	case typ.Kind() == reflect.Bool:
		v.SetBool(true)
		return "true", v
	case v.CanInt():
		v.SetInt(7)
		return "7", v
	case typ.Kind() == reflect.Slice && typ.Elem().Kind() == reflect.String:
		v.Set(reflect.MakeSlice(typ, 2, 2))
		v.Index(0).SetString("a:1")
		v.Index(1).SetString("b:2")
		return "a:1, b:2", v
	}
	t.Fatalf("%s: no sample value for a %s: extend sample (and ApplyEnv if it cannot parse one)", name, typ)
	return "", v
}

// TestEnvSetsItsField: each variable alone, on a zero Config, sets its own
// field to the value given and changes nothing else; a Secret does the
// same from the file its _FILE variable names.
func TestEnvSetsItsField(t *testing.T) {
	for _, e := range adapters.EnvVars {
		t.Run(e.Name, func(t *testing.T) {
			var want adapters.Config
			f := fieldOf(t, &want, e.Field)
			raw, val := sample(t, e.Name, f.Type())
			f.Set(val)

			var got adapters.Config
			env := map[string]string{e.Name: raw}
			if err := got.ApplyEnv(mapLookup(env)); err != nil {
				t.Fatalf("ApplyEnv(%s=%s): %v", e.Name, raw, err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("%s=%s set\n%+v\nwant\n%+v", e.Name, raw, got, want)
			}

			if !e.Secret {
				return
			}
			got = adapters.Config{}
			env = map[string]string{e.Name: "", e.Name + "_FILE": writeFile(t, raw+"\n")}
			if err := got.ApplyEnv(mapLookup(env)); err != nil {
				t.Fatalf("ApplyEnv(%s_FILE): %v", e.Name, err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("%s_FILE set\n%+v\nwant\n%+v", e.Name, got, want)
			}
		})
	}
}

// TestEnvMatchesYAML: every variable's value, written as the YAML key it
// names, gives the same Config: env and file speak one language (a
// comma-separated kafka.brokers included).
func TestEnvMatchesYAML(t *testing.T) {
	for _, e := range adapters.EnvVars {
		var c adapters.Config
		raw, _ := sample(t, e.Name, fieldOf(t, &c, e.Field).Type())
		fromEnv := adapters.Config{}
		if err := fromEnv.ApplyEnv(mapLookup(map[string]string{e.Name: raw})); err != nil {
			t.Fatal(err)
		}
		parts := strings.Split(e.Field, ".")
		var doc strings.Builder
		for i, p := range parts[:len(parts)-1] {
			fmt.Fprintf(&doc, "%s%s:\n", strings.Repeat("  ", i), p)
		}
		fmt.Fprintf(&doc, "%s%s: %s\n", strings.Repeat("  ", len(parts)-1), parts[len(parts)-1], raw)
		fromYAML, err := adapters.ParseYAML([]byte(doc.String()))
		if err != nil {
			t.Errorf("%s: %v\n%s", e.Field, err, doc.String())
			continue
		}
		if !reflect.DeepEqual(fromEnv, fromYAML) {
			t.Errorf("%s: env %s=%s gives %+v, YAML gives %+v", e.Field, e.Name, raw, fromEnv, fromYAML)
		}
	}
}

func mapLookup(env map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := env[k]; return v, ok }
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "value")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestEnvBadValuesNameVariableFieldAndFix: every bad value is reported, in
// EnvVars order, each naming the variable, the key and the fix.
func TestEnvBadValuesNameVariableFieldAndFix(t *testing.T) {
	cases := []struct {
		name, value string
		want        []string
	}{
		{"ANTIDOTE_CONNECT_TIMEOUT", "soon", []string{"connect_timeout", `"soon"`, "5s or 250ms"}},
		{"ANTIDOTE_KAFKA_EMBEDDED", "maybe", []string{"kafka.embedded", `"maybe"`, "true or false"}},
		{"ANTIDOTE_KAFKA_PARTITIONS", "four", []string{"kafka.partitions", `"four"`, "e.g. 4 (the default)"}},
		{"ANTIDOTE_KAFKA_REPLICATION_FACTOR", "1.5", []string{"kafka.replication_factor", `"1.5"`, "e.g. 1"}},
		{"ANTIDOTE_KAFKA_NACK_RESEND_SLEEP", "100", []string{"kafka.nack_resend_sleep", "5s or 250ms"}},
		{"ANTIDOTE_POSTGRES_MAX_CONNS", "99999999999", []string{"postgres.max_conns", "out of range", "int32", "e.g. 10"}},
	}
	env := map[string]string{}
	for _, c := range cases {
		env[c.name] = c.value
	}
	var cfg adapters.Config
	err := cfg.ApplyEnv(mapLookup(env))
	if !errors.Is(err, adapters.ErrInvalidConfig) {
		t.Fatalf("err = %v, want ErrInvalidConfig", err)
	}
	msgs := strings.Split(err.Error(), "\n")
	if len(msgs) != len(cases) {
		t.Fatalf("%d errors for %d bad values:\n%v", len(msgs), len(cases), err)
	}
	for i, c := range cases {
		if !strings.Contains(msgs[i], c.name+" (") {
			t.Errorf("error %d %q does not name %s (errors must follow EnvVars order)", i, msgs[i], c.name)
		}
		for _, w := range c.want {
			if !strings.Contains(msgs[i], w) {
				t.Errorf("error %q does not mention %q", msgs[i], w)
			}
		}
	}
}

// TestEnvSecretFile covers the _FILE variants: the file's contents with the
// trailing newline removed, an error naming both variables when both are
// set, and an error naming the file (and no contents) when it cannot be
// read or is empty.
func TestEnvSecretFile(t *testing.T) {
	for _, name := range []string{"ANTIDOTE_AMQP_URL", "ANTIDOTE_POSTGRES_URL"} {
		i := slices.IndexFunc(adapters.EnvVars, func(e adapters.EnvVar) bool { return e.Name == name })
		if i < 0 || !adapters.EnvVars[i].Secret {
			t.Errorf("%s is not marked Secret", name)
		}
	}

	// A key whose name says it holds a credential must be Secret.
	for _, e := range adapters.EnvVars {
		key := e.Field[strings.LastIndex(e.Field, ".")+1:]
		for _, w := range []string{"password", "secret", "token", "url"} {
			if strings.Contains(key, w) && !e.Secret {
				t.Errorf("%s (%s) looks like a credential but is not Secret: declare it with secretVar", e.Name, e.Field)
			}
		}
	}

	t.Run("contents", func(t *testing.T) {
		for _, content := range []string{"amqp://u:p w@h:5672/\n", "amqp://u:p w@h:5672/\r\n", "amqp://u:p w@h:5672/"} {
			var c adapters.Config
			if err := c.ApplyEnv(mapLookup(map[string]string{"ANTIDOTE_AMQP_URL_FILE": writeFile(t, content)})); err != nil {
				t.Fatal(err)
			}
			if c.AMQP.URL != "amqp://u:p w@h:5672/" {
				t.Errorf("file %q gave %q", content, c.AMQP.URL)
			}
		}
	})
	t.Run("env value of a secret is kept as written", func(t *testing.T) {
		var c adapters.Config
		if err := c.ApplyEnv(mapLookup(map[string]string{"ANTIDOTE_POSTGRES_URL": " postgres://u:pw @h/db \n"})); err != nil {
			t.Fatal(err)
		}
		if c.Postgres.URL != " postgres://u:pw @h/db " {
			t.Errorf("got %q", c.Postgres.URL)
		}
	})
	t.Run("both set", func(t *testing.T) {
		var c adapters.Config
		err := c.ApplyEnv(mapLookup(map[string]string{
			"ANTIDOTE_AMQP_URL":      "amqp://u:envsecret@h:5672/",
			"ANTIDOTE_AMQP_URL_FILE": writeFile(t, "amqp://u:filesecret@h:5672/"),
		}))
		if !errors.Is(err, adapters.ErrInvalidConfig) {
			t.Fatalf("err = %v, want ErrInvalidConfig", err)
		}
		for _, w := range []string{"ANTIDOTE_AMQP_URL and ANTIDOTE_AMQP_URL_FILE are both set", "amqp.url", "unset one"} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("error %q does not mention %q", err, w)
			}
		}
		assertNoSecret(t, err, "envsecret", "filesecret")
	})
	t.Run("unreadable", func(t *testing.T) {
		missing := filepath.Join(t.TempDir(), "no-such-secret")
		dir := t.TempDir()
		for _, path := range []string{missing, dir} {
			var c adapters.Config
			err := c.ApplyEnv(mapLookup(map[string]string{"ANTIDOTE_POSTGRES_URL_FILE": path}))
			if !errors.Is(err, adapters.ErrInvalidConfig) {
				t.Fatalf("err = %v, want ErrInvalidConfig", err)
			}
			for _, w := range []string{"ANTIDOTE_POSTGRES_URL_FILE", "postgres.url", "cannot read " + path} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if c.Postgres.URL != "" {
				t.Errorf("URL set to %q from an unreadable file", c.Postgres.URL)
			}
		}
	})
	t.Run("empty", func(t *testing.T) {
		path := writeFile(t, "\n")
		var c adapters.Config
		err := c.ApplyEnv(mapLookup(map[string]string{"ANTIDOTE_AMQP_URL_FILE": path}))
		if err == nil || !strings.Contains(err.Error(), path+" is empty") {
			t.Fatalf("empty secret file: %v", err)
		}
	})
	t.Run("not for plain variables", func(t *testing.T) {
		var c adapters.Config
		if err := c.ApplyEnv(mapLookup(map[string]string{"ANTIDOTE_KAFKA_CLIENT_ID_FILE": writeFile(t, "x")})); err != nil || c.Kafka.ClientID != "" {
			t.Fatalf("a _FILE variable of a plain variable was read: %v, %q", err, c.Kafka.ClientID)
		}
	})
}

// TestSecretsNeverPrinted: an invalid value of every Secret variable, from
// env or from its file, is not echoed by ApplyEnv or Validate.
func TestSecretsNeverPrinted(t *testing.T) {
	const secret = "s3cr3tvalue"
	bad := []string{
		secret,
		secret + ":x@h:1/",
		"http://u:" + secret + "@h:5672/",
		"amqp://u:" + secret + "@/",
		"://u:" + secret + "@h/",
		"postgres://u:" + secret + "@h:99999999999999/db%zz",
	}
	for _, e := range adapters.EnvVars {
		if !e.Secret {
			continue
		}
		section, _, _ := strings.Cut(e.Field, ".")
		for _, v := range bad {
			for _, env := range []map[string]string{{e.Name: v}, {e.Name + "_FILE": writeFile(t, v)}} {
				c := adapters.Config{Broker: adapters.Kind(section)}
				err := c.ApplyEnv(mapLookup(env))
				if err == nil {
					c.SetDefaults()
					err = c.Validate()
				}
				assertNoSecret(t, err, secret)
			}
		}
	}
}

func assertNoSecret(t *testing.T, err error, secrets ...string) {
	t.Helper()
	if err == nil {
		return
	}
	for _, s := range secrets {
		if strings.Contains(err.Error(), s) {
			t.Errorf("error prints a secret: %q", err)
		}
	}
}
