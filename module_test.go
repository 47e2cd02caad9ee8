package antidote_test

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

// go.mod's go directive is the oldest Go the module can be built with: the
// highest go directive among the modules it requires (the go command
// refuses anything lower), not the toolchain that happened to run go mod
// tidy. A newer directive would lock out users on an older patch release
// for no reason. It needs the go command.
func TestGoDirectiveIsOldestNeeded(t *testing.T) {
	data, err := exec.Command("go", "mod", "edit", "-json").Output()
	if err != nil {
		t.Fatalf("go mod edit -json: %v", err)
	}
	var f struct{ Go, Toolchain string }
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatal(err)
	}
	if f.Go == "" {
		t.Fatal("go.mod has no go directive")
	}
	if f.Toolchain != "" {
		t.Errorf("go.mod has a toolchain line (%s): it makes users download that toolchain; drop it", f.Toolchain)
	}
	out, err := exec.Command("go", "list", "-m", "-f", "{{if not .Main}}{{.Path}}@{{.GoVersion}}{{end}}", "all").Output()
	if err != nil {
		t.Fatalf("go list -m all: %v", err)
	}
	need, by := "1.0", ""
	for _, line := range strings.Fields(string(out)) {
		path, v, _ := strings.Cut(line, "@")
		if v != "" && gover(v) > gover(need) {
			need, by = v, path
		}
	}
	if gover(f.Go) != gover(need) {
		t.Errorf("go.mod says go %s; the oldest the dependencies allow is go %s (required by %s): set the go directive to it", f.Go, need, by)
	}
}

// gover makes Go versions ("1.25", "1.26.0", "1.9") compare as strings.
func gover(v string) string {
	parts := strings.Split(v, ".")
	for len(parts) < 3 {
		parts = append(parts, "0")
	}
	for i, p := range parts {
		parts[i] = strings.Repeat("0", 4-min(4, len(p))) + p
	}
	return strings.Join(parts, ".")
}
