package main

import (
	"bufio"
	"cmp"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/dlq"
	"github.com/antidote-mq/antidote/hospital"
	"github.com/antidote-mq/antidote/internal/textcut"
	"github.com/antidote-mq/antidote/pgstore"
	"github.com/antidote-mq/antidote/poison"
	"github.com/antidote-mq/antidote/telemetry"
)

// dlqFlags are shared by every dlq subcommand.
type dlqFlags struct {
	topic, config, broker         string
	reasons, handlers, errorTypes []string
	since, until                  string
	jsonOut                       bool
	allowTo                       []string
	claimCheck, hospitalTable     string
	shutdown                      func(context.Context) error
	closeClaims, closeStore       func() error
}

func newDLQCmd() *cobra.Command {
	f := &dlqFlags{}
	cmd := &cobra.Command{
		Use:   "dlq",
		Short: "The message hospital: list, group, show, replay and purge dead letters",
		Long: `Inspects and treats the dead letters of a topic (its DLQ, "<topic>.dlq").
The broker comes from the same ANTIDOTE_* env and --config file as the services.
On RabbitMQ and PostgreSQL, replay and purge remove letters; on Kafka they move
the hospital's own consumer-group offset on the DLQ topic.

--reason takes the reasons Antidote writes: ` + reasonList() + `.

The ERROR column of list and group fits the terminal: its width when stdout is
one, else $COLUMNS when set, else no limit (piped output keeps whole errors).
--json always carries whole errors and payloads.

` + exitCodesHelp,
		Example: `  # What is in the orders DLQ, and what are the causes?
  antidote dlq list --topic orders
  antidote dlq group --topic orders --since 24h

  # Replay yesterday's panics after the fix, 20 per second
  antidote dlq replay --topic orders --reason panic --since 24h --rate 20`,
		Args: subcommandArgs,
		RunE: showHelp,
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&f.topic, "topic", "", "the original topic whose DLQ is inspected (required)")
	pf.StringVar(&f.config, "config", "", "adapters YAML config (ANTIDOTE_* env overrides it)")
	pf.StringVar(&f.broker, "broker", "", "kafka, amqp or postgres (default: ANTIDOTE_BROKER or the config)")
	pf.StringSliceVar(&f.reasons, "reason", nil, "only letters with this reason (repeatable or comma-separated): "+reasonList())
	pf.StringSliceVar(&f.handlers, "handler", nil, "only letters from this handler")
	pf.StringSliceVar(&f.errorTypes, "error-type", nil, "only letters with this Go error type, e.g. *json.SyntaxError")
	pf.StringVar(&f.since, "since", "", "only letters that last failed at or after this (RFC 3339, or a duration ago such as 24h)")
	pf.StringVar(&f.until, "until", "", "only letters that last failed at or before this (RFC 3339, or a duration ago)")
	pf.BoolVar(&f.jsonOut, "json", false, "one JSON object per line")
	pf.StringSliceVar(&f.allowTo, "allow-replay-to", nil, "topics replay --to may target besides the original")
	pf.StringVar(&f.hospitalTable, "hospital-table", pgstore.DefaultHospitalTable, "with a hospital store (ANTIDOTE_HOSPITAL_URL), the name prefix of its tables")
	pf.StringVar(&f.claimCheck, "claim-check", "", claimCheckUsage)
	cmd.AddCommand(newDLQListCmd(f), newDLQGroupCmd(f), newDLQShowCmd(f), newDLQReplayCmd(f), newDLQPurgeCmd(f))
	return cmd
}

func (f *dlqFlags) open(ctx context.Context) (*dlq.Hospital, hospital.LetterQuery, error) {
	if f.topic == "" {
		return nil, hospital.LetterQuery{}, usagef("--topic is required: name the original topic whose DLQ to inspect")
	}
	filter, err := f.filter()
	if err != nil {
		return nil, filter, usageErr(err)
	}
	// The adapters' config, and the hospital store when one is configured
	// (ANTIDOTE_HOSPITAL_URL or hospital.url): then the letters are read
	// from the store the ingester fills, not from the broker's DLQ.
	hf := &hospitalFlags{config: f.config, broker: f.broker, table: f.hospitalTable, claimCheck: f.claimCheck}
	cfg, storeURL, err := hf.loadOptional()
	if err != nil {
		return nil, filter, err
	}
	// A config the hospital cannot work with is bad usage, told apart from
	// a broker that does not answer.
	checked := cfg
	checked.SetDefaults()
	if err := (dlq.Config{Adapters: checked}).Validate(); err != nil {
		return nil, filter, usageErr(err)
	}
	// Replays get a producer span of their own (a new trace linked to the
	// letter's original one) when OTEL_EXPORTER_OTLP_ENDPOINT is set.
	tel, err := telemetry.Setup(ctx, telemetry.SetupConfig{ServiceName: "antidote-dlq"})
	if err != nil {
		return nil, filter, err
	}
	f.shutdown = tel.Shutdown
	claims, closeClaims, err := hf.openClaims(ctx, cfg)
	if err != nil {
		return nil, filter, err
	}
	f.closeClaims = closeClaims
	var store hospital.Store
	if storeURL != "" {
		st, err := hf.openStore(ctx, storeURL)
		if err != nil {
			return nil, filter, err
		}
		f.closeStore = st.Close
		store = st
	}
	h, err := dlq.Open(ctx, dlq.Config{Adapters: cfg, AllowReplayTo: f.allowTo, ClaimCheck: claims, Store: store,
		WrapPublisher: func(p message.Publisher) (message.Publisher, error) {
			return telemetry.NewPublisher(p, telemetry.PublisherConfig{TracerProvider: tel.TracerProvider, System: cfg.Broker.MessagingSystem()})
		}})
	return h, filter, err
}

// list opens the hospital, lists the letters the filters select, and closes it.
func (f *dlqFlags) list(ctx context.Context) ([]hospital.Letter, string, error) {
	h, filter, err := f.open(ctx)
	if err != nil {
		return nil, "", err
	}
	defer f.close(h)
	letters, err := h.List(ctx, f.topic, filter)
	return letters, h.DLQTopic(f.topic), err
}

// close releases the hospital and flushes telemetry.
func (f *dlqFlags) close(h *dlq.Hospital) {
	_ = h.Close()
	if f.closeClaims != nil {
		_ = f.closeClaims()
	}
	if f.closeStore != nil {
		_ = f.closeStore()
	}
	if f.shutdown != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = f.shutdown(ctx)
	}
}

// filter is the selection the flags make: the same query the hospital
// store and a broker's DLQ answer.
func (f *dlqFlags) filter() (hospital.LetterQuery, error) {
	var out hospital.LetterQuery
	for _, r := range f.reasons {
		r = strings.TrimSpace(r)
		if !slices.Contains(knownReasons, poison.Reason(r)) {
			return out, fmt.Errorf("--reason %q is not a reason Antidote writes; use one of: %s", r, reasonList())
		}
		out.Reasons = append(out.Reasons, r)
	}
	out.Handlers, out.ErrorTypes = f.handlers, f.errorTypes
	var err error
	if out.FailedSince, err = parseWhen("--since", f.since); err != nil {
		return out, err
	}
	out.FailedUntil, err = parseWhen("--until", f.until)
	return out, err
}

// knownReasons are the reasons --reason accepts: every poison.Reason
// constant (TestKnownReasonsArePoisonReasons keeps the two in step).
var knownReasons = []poison.Reason{
	poison.ReasonPermanent, poison.ReasonRetriesExhausted, poison.ReasonCrashLoop,
	poison.ReasonUndecodable, poison.ReasonPanic, poison.ReasonFloodGuard,
}

func reasonList() string {
	s := make([]string, len(knownReasons))
	for i, r := range knownReasons {
		s[i] = string(r)
	}
	return strings.Join(s, ", ")
}

// hospitalBrokers are the brokers --broker accepts (memory keeps its dead
// letters inside the service's process).
var hospitalBrokers = []adapters.Kind{adapters.KindKafka, adapters.KindAMQP, adapters.KindPostgres}

func joinKinds(kinds []adapters.Kind) string {
	s := make([]string, len(kinds))
	for i, k := range kinds {
		s[i] = string(k)
	}
	return strings.Join(s, ", ")
}

// plural is n with the noun, in the singular for one: "1 letter", "2 letters".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

func parseWhen(flag, v string) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339, v); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(v); err == nil && d >= 0 {
		return time.Now().Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("%s %q: use an RFC 3339 time (2026-11-23T10:00:00Z) or a duration ago (24h)", flag, v)
}

// letterView is a letter as the CLI prints it in JSON.
type letterView struct {
	UUID              string            `json:"uuid"`
	Reason            string            `json:"reason"`
	Handler           string            `json:"handler,omitempty"`
	ConsumerGroup     string            `json:"consumer_group,omitempty"`
	OriginalTopic     string            `json:"original_topic,omitempty"`
	OriginalPartition *int64            `json:"original_partition,omitempty"`
	OriginalOffset    *int64            `json:"original_offset,omitempty"`
	Error             string            `json:"error,omitempty"`
	ErrorType         string            `json:"error_type,omitempty"`
	Attempts          int               `json:"attempts,omitempty"`
	FirstFailedAt     *time.Time        `json:"first_failed_at,omitempty"`
	LastFailedAt      *time.Time        `json:"last_failed_at,omitempty"`
	ReplayCount       int               `json:"replay_count,omitempty"`
	Fingerprint       string            `json:"fingerprint"`
	Problem           string            `json:"problem,omitempty"`
	PayloadBytes      *int              `json:"payload_bytes,omitempty"`
	Payload           *string           `json:"payload,omitempty"`
	PayloadBase64     []byte            `json:"payload_base64,omitempty"`
	Metadata          map[string]string `json:"metadata,omitempty"`
}

// view is l as printed: with withPayload, its metadata and whole payload
// (text when it is UTF-8, else base64).
func view(l hospital.Letter, withPayload bool) letterView {
	v := letterView{UUID: l.UUID, Reason: l.Reason, Handler: l.Handler, ConsumerGroup: l.ConsumerGroup,
		OriginalTopic: l.OriginalTopic, Error: l.Error, ErrorType: l.ErrorType, Attempts: l.Attempts,
		Fingerprint: l.Fingerprint.ID, Problem: l.Problem}
	v.ReplayCount, _ = strconv.Atoi(l.Metadata[poison.KeyReplayCount])
	if p, err := strconv.ParseInt(l.Metadata[poison.KeyOriginalPartition], 10, 32); err == nil {
		if o, err := strconv.ParseInt(l.Metadata[poison.KeyOriginalOffset], 10, 64); err == nil {
			v.OriginalPartition, v.OriginalOffset = &p, &o
		}
	}
	if !l.FirstFailedAt.IsZero() {
		v.FirstFailedAt = &l.FirstFailedAt
	}
	if !l.LastFailedAt.IsZero() {
		v.LastFailedAt = &l.LastFailedAt
	}
	if withPayload {
		n := len(l.Payload)
		v.PayloadBytes = &n
		if utf8.Valid(l.Payload) {
			p := string(l.Payload)
			v.Payload = &p
		} else {
			v.PayloadBase64 = l.Payload
		}
		v.Metadata = l.Metadata
	}
	return v
}

func printJSON(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, string(b))
	return err
}

// trunc puts s on one line and fits it into n columns (runes), marking a
// cut with an ellipsis; n < 0 keeps it whole.
func trunc(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if n < 0 {
		return s
	}
	return textcut.Runes(s, n, "…")
}

// minErrorColumn is the narrowest ERROR column: on a terminal narrower than
// the other columns need, lines wrap rather than lose the error entirely.
const minErrorColumn = 20

// outputWidth is the width tables are fitted to: the terminal's when w is
// one, else $COLUMNS when it is a positive number, else 0 (no limit).
func outputWidth(w io.Writer) int {
	if f, ok := w.(interface{ Fd() uintptr }); ok {
		if fd := int(f.Fd()); term.IsTerminal(fd) {
			if cols, _, err := term.GetSize(fd); err == nil && cols > 0 {
				return cols
			}
		}
	}
	if c, err := strconv.Atoi(os.Getenv("COLUMNS")); err == nil && c > 0 {
		return c
	}
	return 0
}

// errorColumn is how many runes the ERROR column may take on w after the
// other columns' used ones; -1 means no limit.
func errorColumn(w io.Writer, used int) int {
	width := outputWidth(w)
	if width == 0 {
		return -1
	}
	return max(width-used, minErrorColumn)
}

func age(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := time.Since(t)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	default:
		return fmt.Sprintf("%dd", int(d.Hours()/24))
	}
}

func newDLQListCmd(f *dlqFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List unresolved dead letters, oldest first",
		Long: `Lists the unresolved dead letters the filters select, oldest first. The ERROR
column fits the terminal's width (else $COLUMNS, else whole errors when piped);
--json prints one whole letter per line. Exits 3 when no letter matched.`,
		Example: `  antidote dlq list --topic orders
  antidote dlq list --topic orders --reason permanent,panic --since 2h
  antidote dlq list --topic orders --handler charge --json | jq -r .uuid`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			letters, dlqTopic, err := f.list(cmd.Context())
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if f.jsonOut {
				for _, l := range letters {
					if err := printJSON(w, view(l, false)); err != nil {
						return err
					}
				}
			} else {
				// UUID 36, REASON 17, HANDLER 12, AGE 4, four spaces: 73.
				errW := errorColumn(w, 73)
				fmt.Fprintf(w, "%-36s %-17s %-12s %4s %s\n", "UUID", "REASON", "HANDLER", "AGE", "ERROR")
				for _, l := range letters {
					fmt.Fprintf(w, "%-36s %-17s %-12s %4s %s\n", trunc(l.UUID, 36), trunc(l.Reason, 17), trunc(l.Handler, 12), age(l.FailedAt()), trunc(cmp.Or(l.Error, l.Problem), errW))
				}
				fmt.Fprintf(w, "%s in %s\n", plural(len(letters), "letter"), dlqTopic)
			}
			if len(letters) == 0 {
				return nothingMatched("no letter in " + dlqTopic + " matched")
			}
			return nil
		},
	}
}

func newDLQGroupCmd(f *dlqFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "group",
		Short: "Group dead letters by fingerprint, as the hospital's web UI does",
		Long: `Groups the dead letters the filters select by fingerprint, the hospital's one
grouping (package fingerprint, the groups the web UI shows for the same
letters): handler, reason, Go error type, the first application frame, the
error with its ids, numbers and quoted values taken out, the payload's shape
and the producing service. Biggest group first; LAST is when its latest letter
failed. The MESSAGE column fits the terminal as in list; --json has each
group whole (its fingerprint id, first and last seen). Exits 3 when no letter
matched.`,
		Example: `  antidote dlq group --topic orders
  antidote dlq group --topic orders --since 24h --json`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			h, q, err := f.open(cmd.Context())
			if err != nil {
				return err
			}
			defer f.close(h)
			groups, err := h.Groups(cmd.Context(), f.topic, q)
			if err != nil {
				return err
			}
			dlqTopic := h.DLQTopic(f.topic)
			w := cmd.OutOrStdout()
			letters := 0
			for _, g := range groups {
				letters += int(g.Count)
			}
			if f.jsonOut {
				for _, g := range groups {
					if err := printJSON(w, g); err != nil {
						return err
					}
				}
			} else {
				// COUNT 6, REASON 17, HANDLER 12, ERROR TYPE 22, LAST 4, five spaces: 66.
				errW := errorColumn(w, 66)
				fmt.Fprintf(w, "%6s %-17s %-12s %-22s %4s %s\n", "COUNT", "REASON", "HANDLER", "ERROR TYPE", "LAST", "MESSAGE")
				for _, g := range groups {
					fp := g.Fingerprint
					fmt.Fprintf(w, "%6d %-17s %-12s %-22s %4s %s\n", g.Count, trunc(fp.Reason, 17), trunc(fp.Handler, 12),
						trunc(fp.ErrorType, 22), age(g.LastSeen), trunc(fp.Message, errW))
				}
				fmt.Fprintf(w, "%s in %s\n", plural(letters, "letter"), plural(len(groups), "group"))
			}
			if letters == 0 {
				return nothingMatched("no letter in " + dlqTopic + " matched")
			}
			return nil
		},
	}
}

// payloadLimit is how much of a payload show prints without --full.
const payloadLimit = 4 << 10

// printable says whether p can go to a terminal as it is: UTF-8 without
// control characters other than tab and newlines (no escape sequences).
func printable(p []byte) bool {
	if !utf8.Valid(p) {
		return false
	}
	for _, r := range string(p) {
		if unicode.IsControl(r) && r != '\n' && r != '\t' && r != '\r' {
			return false
		}
	}
	return true
}

// writePayload prints p for a human: as text when printable, else as a hex
// dump; unless full, only its first payloadLimit bytes, saying how many
// were cut.
func writePayload(w io.Writer, p []byte, full bool) {
	if len(p) == 0 {
		fmt.Fprintln(w, "payload: empty")
		return
	}
	text := printable(p)
	shown := p
	if !full && len(p) > payloadLimit {
		if text {
			shown = []byte(textcut.Prefix(string(p), payloadLimit))
		} else {
			shown = p[:payloadLimit]
		}
	}
	kind := "text"
	if !text {
		kind = "binary, as a hex dump"
	}
	if cut := len(p) - len(shown); cut > 0 {
		fmt.Fprintf(w, "payload (%s, %s; the first %s shown, %s cut: --full shows all):\n",
			plural(len(p), "byte"), kind, plural(len(shown), "byte"), plural(cut, "byte"))
	} else {
		fmt.Fprintf(w, "payload (%s, %s):\n", plural(len(p), "byte"), kind)
	}
	if text {
		s := string(shown)
		fmt.Fprint(w, s)
		if !strings.HasSuffix(s, "\n") {
			fmt.Fprintln(w)
		}
		return
	}
	fmt.Fprint(w, hex.Dump(shown))
}

func newDLQShowCmd(f *dlqFlags) *cobra.Command {
	var full bool
	cmd := &cobra.Command{
		Use:   "show UUID",
		Short: "Show one dead letter whole: envelope, metadata and payload",
		Long: `Shows one dead letter: its envelope and metadata, then its payload. A payload
over 4 KiB is cut to its first 4 KiB, saying how many bytes were cut, unless
--full; a payload that is not printable text (not UTF-8, or with control
characters) is shown as a hex dump. --json prints the whole letter on one line,
its payload whole (as base64 in payload_base64 when it is not UTF-8). Exits 3
when the DLQ has no unresolved letter with that UUID.`,
		Example: `  antidote dlq show --topic orders 6f1c2a9e-3b0d-4c1e-9f7a-2d5b8e4a1c03
  antidote dlq show --topic orders --full 6f1c2a9e-3b0d-4c1e-9f7a-2d5b8e4a1c03 | less
  antidote dlq show --topic orders --json 6f1c2a9e-3b0d-4c1e-9f7a-2d5b8e4a1c03 | jq -r .payload`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			h, _, err := f.open(cmd.Context())
			if err != nil {
				return err
			}
			defer f.close(h)
			l, err := h.Show(cmd.Context(), f.topic, args[0])
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if f.jsonOut {
				return printJSON(w, view(l, true))
			}
			v := view(l, false)
			v.Metadata = l.Metadata
			b, err := json.MarshalIndent(v, "", "  ")
			if err != nil {
				return err
			}
			fmt.Fprintln(w, string(b))
			writePayload(w, l.Payload, full)
			if l.Problem != "" {
				fmt.Fprintln(w, "\nproblem: "+l.Problem)
			}
			if l.Stack != "" {
				fmt.Fprintln(w, "\nstack:\n"+l.Stack)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&full, "full", false, fmt.Sprintf("print the whole payload (default: its first %d bytes)", payloadLimit))
	return cmd
}

// confirm asks on the command's stdin unless yes is set.
func confirm(cmd *cobra.Command, yes bool, question string) error {
	if yes {
		return nil
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "%s [y/N] ", question)
	line, _ := bufio.NewReader(cmd.InOrStdin()).ReadString('\n')
	if a := strings.ToLower(strings.TrimSpace(line)); a == "y" || a == "yes" {
		return nil
	}
	return errors.New("aborted: nothing changed (pass --yes to skip the question)")
}

func newDLQReplayCmd(f *dlqFlags) *cobra.Command {
	var to string
	var dryRun, yes bool
	var rate float64
	cmd := &cobra.Command{
		Use:   "replay",
		Short: "Send dead letters back to their original topic (same UUID and idempotency key), rate-limited",
		Long: `Sends the dead letters the filters select back to their original topic (or
--to), with the same UUID and idempotency key, at --rate per second, and
resolves each once it is sent. Asks before it starts unless --yes. Exits 3
when no letter matched (with --dry-run too).`,
		Example: `  # How many would go?
  antidote dlq replay --topic orders --reason retries_exhausted --dry-run

  # Replay them, 20 per second, without the question
  antidote dlq replay --topic orders --reason retries_exhausted --rate 20 --yes

  # Replay into a staging topic instead
  antidote dlq replay --topic orders --to orders.staging --allow-replay-to orders.staging`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if to != "" && !slices.Contains(f.allowTo, to) {
				return usagef("--to %q is not in --allow-replay-to; list it there too (a typo must not route letters into another service)", to)
			}
			if rate < 0 {
				return usagef("--rate %v: use a positive number of replays per second", rate)
			}
			h, filter, err := f.open(cmd.Context())
			if err != nil {
				return err
			}
			defer f.close(h)
			from := h.DLQTopic(f.topic)
			plan, err := h.Replay(cmd.Context(), f.topic, filter, dlq.ReplayOptions{To: to, DryRun: true})
			if err != nil {
				return err
			}
			if plan.Matched == 0 {
				return noneMatched(cmd, f.jsonOut, plan, from, "replay")
			}
			if dryRun {
				return report(cmd, f.jsonOut, plan, fmt.Sprintf("would replay %s from %s", plural(plan.Matched, "letter"), from))
			}
			dest := "their original topics"
			if to != "" {
				dest = to
			}
			if err := confirm(cmd, yes, fmt.Sprintf("Replay %s from %s to %s?", plural(plan.Matched, "letter"), from, dest)); err != nil {
				return err
			}
			bar := newProgress(cmd.ErrOrStderr(), plan.Matched)
			res, err := h.Replay(cmd.Context(), f.topic, filter, dlq.ReplayOptions{To: to, Rate: rate, Progress: bar.set})
			bar.done()
			return treated(cmd, f.jsonOut, res, err, fmt.Sprintf("replayed %s from %s", plural(res.Replayed, "letter"), from))
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "replay to this topic instead of the original (must be in --allow-replay-to)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "count what would be replayed, change nothing")
	cmd.Flags().BoolVar(&yes, "yes", false, "do not ask for confirmation")
	cmd.Flags().Float64Var(&rate, "rate", 0, "replays per second (default 100)")
	return cmd
}

func newDLQPurgeCmd(f *dlqFlags) *cobra.Command {
	var dryRun, yes bool
	var uuids []string
	cmd := &cobra.Command{
		Use:   "purge",
		Short: "Remove dead letters without replaying them",
		Long: `Removes the dead letters the filters (and --uuid) select without replaying
them. Asks before it starts unless --yes. Exits 3 when no letter matched (with
--dry-run too).`,
		Example: `  antidote dlq purge --topic orders --reason undecodable --dry-run
  antidote dlq purge --topic orders --uuid 6f1c2a9e-3b0d-4c1e-9f7a-2d5b8e4a1c03 --yes
  antidote dlq purge --topic orders --until 720h --yes   # older than 30 days`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			h, filter, err := f.open(cmd.Context())
			if err != nil {
				return err
			}
			defer f.close(h)
			from := h.DLQTopic(f.topic)
			filter.UUIDs = uuids
			plan, err := h.Purge(cmd.Context(), f.topic, filter, true)
			if err != nil {
				return err
			}
			if plan.Matched == 0 {
				return noneMatched(cmd, f.jsonOut, plan, from, "purge")
			}
			if dryRun {
				return report(cmd, f.jsonOut, plan, fmt.Sprintf("would purge %s from %s", plural(plan.Matched, "letter"), from))
			}
			if err := confirm(cmd, yes, fmt.Sprintf("Purge %s from %s? They cannot be replayed afterwards.", plural(plan.Matched, "letter"), from)); err != nil {
				return err
			}
			res, err := h.Purge(cmd.Context(), f.topic, filter, false)
			return treated(cmd, f.jsonOut, res, err, fmt.Sprintf("purged %s from %s", plural(res.Purged, "letter"), from))
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "count what would be purged, change nothing")
	cmd.Flags().BoolVar(&yes, "yes", false, "do not ask for confirmation")
	cmd.Flags().StringSliceVar(&uuids, "uuid", nil, "only these letters")
	return cmd
}

// noneMatched reports an empty selection of replay or purge: exit code 3.
func noneMatched(cmd *cobra.Command, jsonOut bool, res dlq.Result, from, verb string) error {
	msg := fmt.Sprintf("no letter in %s matched: nothing to %s", from, verb)
	if err := report(cmd, jsonOut, res, msg); err != nil {
		return err
	}
	return nothingMatched(msg)
}

// treated reports what a replay or purge did: what it treated, the letters
// another treatment got first, each letter it left dead with why (exit code
// 5), and what stopped it.
func treated(cmd *cobra.Command, jsonOut bool, res dlq.Result, err error, text string) error {
	if res.Skipped > 0 {
		text += fmt.Sprintf("; %s skipped: another treatment got them first", plural(res.Skipped, "letter"))
	}
	if rerr := report(cmd, jsonOut, res, text); rerr != nil {
		return rerr
	}
	if !jsonOut {
		for _, fl := range res.Failed {
			fmt.Fprintf(cmd.OutOrStdout(), "left dead: %s: %s\n", fl.UUID, fl.Reason)
		}
	}
	if err != nil {
		return fmt.Errorf("%w (stopped after treating %s)", err, plural(res.Replayed+res.Purged, "letter"))
	}
	return res.Err()
}

func report(cmd *cobra.Command, jsonOut bool, res dlq.Result, text string) error {
	if jsonOut {
		return printJSON(cmd.OutOrStdout(), res)
	}
	_, err := fmt.Fprintln(cmd.OutOrStdout(), text)
	return err
}

// progress draws a bar on a terminal; elsewhere it stays silent.
type progress struct {
	w     io.Writer
	total int
	on    bool
}

func newProgress(w io.Writer, total int) *progress {
	f, ok := w.(*os.File)
	on := false
	if ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			on = true
		}
	}
	return &progress{w: w, total: total, on: on && total > 0}
}

func (p *progress) set(done int) {
	if !p.on {
		return
	}
	const width = 40
	filled := done * width / p.total
	fmt.Fprintf(p.w, "\r[%s%s] %d/%d", strings.Repeat("=", filled), strings.Repeat(" ", width-filled), done, p.total)
}

func (p *progress) done() {
	if p.on {
		fmt.Fprintln(p.w)
	}
}
