package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/dlq"
	"github.com/antidote-mq/antidote/hospital"
)

// The exit codes, one per kind of outcome a script may act on.
const (
	exitOK          = 0 // success
	exitFailure     = 1 // any failure without a code of its own
	exitUsage       = 2 // unknown command, bad flag or flag value, bad config
	exitNoMatch     = 3 // the selection was empty: nothing listed, shown, replayed or purged
	exitUnreachable = 4 // the broker (or claim-check store) did not answer
	exitPartial     = 5 // a treatment left some selected letters dead (each reported with why)
)

// exitCodesHelp is printed by --help of the root and of dlq.
const exitCodesHelp = `Exit codes:
  0  success
  1  any other failure
  2  bad usage: unknown command, unknown flag, bad flag value, bad config
  3  nothing matched: list or group found no letter, show found no letter
     with that UUID, replay or purge selected none (also with --dry-run)
  4  broker unreachable: no broker answered within connect_timeout (for
     migrate: the database did not answer)
  5  partly done: replay or purge treated what it could and left some
     selected letters dead, each reported with the reason (no original
     topic, malformed metadata, its claim gone); or another treatment of
     the same DLQ took over and this one stopped`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes the command line args and returns the process's exit code,
// having printed any error on stderr.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if args == nil {
		args = []string{} // cobra reads os.Args for nil
	}
	root := newRootCmd()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return exitOK
	}
	code := exitCode(err)
	var ce *codedError
	if errors.As(err, &ce) && ce.silent {
		return code
	}
	fmt.Fprintln(stderr, "antidote:", err)
	if code == exitUsage && cmd != nil {
		fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
	}
	return code
}

// exitCode is the one place errors become exit codes.
func exitCode(err error) int {
	var ce *codedError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ce):
		return ce.code
	case errors.Is(err, adapters.ErrUnreachable):
		return exitUnreachable
	case errors.Is(err, dlq.ErrNotFound):
		return exitNoMatch
	case errors.Is(err, dlq.ErrSomeFailed), errors.Is(err, hospital.ErrTakenOver):
		return exitPartial
	default:
		return exitFailure
	}
}

// codedError gives err an exit code; silent ones were already reported on
// stdout and are not printed again.
type codedError struct {
	code   int
	err    error
	silent bool
}

func (e *codedError) Error() string { return e.err.Error() }
func (e *codedError) Unwrap() error { return e.err }

// usageErr marks err as bad usage (exit code 2).
func usageErr(err error) error {
	if err == nil {
		return nil
	}
	return &codedError{code: exitUsage, err: err}
}

// usagef is usageErr(fmt.Errorf(format, args...)).
func usagef(format string, args ...any) error {
	return usageErr(fmt.Errorf(format, args...))
}

// nothingMatched is the exit code 3 of a command that already said so.
func nothingMatched(what string) error {
	return &codedError{code: exitNoMatch, err: errors.New(what), silent: true}
}

// usageArgs makes a cobra.PositionalArgs' complaint a usage error.
func usageArgs(pa cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error { return usageErr(pa(cmd, args)) }
}

// subcommandArgs rejects anything but a known subcommand. cobra only does
// so on the root: on a command with subcommands of its own it prints help
// and exits 0, so a typo (antidote dlq lsit) would look like success.
func subcommandArgs(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	var valid []string
	for _, c := range cmd.Commands() {
		if c.IsAvailableCommand() {
			valid = append(valid, c.Name())
		}
	}
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2
	}
	hint := ""
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		hint = fmt.Sprintf("; did you mean %q?", s[0])
	}
	return usagef("unknown command %q for %q%s; valid commands: %s", args[0], cmd.CommandPath(), hint, strings.Join(valid, ", "))
}

// showHelp is the Run of a command that only groups subcommands: without
// one it prints its help.
func showHelp(cmd *cobra.Command, _ []string) error { return cmd.Help() }

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "antidote",
		Short: "Tools for Antidote, the poison-pill cure for Watermill services",
		Long: `Tools for Antidote, the poison-pill cure for Watermill services: the message
hospital (antidote dlq), an embedded Kafka-protocol broker for development
(antidote devkafka) and the schema migrations of Antidote's PostgreSQL tables
(antidote migrate).

` + exitCodesHelp,
		Example: `  # Which dead letters does the orders service have, and why?
  antidote dlq group --topic orders

  # A Kafka-protocol broker on 127.0.0.1:9092 for local development
  antidote devkafka

  # Which schema changes would the PostgreSQL tables get? (applies nothing)
  antidote migrate --postgres-url postgres://admin@db:5432/app --dry-run

  # Which build is this?
  antidote --version`,
		Version:       versionText(debug.ReadBuildInfo()),
		Args:          subcommandArgs,
		RunE:          showHelp,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetVersionTemplate("{{.Version}}\n")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageErr(err) })
	root.AddCommand(newDevKafkaCmd(), newDLQCmd(), newHospitalCmd(), newMigrateCmd())
	return root
}

// versionText is what --version prints: the module version and VCS revision
// the binary was built from, and the Go that built it. A build without
// module or VCS information (go build with -buildvcs=false, a test binary)
// says "(devel)" and "unknown".
func versionText(bi *debug.BuildInfo, ok bool) string {
	version, path := "(devel)", "github.com/antidote-mq/antidote"
	revision, when, modified := "unknown", "", false
	goVersion := runtime.Version()
	if ok && bi != nil {
		if bi.Main.Version != "" {
			version = bi.Main.Version
		}
		if bi.Main.Path != "" {
			path = bi.Main.Path
		}
		if bi.GoVersion != "" {
			goVersion = bi.GoVersion
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				revision = s.Value
			case "vcs.time":
				when = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
	}
	if when != "" {
		revision += " (" + when + ")"
	}
	if modified {
		revision += " with local modifications"
	}
	return fmt.Sprintf("antidote %s\nmodule:   %s %s\nrevision: %s\ngo:       %s %s/%s",
		version, path, version, revision, goVersion, runtime.GOOS, runtime.GOARCH)
}
