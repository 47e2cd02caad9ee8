package adapters

import (
	"reflect"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// A Secret's value that does not parse is not quoted in the error, whatever
// its type; a plain one is.
func TestEnvSetHidesSecretValues(t *testing.T) {
	for _, field := range []string{"kafka.partitions", "kafka.sync_commit", "kafka.commit_interval", "postgres.max_conns"} {
		for _, secret := range []bool{false, true} {
			e := envVar(field, "doc")
			e.Secret = secret
			var c Config
			err := e.set(reflect.ValueOf(&c).Elem(), "s3cr3t")
			if err == nil {
				t.Fatalf("%s accepted s3cr3t", field)
			}
			if got := strings.Contains(err.Error(), "s3cr3t"); got == secret {
				t.Errorf("%s (secret %t): error %q", field, secret, err)
			}
		}
	}
}

func TestLevenshtein(t *testing.T) {
	for _, c := range []struct {
		a, b string
		d    int
	}{{"", "", 0}, {"brokres", "brokers", 2}, {"consumer_grop", "consumer_group", 1}, {"kafak", "kafka", 2}, {"", "abc", 3}, {"é", "e", 1}} {
		if d := levenshtein(c.a, c.b); d != c.d {
			t.Errorf("levenshtein(%q, %q) = %d, want %d", c.a, c.b, d, c.d)
		}
	}
}

// A section behind a pointer is walked and allocated when one of its keys
// is set.
func TestPointerSection(t *testing.T) {
	type inner struct {
		X int `yaml:"x"`
	}
	type outer struct {
		Sec *inner `yaml:"sec"`
	}
	var o outer
	f, err := fieldByKey(reflect.ValueOf(&o).Elem(), "sec.x")
	if err != nil {
		t.Fatal(err)
	}
	f.SetInt(3)
	if o.Sec == nil || o.Sec.X != 3 {
		t.Fatalf("got %+v", o.Sec)
	}
	var root yaml.Node
	if err := yaml.Unmarshal([]byte("sec:\n  y: 1\n"), &root); err != nil {
		t.Fatal(err)
	}
	errs := checkKeys(&root, reflect.TypeFor[outer](), "")
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "unknown key sec.y; did you mean sec.x?") {
		t.Fatalf("errs = %v", errs)
	}
}
