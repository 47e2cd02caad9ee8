package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/spf13/cobra"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/dlq"
	"github.com/antidote-mq/antidote/pgstore"
	"github.com/antidote-mq/antidote/poison"
	"github.com/antidote-mq/antidote/redisstore"
	"github.com/antidote-mq/antidote/telemetry"
)

// dlqFlags are shared by every dlq subcommand.
type dlqFlags struct {
	topic, config, broker         string
	reasons, handlers, errorTypes []string
	since, until                  string
	jsonOut                       bool
	allowTo                       []string
	claimCheck                    string
	shutdown                      func(context.Context) error
	closeClaims                   func() error
}

func newDLQCmd() *cobra.Command {
	f := &dlqFlags{}
	cmd := &cobra.Command{
		Use:   "dlq",
		Short: "The message hospital: list, group, show, replay and purge dead letters",
		Long: `Inspects and treats the dead letters of a topic (its DLQ, "<topic>.dlq").
The broker comes from the same ANTIDOTE_* env and --config file as the services.
On RabbitMQ and PostgreSQL, replay and purge remove letters; on Kafka they move
the hospital's own consumer-group offset on the DLQ topic.`,
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&f.topic, "topic", "", "the original topic whose DLQ is inspected (required)")
	pf.StringVar(&f.config, "config", "", "adapters YAML config (ANTIDOTE_* env overrides it)")
	pf.StringVar(&f.broker, "broker", "", "kafka, amqp or postgres (default: ANTIDOTE_BROKER or the config)")
	pf.StringSliceVar(&f.reasons, "reason", nil, "only letters with this reason (repeatable or comma-separated)")
	pf.StringSliceVar(&f.handlers, "handler", nil, "only letters from this handler")
	pf.StringSliceVar(&f.errorTypes, "error-type", nil, "only letters with this Go error type, e.g. *json.SyntaxError")
	pf.StringVar(&f.since, "since", "", "only letters that last failed at or after this (RFC 3339, or a duration ago such as 24h)")
	pf.StringVar(&f.until, "until", "", "only letters that last failed at or before this (RFC 3339, or a duration ago)")
	pf.BoolVar(&f.jsonOut, "json", false, "one JSON object per line")
	pf.StringSliceVar(&f.allowTo, "allow-replay-to", nil, "topics replay --to may target besides the original")
	pf.StringVar(&f.claimCheck, "claim-check", "", "where the services keep payloads too large for the DLQ: postgres (postgres.url, ANTIDOTE_POSTGRES_URL) or redis (ANTIDOTE_REDIS_ADDR); show and replay read them back")
	cmd.AddCommand(newDLQListCmd(f), newDLQGroupCmd(f), newDLQShowCmd(f), newDLQReplayCmd(f), newDLQPurgeCmd(f))
	return cmd
}

func (f *dlqFlags) open(ctx context.Context) (*dlq.Hospital, dlq.Filter, error) {
	if f.topic == "" {
		return nil, dlq.Filter{}, errors.New("--topic is required: name the original topic whose DLQ to inspect")
	}
	filter, err := f.filter()
	if err != nil {
		return nil, filter, err
	}
	cfg, err := adapters.LoadConfig(f.config)
	if err != nil {
		return nil, filter, err
	}
	if f.broker != "" {
		cfg.Broker = adapters.Kind(f.broker)
	}
	// Replays get a producer span of their own (a new trace linked to the
	// letter's original one) when OTEL_EXPORTER_OTLP_ENDPOINT is set.
	tel, err := telemetry.Setup(ctx, telemetry.SetupConfig{ServiceName: "antidote-dlq"})
	if err != nil {
		return nil, filter, err
	}
	f.shutdown = tel.Shutdown
	claims, err := f.openClaims(ctx, cfg)
	if err != nil {
		return nil, filter, err
	}
	h, err := dlq.Open(ctx, dlq.Config{Adapters: cfg, AllowReplayTo: f.allowTo, ClaimCheck: claims,
		WrapPublisher: func(p message.Publisher) (message.Publisher, error) {
			return telemetry.NewPublisher(p, telemetry.PublisherConfig{TracerProvider: tel.TracerProvider, System: cfg.Broker.MessagingSystem()})
		}})
	return h, filter, err
}

// list opens the hospital, lists the letters the filters select, and closes it.
func (f *dlqFlags) list(ctx context.Context) ([]poison.Letter, string, error) {
	h, filter, err := f.open(ctx)
	if err != nil {
		return nil, "", err
	}
	defer f.close(h)
	letters, err := h.List(ctx, f.topic, filter)
	return letters, h.DLQTopic(f.topic), err
}

// openClaims opens the claim-check store --claim-check names, if any.
func (f *dlqFlags) openClaims(ctx context.Context, cfg adapters.Config) (poison.ClaimCheck, error) {
	switch f.claimCheck {
	case "":
		return nil, nil
	case "postgres":
		url := cfg.Postgres.URL
		if url == "" {
			url = adapters.DefaultPostgresURL
		}
		st, err := pgstore.NewClaimCheckStore(ctx, pgstore.ClaimCheckStoreConfig{URL: url})
		if err != nil {
			return nil, fmt.Errorf("--claim-check postgres: %w", err)
		}
		f.closeClaims = st.Close
		return st, nil
	case "redis":
		addr := os.Getenv("ANTIDOTE_REDIS_ADDR")
		if addr == "" {
			addr = "127.0.0.1:6379"
		}
		st, err := redisstore.NewClaimCheckStore(redisstore.ClaimCheckStoreConfig{Addr: addr})
		if err != nil {
			return nil, fmt.Errorf("--claim-check redis: %w", err)
		}
		f.closeClaims = st.Close
		return st, nil
	default:
		return nil, fmt.Errorf("--claim-check %q: use postgres or redis", f.claimCheck)
	}
}

// close releases the hospital and flushes telemetry.
func (f *dlqFlags) close(h *dlq.Hospital) {
	_ = h.Close()
	if f.closeClaims != nil {
		_ = f.closeClaims()
	}
	if f.shutdown != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = f.shutdown(ctx)
	}
}

func (f *dlqFlags) filter() (dlq.Filter, error) {
	var out dlq.Filter
	for _, r := range f.reasons {
		out.Reasons = append(out.Reasons, poison.Reason(r))
	}
	out.Handlers, out.ErrorTypes = f.handlers, f.errorTypes
	var err error
	if out.Since, err = parseWhen("--since", f.since); err != nil {
		return out, err
	}
	out.Until, err = parseWhen("--until", f.until)
	return out, err
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
	OriginalPartition *int32            `json:"original_partition,omitempty"`
	OriginalOffset    *int64            `json:"original_offset,omitempty"`
	Error             string            `json:"error,omitempty"`
	ErrorType         string            `json:"error_type,omitempty"`
	Attempts          int               `json:"attempts,omitempty"`
	FirstFailedAt     *time.Time        `json:"first_failed_at,omitempty"`
	LastFailedAt      *time.Time        `json:"last_failed_at,omitempty"`
	ReplayCount       int               `json:"replay_count,omitempty"`
	Payload           *string           `json:"payload,omitempty"`
	PayloadBase64     []byte            `json:"payload_base64,omitempty"`
	Metadata          map[string]string `json:"metadata,omitempty"`
}

func view(l poison.Letter, full bool) letterView {
	v := letterView{UUID: l.UUID, Reason: string(l.Reason), Handler: l.Handler, ConsumerGroup: l.ConsumerGroup,
		OriginalTopic: l.OriginalTopic, Error: l.Error, ErrorType: l.ErrorType, Attempts: l.Attempts, ReplayCount: l.ReplayCount}
	if l.HasOffset {
		v.OriginalPartition, v.OriginalOffset = &l.OriginalPartition, &l.OriginalOffset
	}
	if !l.FirstFailedAt.IsZero() {
		v.FirstFailedAt = &l.FirstFailedAt
	}
	if !l.LastFailedAt.IsZero() {
		v.LastFailedAt = &l.LastFailedAt
	}
	if full {
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

// trunc fits s into n columns, marking the cut.
func trunc(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
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
		Args:  cobra.NoArgs,
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
				return nil
			}
			// 36 + 1 + 17 + 1 + 12 + 1 + 4 + 1 + 27 = 100 columns.
			fmt.Fprintf(w, "%-36s %-17s %-12s %4s %s\n", "UUID", "REASON", "HANDLER", "AGE", "ERROR")
			for _, l := range letters {
				fmt.Fprintf(w, "%-36s %-17s %-12s %4s %s\n", trunc(l.UUID, 36), trunc(string(l.Reason), 17), trunc(l.Handler, 12), age(l.LastFailedAt), trunc(l.Error, 27))
			}
			fmt.Fprintf(w, "%d letters in %s\n", len(letters), dlqTopic)
			return nil
		},
	}
}

func newDLQGroupCmd(f *dlqFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "group",
		Short: "Group dead letters by cause: handler, reason, error type, normalized error",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			letters, _, err := f.list(cmd.Context())
			if err != nil {
				return err
			}
			groups := dlq.GroupLetters(letters)
			w := cmd.OutOrStdout()
			if f.jsonOut {
				for _, g := range groups {
					if err := printJSON(w, g); err != nil {
						return err
					}
				}
				return nil
			}
			// 6 + 1 + 17 + 1 + 12 + 1 + 22 + 1 + 39 = 100 columns.
			fmt.Fprintf(w, "%6s %-17s %-12s %-22s %s\n", "COUNT", "REASON", "HANDLER", "ERROR TYPE", "ERROR")
			for _, g := range groups {
				fmt.Fprintf(w, "%6d %-17s %-12s %-22s %s\n", g.Count, trunc(string(g.Reason), 17), trunc(g.Handler, 12), trunc(g.ErrorType, 22), trunc(g.Error, 39))
			}
			fmt.Fprintf(w, "%d letters in %d groups\n", len(letters), len(groups))
			return nil
		},
	}
}

func newDLQShowCmd(f *dlqFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "show UUID",
		Short: "Show one dead letter whole: envelope, metadata and payload",
		Args:  cobra.ExactArgs(1),
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
			if f.jsonOut {
				return printJSON(cmd.OutOrStdout(), view(l, true))
			}
			b, err := json.MarshalIndent(view(l, true), "", "  ")
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), string(b))
			if l.Stack != "" {
				fmt.Fprintln(cmd.OutOrStdout(), "\nstack:\n"+l.Stack)
			}
			return nil
		},
	}
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
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			h, filter, err := f.open(cmd.Context())
			if err != nil {
				return err
			}
			defer f.close(h)
			plan, err := h.Replay(cmd.Context(), f.topic, filter, dlq.ReplayOptions{To: to, DryRun: true})
			if err != nil {
				return err
			}
			if dryRun || plan.Matched == 0 {
				return report(cmd, f.jsonOut, plan, fmt.Sprintf("would replay %d letters from %s", plan.Matched, h.DLQTopic(f.topic)))
			}
			dest := "their original topics"
			if to != "" {
				dest = to
			}
			if err := confirm(cmd, yes, fmt.Sprintf("Replay %d letters from %s to %s?", plan.Matched, h.DLQTopic(f.topic), dest)); err != nil {
				return err
			}
			bar := newProgress(cmd.ErrOrStderr(), plan.Matched)
			res, err := h.Replay(cmd.Context(), f.topic, filter, dlq.ReplayOptions{To: to, Rate: rate, Progress: bar.set})
			bar.done()
			if err != nil {
				return fmt.Errorf("%w (replayed %d before the error)", err, res.Replayed)
			}
			return report(cmd, f.jsonOut, res, fmt.Sprintf("replayed %d letters from %s", res.Replayed, h.DLQTopic(f.topic)))
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
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			h, filter, err := f.open(cmd.Context())
			if err != nil {
				return err
			}
			defer f.close(h)
			filter.UUIDs = uuids
			plan, err := h.Purge(cmd.Context(), f.topic, filter, true)
			if err != nil {
				return err
			}
			if dryRun || plan.Matched == 0 {
				return report(cmd, f.jsonOut, plan, fmt.Sprintf("would purge %d letters from %s", plan.Matched, h.DLQTopic(f.topic)))
			}
			if err := confirm(cmd, yes, fmt.Sprintf("Purge %d letters from %s? They cannot be replayed afterwards.", plan.Matched, h.DLQTopic(f.topic))); err != nil {
				return err
			}
			res, err := h.Purge(cmd.Context(), f.topic, filter, false)
			if err != nil {
				return err
			}
			return report(cmd, f.jsonOut, res, fmt.Sprintf("purged %d letters from %s", res.Purged, h.DLQTopic(f.topic)))
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "count what would be purged, change nothing")
	cmd.Flags().BoolVar(&yes, "yes", false, "do not ask for confirmation")
	cmd.Flags().StringSliceVar(&uuids, "uuid", nil, "only these letters")
	return cmd
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
