// Package pgmigrate applies the versioned schema migrations of the tables
// Antidote owns in PostgreSQL (pgstore's stores, the outbox).
//
// Each set of tables (a Schema: one store's table, or a hospital's or an
// outbox's tables, by their configured name) has its own version, kept in a
// row of the version table antidote_schema_versions in the same schema as
// the tables. Migrate applies the pending steps in one transaction that
// first takes the advisory lock the stores took before versions existed,
// (hashtext(LockNS), hashtext(Name)), so replicas starting together, and
// binaries from before migrations, take turns; a database at a version
// newer than the steps given is refused, never downgraded. A set whose
// Probe table is missing is at version 0 (its steps are safe to run
// again), so tables dropped by hand are made again, as before versions.
//
// Why not a migration library: goose v3 (Provider API) and golang-migrate
// were weighed. Our table names are configuration, so their migrations
// would have to be Go functions rather than SQL files, and with goose
// reading the version (GetDBVersion, HasPending) creates its version table,
// so a dry run would change the database; it ignores a database newer than
// its migrations; its version table (one per set of tables, named in
// unquoted SQL) would need a derived name within PostgreSQL's 63 bytes; and
// its lock is a polled session lock of its own, not the one older binaries
// take. golang-migrate keeps a dirty flag instead of running all steps in
// one transaction. What is left to write is one transaction: lock, read
// the version, run the steps, write the version.
package pgmigrate

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// VersionTable is the table, in each schema holding Antidote's tables,
// that records their schema versions: one row per set of tables.
const VersionTable = "antidote_schema_versions"

// ErrTooNew is wrapped by the error of a database whose tables are at a
// version newer than this binary knows (a newer Antidote migrated them).
var ErrTooNew = errors.New("the tables are at a schema version newer than this version of Antidote knows")

// Step is one version of a schema: the SQL that takes the tables from the
// version before to this one.
type Step struct {
	// Version is the version the tables are at once SQL ran: 1, 2, ...
	Version int
	// Description says what the step changes.
	Description string
	// SQL is the statements, for the configured table names.
	SQL string
}

// Schema is a set of tables with a versioned schema.
type Schema struct {
	// Component names the kind of tables: "deliveries", "hospital", ...
	Component string
	// Name is the tables' configured name (or prefix), optionally
	// schema-qualified; the version table is in that schema.
	Name string
	// LockNS and LockKey are the keys of the advisory lock, hashed with
	// hashtext, as the stores took it before migrations existed. If
	// LockKey is empty, Name.
	LockNS, LockKey string
	// Probe is a table of the set, as configured (optionally
	// schema-qualified, not quoted): when it is missing the set is at version 0 whatever the version table says, so
	// tables dropped by hand are made again on start, as before versions.
	Probe string
	// What names the tables in errors ("delivery tracker").
	What string
	// Steps are the versions in order, Version i+1 at index i.
	Steps []Step
}

// Beginner is what Migrate needs: a pgx pool, connection or transaction.
type Beginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// Querier is what Pending needs: a pgx pool, connection or transaction.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// existsSQL reports whether the table $2 is in the schema $1 (empty: the
// one an unqualified CREATE TABLE uses). It reads pg_class with the
// statement's snapshot, so it sees what was committed while the
// transaction waited for the lock; to_regclass looks in the session's
// catalog cache, which no lock taken since has refreshed, and can still
// say "missing".
const existsSQL = `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname = $2 AND n.nspname = COALESCE(NULLIF($1, ''), current_schema()))`

// split is name's schema ("" if unqualified) and table.
func split(name string) (string, string) {
	if i := strings.LastIndex(name, "."); i >= 0 {
		return name[:i], name[i+1:]
	}
	return "", name
}

// versionName is the version table's schema and name, unquoted.
func (s Schema) versionName() (string, string) {
	sch, _ := split(s.Name)
	return sch, VersionTable
}

// versionTable is the sanitized version table in the schema of s.Name.
func (s Schema) versionTable() string {
	parts := strings.Split(s.Name, ".")
	parts[len(parts)-1] = VersionTable
	return pgx.Identifier(parts).Sanitize()
}

// Latest is the version the steps lead to.
func (s Schema) Latest() int { return len(s.Steps) }

// SQL is every step joined: the whole schema, from nothing or from any
// version (each step is written to be safe to run again).
func (s Schema) SQL() string {
	var b strings.Builder
	for i, st := range s.Steps {
		if i > 0 {
			b.WriteString(";\n")
		}
		b.WriteString(st.SQL)
	}
	return b.String()
}

// Pending returns the steps not applied yet, without changing anything
// (no lock, no table created): what Migrate would apply now.
func (s Schema) Pending(ctx context.Context, db Querier) ([]Step, error) {
	v, err := s.current(ctx, db)
	if err != nil {
		return nil, err
	}
	return s.after(v)
}

// Migrate applies the pending steps and returns them (none when the tables
// are current). All of them and the new version commit together or not at
// all.
func (s Schema) Migrate(ctx context.Context, db Beginner) ([]Step, error) {
	lockKey := s.LockKey
	if lockKey == "" {
		lockKey = s.Name
	}
	var applied []Step
	err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))`, s.LockNS, lockKey); err != nil {
			return err
		}
		if err := s.ensureVersionTable(ctx, tx); err != nil {
			return err
		}
		v, err := s.current(ctx, tx)
		if err != nil {
			return err
		}
		pending, err := s.after(v)
		if err != nil || len(pending) == 0 {
			return err
		}
		for _, st := range pending {
			if _, err := tx.Exec(ctx, st.SQL); err != nil {
				return fmt.Errorf("version %d (%s): %w", st.Version, st.Description, err)
			}
		}
		_, err = tx.Exec(ctx, `INSERT INTO `+s.versionTable()+` (component, name, version) VALUES ($1, $2, $3)
ON CONFLICT (component, name) DO UPDATE SET version = EXCLUDED.version, migrated_at = now()`, s.Component, s.Name, s.Latest())
		applied = pending
		return err
	})
	if err != nil {
		return nil, err
	}
	return applied, nil
}

// ensureVersionTable creates the version table if it is missing. Sets of
// tables in one schema share it but not their advisory lock, so its
// creation takes a lock of its own (after the set's: one order, no
// deadlock), held until the transaction ends.
func (s Schema) ensureVersionTable(ctx context.Context, tx pgx.Tx) error {
	var exists bool
	sch, rel := s.versionName()
	if err := tx.QueryRow(ctx, existsSQL, sch, rel).Scan(&exists); err != nil || exists {
		return err
	}
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('antidote.schema_versions'), hashtext($1))`, s.versionTable()); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+s.versionTable()+` (
  component   TEXT NOT NULL,
  name        TEXT NOT NULL,
  version     INTEGER NOT NULL,
  migrated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  PRIMARY KEY (component, name)
)`)
	return err
}

// current is the recorded version, 0 when none is (a new database, or
// tables made before versions existed: step 1 adopts them) or when the
// Probe table is gone.
func (s Schema) current(ctx context.Context, db Querier) (int, error) {
	var exists, probed bool
	vs, vr := s.versionName()
	ps, pr := split(s.Probe)
	if err := db.QueryRow(ctx, `SELECT (`+existsSQL+`), (`+strings.NewReplacer("$1", "$3", "$2", "$4").Replace(existsSQL)+`)`, vs, vr, ps, pr).Scan(&exists, &probed); err != nil {
		return 0, fmt.Errorf("look for %s: %w", s.versionTable(), err)
	}
	if !exists || !probed {
		return 0, nil
	}
	var v int
	err := db.QueryRow(ctx, `SELECT version FROM `+s.versionTable()+` WHERE component = $1 AND name = $2`, s.Component, s.Name).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read schema version from %s: %w", s.versionTable(), err)
	}
	return v, nil
}

// after returns the steps after version v, refusing a v it does not know.
func (s Schema) after(v int) ([]Step, error) {
	if v > s.Latest() {
		return nil, fmt.Errorf("%s %s: %w: version %d in %s, this binary knows up to %d; run a version of Antidote at least as new as the one that migrated them (it never downgrades)",
			s.What, s.Name, ErrTooNew, v, s.versionTable(), s.Latest())
	}
	return s.Steps[v:], nil
}
