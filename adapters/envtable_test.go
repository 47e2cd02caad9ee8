package adapters_test

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/antidote-mq/antidote/adapters"
)

var update = flag.Bool("update", false, "rewrite the generated parts of docs/brokers.md")

const (
	envTableStart = "<!-- env-table: generated from adapters.EnvVars by TestEnvTable; do not edit -->\n"
	envTableEnd   = "<!-- /env-table -->\n"
)

// envTable renders EnvVars as the table of settings in docs/brokers.md.
func envTable() string {
	var b strings.Builder
	b.WriteString("| YAML key | env | default | meaning |\n|---|---|---|---|\n")
	for _, e := range adapters.EnvVars {
		env := "`" + e.Name + "`"
		if e.Secret {
			env += " or `" + e.Name + "_FILE`"
		}
		def := "none"
		if d := e.Default(); d != "" {
			def = "`" + d + "`"
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s | %s |\n", e.Field, env, def, e.Doc)
	}
	return b.String()
}

// TestEnvTable fails when docs/brokers.md's table of settings is not the
// one EnvVars gives; -update rewrites it.
func TestEnvTable(t *testing.T) {
	const path = "../docs/brokers.md"
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	readme := string(data)
	i := strings.Index(readme, envTableStart)
	j := strings.Index(readme, envTableEnd)
	if i < 0 || j < i {
		t.Fatalf("docs/brokers.md lacks the markers %q and %q around the table of settings", envTableStart, envTableEnd)
	}
	got, want := readme[i+len(envTableStart):j], envTable()
	if got == want {
		return
	}
	if *update {
		if err := os.WriteFile(path, []byte(readme[:i+len(envTableStart)]+want+readme[j:]), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	gotLines, wantLines := strings.Split(got, "\n"), strings.Split(want, "\n")
	for k := range max(len(gotLines), len(wantLines)) {
		g, w := "", ""
		if k < len(gotLines) {
			g = gotLines[k]
		}
		if k < len(wantLines) {
			w = wantLines[k]
		}
		if g != w {
			t.Errorf("docs/brokers.md's table of settings differs from adapters.EnvVars at row %d:\ndocs:     %s\nEnvVars:  %s", k-1, g, w)
			break
		}
	}
	t.Error("regenerate it: go test ./adapters -run TestEnvTable -update")
}
