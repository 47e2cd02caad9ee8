package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/hospital"
	"github.com/antidote-mq/antidote/hospital/web"
	"github.com/antidote-mq/antidote/pgstore"
	"github.com/antidote-mq/antidote/poison"
)

// The environment of antidote hospital.
const (
	envHospitalURL   = "ANTIDOTE_HOSPITAL_URL"
	envHospitalToken = "ANTIDOTE_HOSPITAL_TOKEN"
)

// hospitalFlags are shared by the hospital subcommands (and antidote dlq,
// which reads the same configuration).
type hospitalFlags struct {
	config, broker, table string
	// claimCheck is --claim-check; claims is the claim-check store's
	// configuration once load has read it.
	claimCheck string
	claims     claimCheckConfig
}

func newHospitalCmd() *cobra.Command {
	f := &hospitalFlags{}
	cmd := &cobra.Command{
		Use:   "hospital",
		Short: "The message hospital as a service: ingest every DLQ into a store, serve its web UI",
		Long: `The message hospital keeps dead letters in a PostgreSQL store, grouped by cause
(fingerprint), for the web UI and its JSON API.

  ingest  consumes DLQ topics of the configured broker into the store
  serve   serves the web UI: groups by recent rate, letters, replay and purge

The store is ` + envHospitalURL + ` (a PostgreSQL URL), or hospital.url in the
--config file; the broker comes from the same ANTIDOTE_* env and --config file
as the services (and ` + "`antidote dlq`" + `). Letters too large for their DLQ keep
their payload in the services' claim-check store: name it with --claim-check
postgres|redis (or ` + envClaimCheck + `, or claim_check.store in --config) and
ingest stores them whole, serve shows them whole.

` + exitCodesHelp,
		Example: `  export ANTIDOTE_HOSPITAL_URL=postgres://hospital@db:5432/hospital
  export ANTIDOTE_BROKER=kafka ANTIDOTE_KAFKA_BROKERS=kafka:9092

  # Take in what the DLQs hold now, then keep following them
  antidote hospital ingest --topics orders.dlq,payments.dlq
  antidote hospital ingest --topics orders.dlq,payments.dlq --follow

  # The web UI on this machine only (no token needed on loopback)
  antidote hospital serve --addr 127.0.0.1:8080`,
		Args: subcommandArgs,
		RunE: showHelp,
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&f.config, "config", "", "YAML config: the adapters' keys, hospital.url and claim_check (ANTIDOTE_* env overrides it)")
	pf.StringVar(&f.broker, "broker", "", "kafka, amqp or postgres (default: ANTIDOTE_BROKER or the config)")
	pf.StringVar(&f.table, "table", pgstore.DefaultHospitalTable, "name prefix of the store's tables (<prefix>_letters, ...), optionally schema-qualified")
	pf.StringVar(&f.claimCheck, "claim-check", "", claimCheckUsage)
	cmd.AddCommand(newHospitalIngestCmd(f), newHospitalServeCmd(f))
	return cmd
}

// load reads the adapters' config, the store's URL and the claim-check
// store's configuration (f.claims): the --config file (its hospital and
// claim_check sections set aside for the adapters' strict parser), then
// the environment over it, then the flags.
func (f *hospitalFlags) load() (adapters.Config, string, error) {
	cfg, storeURL, err := f.loadOptional()
	if err == nil && storeURL == "" {
		err = usagef("no hospital store: set %s to a PostgreSQL URL (or hospital.url in --config)", envHospitalURL)
	}
	return cfg, storeURL, err
}

// loadOptional is load for commands that work with or without a store
// (antidote dlq): storeURL is "" when none is configured.
func (f *hospitalFlags) loadOptional() (adapters.Config, string, error) {
	var cfg adapters.Config
	var storeURL string
	f.claims = claimCheckConfig{}
	if f.config != "" {
		data, err := os.ReadFile(f.config)
		if err != nil {
			return cfg, "", usagef("--config: %v", err)
		}
		rest, u, err := splitHospitalYAML(data)
		if err != nil {
			return cfg, "", usagef("%s: %v", f.config, err)
		}
		if rest, f.claims, err = splitClaimCheckYAML(rest); err != nil {
			return cfg, "", usagef("%s: %v", f.config, err)
		}
		if cfg, err = adapters.ParseYAML(rest); err != nil {
			return cfg, "", usagef("%s: %v", f.config, err)
		}
		storeURL = u
	}
	if err := cfg.ApplyEnv(os.LookupEnv); err != nil {
		return cfg, "", usageErr(err)
	}
	if err := f.claims.resolve(f.config, f.claimCheck); err != nil {
		return cfg, "", err
	}
	if v := os.Getenv(envHospitalURL); v != "" {
		storeURL = v
	}
	if f.broker != "" {
		if !slices.Contains(hospitalBrokers, adapters.Kind(f.broker)) {
			return cfg, "", usagef("--broker %q: use one of: %s", f.broker, joinKinds(hospitalBrokers))
		}
		cfg.Broker = adapters.Kind(f.broker)
	}
	if storeURL == "" {
		return cfg, "", nil
	}
	return cfg, storeURL, checkStoreURL(storeURL)
}

func checkStoreURL(storeURL string) error {
	if u, err := url.Parse(storeURL); err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return usagef("%s %q is not a PostgreSQL URL; use e.g. postgres://user@host:5432/db", envHospitalURL, adapters.Redact(storeURL))
	}
	return nil
}

// splitHospitalYAML takes the top-level hospital section out of a config
// file (blanking its lines, so the adapters' errors keep their line
// numbers) and returns the rest and hospital.url.
func splitHospitalYAML(data []byte) ([]byte, string, error) {
	var section struct {
		URL string `yaml:"url"`
	}
	rest, _, err := cutSection(data, "hospital", []string{"url"}, &section)
	return rest, section.URL, err
}

// openClaims opens the claim-check store load read (nil, and a no-op
// close, when none is configured).
func (f *hospitalFlags) openClaims(ctx context.Context, cfg adapters.Config) (poison.ClaimCheck, func() error, error) {
	return f.claims.open(ctx, cfg)
}

// openStore connects to the hospital store; a store that does not answer
// is exit code 4.
func (f *hospitalFlags) openStore(ctx context.Context, storeURL string) (*pgstore.HospitalStore, error) {
	s, err := pgstore.NewHospitalStore(ctx, pgstore.HospitalStoreConfig{URL: storeURL, Table: f.table})
	if err != nil {
		return nil, &codedError{code: exitUnreachable, err: fmt.Errorf("hospital store %s: %w", adapters.Redact(storeURL), err)}
	}
	return s, nil
}

func newHospitalIngestCmd(f *hospitalFlags) *cobra.Command {
	var topics []string
	var asIs bool
	var follow bool
	var idle time.Duration
	var group string
	cmd := &cobra.Command{
		Use:   "ingest --topics a.dlq,b.dlq",
		Short: "Consume DLQ topics into the hospital store",
		Long: `Consumes the DLQ topics of the configured broker, all at once, into the hospital
store. A letter is acked only after its row is committed; a letter delivered
twice is stored once. Without --follow it drains: it returns once no letter
has arrived for --idle. Letters of Watermill's PoisonQueue and of foreign
producers are stored too; a malformed one is stored with its problem noted.

On Kafka it reads as its own consumer group (--group), so the services'
offsets are untouched.`,
		Example: `  # Drain what the DLQs hold now, then exit
  antidote hospital ingest --topics orders.dlq,payments.dlq

  # Keep following them (a service of its own)
  antidote hospital ingest --topics orders.dlq,payments.dlq --follow

  # From RabbitMQ, with the store in the config file
  ANTIDOTE_BROKER=amqp antidote hospital ingest --config antidote.yaml --topics orders.dlq`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			var clean []string
			for _, t := range topics {
				if t = strings.TrimSpace(t); t == "" {
					continue
				}
				// A source topic stands for its DLQ, as DeadLetter names it.
				if !asIs && !strings.HasSuffix(t, antidote.DeadLetterSuffix) {
					t = antidote.DLQTopic(t)
				}
				clean = append(clean, t)
			}
			if len(clean) == 0 {
				return usagef("--topics is required: name the DLQ topics to ingest, e.g. --topics orders.dlq")
			}
			if idle <= 0 {
				return usagef("--idle %s: use a positive duration such as 5s (or --follow)", idle)
			}
			cfg, storeURL, err := f.load()
			if err != nil {
				return err
			}
			if cfg.Broker == "" {
				return usagef("no broker: set ANTIDOTE_BROKER (or broker in --config, or --broker)")
			}
			if group != "" {
				cfg.Kafka.ConsumerGroup = group
			}
			checked := cfg
			checked.SetDefaults()
			if err := checked.Validate(); err != nil {
				return usageErr(err)
			}
			ctx := cmd.Context()
			store, err := f.openStore(ctx, storeURL)
			if err != nil {
				return err
			}
			defer store.Close()
			// Claim-checked letters are stored whole: their payload is read
			// from the services' claim-check store as they are ingested.
			claims, closeClaims, err := f.openClaims(ctx, cfg)
			if err != nil {
				return err
			}
			defer closeClaims()
			logger := watermill.NewStdLoggerWithOut(cmd.ErrOrStderr(), false, false)
			b, err := adapters.Open(ctx, cfg, logger)
			if err != nil {
				return err
			}
			defer b.Close()
			icfg := hospital.IngestConfig{Subscriber: b.LetterSubscriber(), Store: store, Topics: clean, Broker: string(cfg.Broker), Logger: logger, ClaimCheck: claims}
			if !follow {
				icfg.Idle = idle
			}
			mode := "draining"
			if follow {
				mode = "following"
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "antidote hospital: %s %s on %s (%s) into %s; claim-check store: %s\n", mode, strings.Join(clean, ", "), cfg.Broker, b.Addr, adapters.Redact(storeURL), f.claims.name())
			stats, err := hospital.Ingest(ctx, icfg)
			fmt.Fprintf(cmd.OutOrStdout(), "%s received: %d new, %d already stored, %d with a problem\n",
				plural(int(stats.Received), "letter"), stats.Stored, stats.Duplicates, stats.Problems)
			return err
		},
	}
	cmd.Flags().StringSliceVar(&topics, "topics", nil, "the DLQ topics to ingest, comma-separated (required): DLQ names (orders.dlq), or source topics, which stand for their DLQ (orders means orders.dlq)")
	cmd.Flags().BoolVar(&asIs, "as-is", false, "take every --topics name as the DLQ topic itself (DLQs named otherwise than <topic>.dlq)")
	cmd.Flags().BoolVar(&follow, "follow", false, "keep running and ingest letters as they arrive")
	cmd.Flags().DurationVar(&idle, "idle", 5*time.Second, "without --follow: return once no letter arrived for this long (too short on Kafka returns before the group joined)")
	cmd.Flags().StringVar(&group, "group", "antidote-hospital", "Kafka consumer group of the ingester")
	return cmd
}

func newHospitalServeCmd(f *hospitalFlags) *cobra.Command {
	var addr, jaeger string
	cmd := &cobra.Command{
		Use:   "serve --addr HOST:PORT",
		Short: "Serve the hospital's web UI and JSON API",
		Long: `Serves the message hospital's web UI: dead-letter groups sorted by recent rate
with sparklines, a group's letters, a letter's envelope, payload, trace and
history, and replay and purge of a group or a letter, each behind a page that
says what will happen. Beside it: GET /api/groups, /api/groups/{fingerprint}/letters,
/api/letters/{id}, and /metrics (per-group Prometheus gauges).

Access: ` + envHospitalToken + ` (at least 16 characters) is asked for by the
login page, or sent as "Authorization: Bearer <token>". Without it, serve
listens on loopback only (127.0.0.1, ::1, localhost): anything else is refused
(exit code 2). Replays go through the configured broker; without one
(ANTIDOTE_BROKER unset) the UI only browses and purges.`,
		Example: `  # On this machine only
  antidote hospital serve --addr 127.0.0.1:8080

  # For the team, behind TLS termination, traces linked to Jaeger
  ANTIDOTE_HOSPITAL_TOKEN=$(cat /run/secrets/hospital-token) \
    antidote hospital serve --addr 0.0.0.0:8080 --jaeger-url https://jaeger.example.com

  # The API
  curl -H "Authorization: Bearer $ANTIDOTE_HOSPITAL_TOKEN" http://127.0.0.1:8080/api/groups`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			token := os.Getenv(envHospitalToken)
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				return usagef("--addr %q: use HOST:PORT, e.g. 127.0.0.1:8080", addr)
			}
			if token == "" && !loopback(host) {
				return usagef("--addr %s listens beyond this machine, and %s is unset: set it to a random secret (openssl rand -hex 32), or listen on 127.0.0.1", addr, envHospitalToken)
			}
			if token != "" && len(token) < web.MinTokenLength {
				return usagef("%s has %d characters, fewer than %d: use a random secret (openssl rand -hex 32)", envHospitalToken, len(token), web.MinTokenLength)
			}
			cfg, storeURL, err := f.load()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			logger := watermill.NewStdLoggerWithOut(cmd.ErrOrStderr(), false, false)
			store, err := f.openStore(ctx, storeURL)
			if err != nil {
				return err
			}
			defer store.Close()
			// Letters ingested before the claim-check store was configured
			// are shown whole, read from it on show.
			claims, closeClaims, err := f.openClaims(ctx, cfg)
			if err != nil {
				return err
			}
			defer closeClaims()
			wcfg := web.Config{Store: store, Token: token, JaegerURL: jaeger, Logger: logger, ClaimCheck: claims}
			if cfg.Broker != "" {
				b, err := adapters.Open(ctx, cfg, logger)
				if err != nil {
					return err
				}
				defer b.Close()
				wcfg.Publisher = b.Publisher
			} else {
				fmt.Fprintln(cmd.ErrOrStderr(), "antidote hospital: no broker configured (ANTIDOTE_BROKER): replay is off")
			}
			reg := prometheus.NewRegistry()
			reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
			wcfg.Registerer = reg
			h, err := web.New(wcfg)
			if err != nil {
				return usageErr(err)
			}
			srv := &http.Server{Addr: addr, Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "antidote hospital: serving http://%s (store %s; claim-check store: %s)\n", ln.Addr(), adapters.Redact(storeURL), f.claims.name())
			done := make(chan error, 1)
			go func() { done <- srv.Serve(ln) }()
			select {
			case err := <-done:
				return err
			case <-ctx.Done():
				shut, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				err := srv.Shutdown(shut)
				if serveErr := <-done; !errors.Is(serveErr, http.ErrServerClosed) {
					return serveErr
				}
				return err
			}
		},
	}
	cmd.Flags().StringVar(&addr, "addr", "127.0.0.1:8080", "HOST:PORT to listen on; beyond loopback only with "+envHospitalToken+" set")
	cmd.Flags().StringVar(&jaeger, "jaeger-url", "", "the Jaeger UI's URL: letters' traces link to it (e.g. http://127.0.0.1:16686)")
	return cmd
}

// loopback: host names this machine only. An empty host listens on every
// interface.
func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
