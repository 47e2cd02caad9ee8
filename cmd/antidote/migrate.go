package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/outbox"
	"github.com/antidote-mq/antidote/pgstore"
)

// envPostgresURL is where the services' PostgreSQL stores are (the
// adapters' postgres.url).
const envPostgresURL = "ANTIDOTE_POSTGRES_URL"

// migrateConnectTimeout bounds the first connection: a database that does
// not answer within it is exit code 4.
const migrateConnectTimeout = 10 * time.Second

// migrateComponents are the kinds of tables antidote migrate knows, in the
// order it migrates them.
var migrateComponents = []string{"deliveries", "idempotency", "claimcheck", "hospital", "outbox"}

// migrateTarget is one set of tables: how to read and apply its pending
// migrations.
type migrateTarget struct {
	component, table string
	pending          func(context.Context) ([]pgstore.Migration, error)
	migrate          func(context.Context) ([]pgstore.Migration, error)
	close            func()
}

func newMigrateCmd() *cobra.Command {
	var dbURL string
	var dryRun bool
	tables := map[string]*[]string{}
	defaults := map[string]string{
		"deliveries":  pgstore.DefaultDeliveryTrackerTable,
		"idempotency": pgstore.DefaultIdempotencyStoreTable,
		"claimcheck":  pgstore.DefaultClaimCheckStoreTable,
		"hospital":    pgstore.DefaultHospitalTable,
		"outbox":      outbox.DefaultTable,
	}
	cmd := &cobra.Command{
		Use:   "migrate [deliveries|idempotency|claimcheck|hospital|outbox ...]",
		Short: "Create or upgrade the PostgreSQL tables Antidote owns, or print the SQL (--dry-run)",
		Long: `Applies the pending schema migrations of the PostgreSQL tables Antidote owns:
the delivery tracker's, the idempotency store's, the claim-check store's, the
hospital's and the outbox's (name them as arguments; none: all five). Each
set of tables has a version, recorded in antidote_schema_versions in its
schema; tables made before versions existed are adopted (version 1 is the
schema they were made with) and upgraded. All of a set's pending steps run
in one transaction under the advisory lock the services take on start, so
running it beside starting services, or twice, is safe.

The services migrate their own tables on start unless told not to
(SkipCreateTable, RelayConfig.SkipCreateTables); this command is for teams
that run schema changes themselves, with their own privileges.

--dry-run prints the SQL that would run and changes nothing. Tables at a
version newer than this binary knows are refused (exit 1), never downgraded.

The queue tables of the PostgreSQL adapter (one per topic) belong to
watermill-sql, which creates them on first use; they are not migrated here.

` + exitCodesHelp,
		Example: `  # What would change? (prints SQL, applies nothing)
  antidote migrate --postgres-url postgres://admin@db:5432/app --dry-run

  # Apply, for the tracker and the outbox only, with their configured names
  antidote migrate deliveries outbox --deliveries-table ops.deliveries --outbox-table ops.outbox`,
		Args: usageArgs(func(_ *cobra.Command, args []string) error {
			for _, a := range args {
				if !slices.Contains(migrateComponents, a) {
					return fmt.Errorf("unknown tables %q; use some of: %s", a, strings.Join(migrateComponents, ", "))
				}
			}
			return nil
		}),
		RunE: func(cmd *cobra.Command, args []string) error {
			if dbURL == "" {
				dbURL = os.Getenv(envPostgresURL)
			}
			if dbURL == "" {
				return usagef("no database: set --postgres-url or %s to a PostgreSQL URL such as postgres://user@host:5432/db", envPostgresURL)
			}
			if u, err := url.Parse(dbURL); err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
				return usagef("--postgres-url %q is not a PostgreSQL URL; use e.g. postgres://user@host:5432/db", adapters.Redact(dbURL))
			}
			if len(args) == 0 {
				args = migrateComponents
			}
			for c, ts := range tables {
				if !slices.Contains(args, c) && cmd.Flags().Changed(c+"-table") {
					return usagef("--%s-table given, but %s is not among the tables to migrate (%s)", c, c, strings.Join(args, ", "))
				}
				for _, t := range *ts {
					if t == "" {
						return usagef("--%s-table is empty; name the table, or leave the flag out for %q", c, defaults[c])
					}
				}
			}
			return runMigrate(cmd.Context(), cmd.OutOrStdout(), dbURL, args, tables, dryRun)
		},
	}
	f := cmd.Flags()
	f.StringVar(&dbURL, "postgres-url", "", "the database (default "+envPostgresURL+")")
	f.BoolVar(&dryRun, "dry-run", false, "print the pending SQL and apply nothing")
	for _, c := range migrateComponents {
		ts := &[]string{}
		tables[c] = ts
		f.StringSliceVar(ts, c+"-table", []string{defaults[c]}, "the "+c+" table"+map[bool]string{true: " prefix", false: ""}[c == "hospital"]+" as the services configure it, optionally schema-qualified; repeat for several")
	}
	return cmd
}

func runMigrate(ctx context.Context, out io.Writer, dbURL string, components []string, tables map[string]*[]string, dryRun bool) error {
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		return usagef("--postgres-url %s: %v", adapters.Redact(dbURL), err)
	}
	defer pool.Close()
	pctx, cancel := context.WithTimeout(ctx, migrateConnectTimeout)
	err = pool.Ping(pctx)
	cancel()
	if err != nil {
		return &codedError{code: exitUnreachable, err: fmt.Errorf("database %s did not answer: %w", adapters.Redact(dbURL), err)}
	}
	var targets []migrateTarget
	defer func() {
		for _, t := range targets {
			t.close()
		}
	}()
	for _, c := range migrateComponents {
		if !slices.Contains(components, c) {
			continue
		}
		for _, table := range *tables[c] {
			t, err := openMigrateTarget(ctx, pool, c, table)
			if err != nil {
				return usageErr(err)
			}
			targets = append(targets, t)
		}
	}
	total := 0
	for _, t := range targets {
		pending, err := t.pending(ctx)
		if err != nil {
			return err
		}
		if len(pending) == 0 {
			fmt.Fprintf(out, "-- %s %s: up to date\n", t.component, t.table)
			continue
		}
		if !dryRun {
			if pending, err = t.migrate(ctx); err != nil {
				return err
			}
			if len(pending) == 0 { // another migrator was first
				fmt.Fprintf(out, "-- %s %s: up to date\n", t.component, t.table)
				continue
			}
		}
		verb := "pending"
		if !dryRun {
			verb = "applied"
		}
		for _, m := range pending {
			fmt.Fprintf(out, "-- %s %s: version %d %s: %s\n%s;\n\n", t.component, t.table, m.Version, verb, m.Description, strings.TrimRight(m.SQL, ";\n"))
		}
		total += len(pending)
	}
	switch {
	case dryRun:
		fmt.Fprintf(out, "-- dry run: %d migrations pending, nothing applied\n", total)
	default:
		fmt.Fprintf(out, "-- %d migrations applied\n", total)
	}
	return nil
}

// openMigrateTarget builds component's store on pool without migrating it.
func openMigrateTarget(ctx context.Context, pool *pgxpool.Pool, component, table string) (migrateTarget, error) {
	t := migrateTarget{component: component, table: table, close: func() {}}
	type store interface {
		PendingMigrations(context.Context) ([]pgstore.Migration, error)
		Migrate(context.Context) ([]pgstore.Migration, error)
		Close() error
	}
	var s store
	var err error
	switch component {
	case "deliveries":
		s, err = pgstore.NewDeliveryTracker(ctx, pgstore.DeliveryTrackerConfig{Pool: pool, Table: table, SkipCreateTable: true, CleanupInterval: -1})
	case "idempotency":
		s, err = pgstore.NewIdempotencyStore(ctx, pgstore.IdempotencyStoreConfig{Pool: pool, Table: table, SkipCreateTable: true, CleanupInterval: -1})
	case "claimcheck":
		s, err = pgstore.NewClaimCheckStore(ctx, pgstore.ClaimCheckStoreConfig{Pool: pool, Table: table, SkipCreateTable: true})
	case "hospital":
		s, err = pgstore.NewHospitalStore(ctx, pgstore.HospitalStoreConfig{Pool: pool, Table: table, SkipCreateTable: true})
	case "outbox":
		o, err := outbox.New(outbox.Config{Table: table})
		if err != nil {
			return t, fmt.Errorf("--outbox-table: %w", err)
		}
		t.pending = func(ctx context.Context) ([]pgstore.Migration, error) { return o.PendingMigrations(ctx, pool) }
		t.migrate = func(ctx context.Context) ([]pgstore.Migration, error) { return o.Migrate(ctx, pool) }
		return t, nil
	default:
		return t, errors.New("unknown tables " + component)
	}
	if err != nil {
		return t, fmt.Errorf("--%s-table: %w", component, err)
	}
	t.pending, t.migrate, t.close = s.PendingMigrations, s.Migrate, func() { _ = s.Close() }
	return t, nil
}
