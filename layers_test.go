package antidote_test

import (
	"os/exec"
	"sort"
	"strings"
	"testing"
)

// The core a Watermill user imports (poison, middleware, router) compiles
// without any broker client and stays small: a team that only wants the
// middleware on its own Pub/Sub must not get Sarama, pgx, go-redis,
// amqp091 or a Kafka broker compiled in. It needs the go command.
func TestCoreDependencies(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}",
		"./poison", "./middleware", "./router").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	forbidden := []string{"github.com/IBM/sarama", "github.com/jackc/", "github.com/redis/go-redis",
		"github.com/rabbitmq/amqp091-go", "github.com/twmb/franz-go"}
	var outside []string
	for _, pkg := range strings.Fields(string(out)) {
		for _, f := range forbidden {
			if strings.HasPrefix(pkg, f) {
				t.Errorf("the core depends on broker client %s", pkg)
			}
		}
		if pkg != module && !strings.HasPrefix(pkg, module+"/") {
			outside = append(outside, pkg)
		}
	}
	const most = 50
	if len(outside) > most {
		t.Errorf("the core depends on %d packages outside the standard library and this module, more than %d:\n%s",
			len(outside), most, strings.Join(outside, "\n"))
	}
	t.Logf("poison + middleware + router: %d packages outside the standard library and this module", len(outside))
}

const module = "github.com/antidote-mq/antidote"

// Each package imports only packages of a lower layer (never a sibling,
// never one above): the map says which of this module's packages each may
// import. Commands, examples, benchmarks and internal test helpers may
// import anything.
var allowedImports = map[string][]string{
	"":             {},
	"poison":       {""},
	"idempotency":  {"", "poison"},
	"claimcheck":   {"", "poison"},
	"throttle":     {""},
	"middleware":   {"", "poison", "idempotency", "claimcheck", "throttle"},
	"router":       {"", "poison", "middleware"},
	"telemetry":    {"", "poison"},
	"adapters":     {"", "poison"},
	"devkafka":     {"adapters"},
	"pgstore":      {"", "poison", "idempotency", "claimcheck", "fingerprint", "hospital"},
	"redisstore":   {"", "poison", "idempotency", "claimcheck"},
	"dlq":          {"", "poison", "claimcheck", "adapters", "hospital", "fingerprint"},
	"fingerprint":  {},
	"hospital":     {"", "poison", "fingerprint"},
	"outbox":       {"", "idempotency", "throttle"},
	"hospital/web": {"", "hospital", "fingerprint", "poison"},
}

func TestLayers(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", "{{.ImportPath}} {{join .Imports \" \"}}", "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	seen := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		pkg := strings.TrimPrefix(strings.TrimPrefix(fields[0], module), "/")
		seen[pkg] = true
		allowed, ruled := allowedImports[pkg]
		if !ruled {
			if !strings.HasPrefix(pkg, "cmd/") && !strings.HasPrefix(pkg, "examples/") && !strings.HasPrefix(pkg, "bench") &&
				!strings.HasPrefix(pkg, "internal/") && pkg != "poisontest" {
				t.Errorf("package %q has no place in the layers; add it to allowedImports", pkg)
			}
			continue
		}
		for _, imp := range fields[1:] {
			if imp != module && !strings.HasPrefix(imp, module+"/") {
				continue
			}
			dep := strings.TrimPrefix(strings.TrimPrefix(imp, module), "/")
			if strings.HasPrefix(dep, "internal/") {
				continue // private helpers, placed by Go's internal rule
			}
			ok := false
			for _, a := range allowed {
				ok = ok || a == dep
			}
			if !ok {
				t.Errorf("%s imports %s, which is not below it (allowed: %q)", name(pkg), name(dep), allowed)
			}
		}
	}
	var missing []string
	for pkg := range allowedImports {
		if !seen[pkg] {
			missing = append(missing, pkg)
		}
	}
	sort.Strings(missing)
	t.Logf("layered packages not in this tree: %q", missing)
}

func name(pkg string) string {
	if pkg == "" {
		return "antidote"
	}
	return pkg
}
