package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/dlq"
)

// runCode runs the command line in-process as main does and returns its
// exit code, stdout and stderr.
func runCode(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

func TestExitCodeMapping(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{nil, exitOK},
		{errors.New("boom"), exitFailure},
		{fmt.Errorf("dlq: open: %w", adapters.ErrUnreachable), exitUnreachable},
		{fmt.Errorf("%w (replayed 2 letters before the error)", fmt.Errorf("x: %w", adapters.ErrUnreachable)), exitUnreachable},
		{fmt.Errorf("%w: no unresolved letter u in t.dlq", dlq.ErrNotFound), exitNoMatch},
		{usagef("--reason %q", "bogus"), exitUsage},
		{fmt.Errorf("wrapped: %w", usagef("bad")), exitUsage},
		{nothingMatched("none"), exitNoMatch},
	} {
		if got := exitCode(tc.err); got != tc.want {
			t.Errorf("exitCode(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
	// The four codes are distinct and none is 0.
	codes := []int{exitFailure, exitUsage, exitNoMatch, exitUnreachable}
	for i, c := range codes {
		if c == exitOK || slices.Contains(codes[i+1:], c) {
			t.Fatalf("exit codes not distinct: %v", codes)
		}
	}
}

// Unknown commands and bad flag values exit 2 and name the bad value and the
// valid ones; none of them reaches a broker.
func TestBadUsageExitsTwo(t *testing.T) {
	t.Setenv("ANTIDOTE_BROKER", "postgres")
	for _, tc := range []struct {
		args []string
		want []string // in stderr
	}{
		{[]string{"dlq", "lsit"}, []string{`"lsit"`, `did you mean "list"`, "group, list, purge, replay, show"}},
		{[]string{"dlq", "bogus", "--topic", "x"}, []string{`"bogus"`, "valid commands"}},
		{[]string{"bogus"}, []string{`"bogus"`, "devkafka", "dlq"}},
		{[]string{"dlq", "list", "--topic", "x", "--reason", "bogus"}, []string{`"bogus"`, "permanent", "retries_exhausted", "crash_loop", "undecodable", "panic", "rejected_by_flood_guard"}},
		{[]string{"dlq", "purge", "--topic", "x", "--reason", "permanent,Panic", "--yes"}, []string{`"Panic"`, "panic"}},
		{[]string{"dlq", "list", "--topic", "x", "--bogus"}, []string{"unknown flag: --bogus"}},
		{[]string{"--bogus"}, []string{"unknown flag: --bogus"}},
		{[]string{"dlq", "replay", "--topic", "x", "--rate", "fast"}, []string{`"fast"`, "--rate"}},
		{[]string{"dlq", "replay", "--topic", "x", "--rate", "-5"}, []string{"--rate -5"}},
		{[]string{"dlq", "replay", "--topic", "x", "--to", "payments"}, []string{`"payments"`, "--allow-replay-to"}},
		{[]string{"dlq", "list", "--topic", "x", "--broker", "memory"}, []string{`"memory"`, "kafka, amqp, postgres"}},
		{[]string{"dlq", "list", "--topic", "x", "--claim-check", "s3"}, []string{`"s3"`, "postgres, redis"}},
		{[]string{"dlq", "list", "--topic", "x", "--since", "yesterday"}, []string{`"yesterday"`, "RFC 3339"}},
		{[]string{"dlq", "list", "--topic", "x", "--config", filepath.Join(t.TempDir(), "missing.yaml")}, []string{"missing.yaml"}},
		{[]string{"dlq", "list"}, []string{"--topic is required"}},
		{[]string{"dlq", "show", "--topic", "x"}, []string{"accepts 1 arg"}},
		{[]string{"dlq", "list", "--topic", "x", "extra"}, []string{`"extra"`}},
	} {
		code, out, errOut := runCode(t, "", tc.args...)
		if code != exitUsage {
			t.Errorf("%v: exit code %d, want %d; stderr %q", tc.args, code, exitUsage, errOut)
			continue
		}
		if out != "" {
			t.Errorf("%v: printed on stdout (help instead of an error?): %q", tc.args, out)
		}
		for _, w := range tc.want {
			if !strings.Contains(errOut, w) {
				t.Errorf("%v: stderr lacks %q: %q", tc.args, w, errOut)
			}
		}
		if !strings.Contains(errOut, "--help' for usage") {
			t.Errorf("%v: no pointer to --help: %q", tc.args, errOut)
		}
	}
	// Help asked for, or a group command alone, is not an error.
	for _, args := range [][]string{{"dlq"}, {}, {"dlq", "--help"}, {"dlq", "list", "-h"}} {
		if code, out, errOut := runCode(t, "", args...); code != exitOK || !strings.Contains(out, "Usage:") {
			t.Errorf("%v: exit code %d, stdout %q, stderr %q", args, code, out, errOut)
		}
	}
}

// A broker that does not answer is exit code 4, in-process.
func TestUnreachableExitsFour(t *testing.T) {
	t.Setenv("ANTIDOTE_BROKER", "amqp")
	t.Setenv("ANTIDOTE_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/")
	t.Setenv("ANTIDOTE_CONNECT_TIMEOUT", "1s")
	for _, sub := range []string{"list", "group", "replay", "purge"} {
		args := []string{"dlq", sub, "--topic", "x"}
		if sub == "replay" || sub == "purge" {
			args = append(args, "--yes")
		}
		code, _, errOut := runCode(t, "", args...)
		if code != exitUnreachable || !strings.Contains(errOut, "unreachable") {
			t.Errorf("%s: exit code %d, stderr %q", sub, code, errOut)
		}
	}
}

// --reason accepts exactly the poison.Reason constants: a reason added
// there without being added here would be rejected by the CLI.
func TestKnownReasonsArePoisonReasons(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "..", "poison", "*.go"))
	if err != nil || len(files) == 0 {
		t.Fatalf("poison sources: %v %v", files, err)
	}
	fset := token.NewFileSet()
	var declared []string
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			vs, ok := n.(*ast.ValueSpec)
			if !ok {
				return true
			}
			if id, ok := vs.Type.(*ast.Ident); !ok || id.Name != "Reason" {
				return true
			}
			for _, v := range vs.Values {
				if lit, ok := v.(*ast.BasicLit); ok {
					s, _ := strconv.Unquote(lit.Value)
					declared = append(declared, s)
				}
			}
			return true
		})
	}
	var known []string
	for _, r := range knownReasons {
		known = append(known, string(r))
	}
	slices.Sort(declared)
	slices.Sort(known)
	if len(declared) < 6 || !slices.Equal(declared, known) {
		t.Fatalf("poison declares reasons %v, --reason accepts %v", declared, known)
	}
}

func TestVersionText(t *testing.T) {
	bi := &debug.BuildInfo{GoVersion: "go1.26.1", Main: debug.Module{Path: "github.com/antidote-mq/antidote", Version: "v1.4.2"},
		Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "0123456789abcdef"}, {Key: "vcs.time", Value: "2026-05-01T10:00:00Z"}, {Key: "vcs.modified", Value: "true"}}}
	got := versionText(bi, true)
	for _, w := range []string{"antidote v1.4.2", "github.com/antidote-mq/antidote v1.4.2", "0123456789abcdef (2026-05-01T10:00:00Z) with local modifications", "go1.26.1"} {
		if !strings.Contains(got, w) {
			t.Errorf("versionText lacks %q:\n%s", w, got)
		}
	}
	got = versionText(nil, false)
	for _, w := range []string{"antidote (devel)", "revision: unknown", runtime.Version()} {
		if !strings.Contains(got, w) {
			t.Errorf("versionText without build info lacks %q:\n%s", w, got)
		}
	}
	code, out, _ := runCode(t, "", "--version")
	if code != exitOK || !strings.HasPrefix(out, "antidote ") || !strings.Contains(out, "go:") || !strings.Contains(out, runtime.Version()) {
		t.Errorf("--version: exit code %d, %q", code, out)
	}
}

// Every command's --help has examples; the root's and dlq's list the exit codes.
func TestHelpHasExamples(t *testing.T) {
	var walk func(c *cobra.Command)
	var seen []string
	walk = func(c *cobra.Command) {
		if c.Name() == "devkafka" || c.Name() == "help" || c.Name() == "completion" {
			return
		}
		seen = append(seen, c.CommandPath())
		args := append(strings.Fields(c.CommandPath())[1:], "--help")
		code, out, _ := runCode(t, "", args...)
		if code != exitOK || !strings.Contains(out, "Examples:") || !strings.Contains(out, "  "+c.CommandPath()) {
			t.Errorf("%s --help: exit code %d, no examples running it:\n%s", c.CommandPath(), code, out)
		}
		if c.Name() == "antidote" || c.Name() == "dlq" || c.Name() == "hospital" || c.Name() == "migrate" {
			for _, w := range []string{"Exit codes:", "2  bad usage", "3  nothing matched", "4  broker unreachable"} {
				if !strings.Contains(out, w) {
					t.Errorf("%s --help lacks %q", c.CommandPath(), w)
				}
			}
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(newRootCmd())
	if len(seen) != 11 { // antidote, dlq and its five subcommands, hospital and its two, migrate
		t.Errorf("walked %v", seen)
	}
	if _, out, _ := runCode(t, "", "dlq", "show", "--help"); !strings.Contains(out, "--full") {
		t.Errorf("show --help lacks --full:\n%s", out)
	}
}

func TestPlural(t *testing.T) {
	for n, want := range map[int]string{0: "0 letters", 1: "1 letter", 2: "2 letters", 1000: "1000 letters"} {
		if got := plural(n, "letter"); got != want {
			t.Errorf("plural(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestOutputWidth(t *testing.T) {
	var buf bytes.Buffer
	t.Setenv("COLUMNS", "90")
	if w := outputWidth(&buf); w != 90 {
		t.Errorf("COLUMNS=90 off a terminal: width %d", w)
	}
	if w := errorColumn(&buf, 61); w != 29 {
		t.Errorf("group's ERROR column at 90 columns: %d", w)
	}
	t.Setenv("COLUMNS", "100")
	if w := errorColumn(&buf, 73); w != 27 {
		t.Errorf("ERROR column at 100 columns: %d", w)
	}
	t.Setenv("COLUMNS", "40")
	if w := errorColumn(&buf, 73); w != minErrorColumn {
		t.Errorf("ERROR column on a narrow screen: %d", w)
	}
	for _, v := range []string{"", "wide", "-3", "0"} {
		t.Setenv("COLUMNS", v)
		if w := outputWidth(&buf); w != 0 {
			t.Errorf("COLUMNS=%q off a terminal: width %d, want 0 (no limit)", v, w)
		}
		if w := errorColumn(&buf, 73); w != -1 {
			t.Errorf("COLUMNS=%q: ERROR column %d, want -1", v, w)
		}
	}
	// A file is not a terminal.
	f, err := os.Create(filepath.Join(t.TempDir(), "out"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if w := outputWidth(f); w != 0 {
		t.Errorf("file: width %d", w)
	}
}

// buildBinary builds the antidote command with VCS stamping into a
// temporary directory.
func buildBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := filepath.Join(t.TempDir(), "antidote")
	cmd := exec.Command("go", "build", "-buildvcs=auto", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// runBinary runs bin with args and env added to the test's and returns the
// process's real exit code.
func runBinary(t *testing.T, bin string, env []string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, out.String(), errb.String()
	case errors.As(err, &ee):
		return ee.ExitCode(), out.String(), errb.String()
	default:
		t.Fatalf("%v: %v", args, err)
		return -1, "", ""
	}
}
