package pgstore_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/pgstore"
)

// ownSchema is a schema of the test's own, dropped with all in it when the
// test ends.
func ownSchema(t *testing.T) (*pgxpool.Pool, string) {
	t.Helper()
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testenv.PostgresURL(t))
	if err != nil {
		t.Fatal(err)
	}
	schema := "migs_" + strings.ToLower(watermill.NewShortUUID())
	if _, err := pool.Exec(ctx, `CREATE SCHEMA `+schema); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := pool.Exec(context.Background(), `DROP SCHEMA `+schema+` CASCADE`); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
		pool.Close()
	})
	return pool, schema
}

type migrator interface {
	Migrate(context.Context) ([]pgstore.Migration, error)
	PendingMigrations(context.Context) ([]pgstore.Migration, error)
}

// Migrators racing on one set of tables apply each step once: one of them
// applies all, the others find nothing to do. Several sets migrating at
// once in a fresh schema share its new version table without failing.
func TestMigrateConcurrentAppliesEachStepOnce(t *testing.T) {
	pool, schema := ownSchema(t)
	ctx := context.Background()
	const racers = 6
	var stores []migrator
	for i := 0; i < racers; i++ {
		h, err := pgstore.NewHospitalStore(ctx, pgstore.HospitalStoreConfig{Pool: pool, Table: schema + ".hosp", SkipCreateTable: true})
		if err != nil {
			t.Fatal(err)
		}
		stores = append(stores, h)
		d, err := pgstore.NewDeliveryTracker(ctx, pgstore.DeliveryTrackerConfig{Pool: pool, Table: schema + ".deliveries", SkipCreateTable: true})
		if err != nil {
			t.Fatal(err)
		}
		stores = append(stores, d)
	}
	if p, err := stores[0].PendingMigrations(ctx); err != nil || len(p) != 2 {
		t.Fatalf("pending before = %d, %v; want the hospital's 2", len(p), err)
	}
	applied := make([][]pgstore.Migration, len(stores))
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, s := range stores {
		wg.Go(func() {
			<-start
			var err error
			if applied[i], err = s.Migrate(ctx); err != nil {
				t.Errorf("migrator %d: %v", i, err)
			}
		})
	}
	close(start)
	wg.Wait()
	for kind, first := range map[string]int{"hospital": 0, "deliveries": 1} {
		steps, appliers := 0, 0
		for i := first; i < len(stores); i += 2 {
			steps += len(applied[i])
			if len(applied[i]) > 0 {
				appliers++
			}
		}
		want := len(stores[first].(interface{ Migrations() []pgstore.Migration }).Migrations())
		if steps != want || appliers != 1 {
			t.Errorf("%s: %d steps applied by %d migrators; want %d steps by one", kind, steps, appliers, want)
		}
	}
	for i, s := range stores {
		if p, err := s.PendingMigrations(ctx); err != nil || len(p) != 0 {
			t.Errorf("store %d: pending after = %d, %v", i, len(p), err)
		}
	}
}

// A store migrates on start unless SkipCreateTable; a second start, or
// Migrate again, applies nothing.
func TestMigrateOnStartAndTwiceIsNoOp(t *testing.T) {
	pool, schema := ownSchema(t)
	ctx := context.Background()
	table := schema + ".claims"
	skipped, err := pgstore.NewClaimCheckStore(ctx, pgstore.ClaimCheckStoreConfig{Pool: pool, Table: table, SkipCreateTable: true})
	if err != nil {
		t.Fatal(err)
	}
	defer skipped.Close()
	if err := skipped.Put(ctx, "k", []byte("v")); err == nil {
		t.Fatal("SkipCreateTable: the table exists, want it not created")
	}
	s, err := pgstore.NewClaimCheckStore(ctx, pgstore.ClaimCheckStoreConfig{Pool: pool, Table: table})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Put(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if applied, err := s.Migrate(ctx); err != nil || len(applied) != 0 {
			t.Errorf("Migrate again: %d applied, %v; want none", len(applied), err)
		}
	}
	if d, err := s.Get(ctx, "k"); err != nil || string(d) != "v" {
		t.Errorf("claim = %q, %v", d, err)
	}
	// A table dropped by hand is made again on the next start, as before
	// versions, though its version is still recorded.
	if _, err := pool.Exec(ctx, `DROP TABLE `+table); err != nil {
		t.Fatal(err)
	}
	again, err := pgstore.NewClaimCheckStore(ctx, pgstore.ClaimCheckStoreConfig{Pool: pool, Table: table})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if err := again.Put(ctx, "k2", []byte("v")); err != nil {
		t.Errorf("put after the table was dropped and the store started again: %v", err)
	}
}

// A table at a version newer than this binary knows is refused, with
// ErrSchemaTooNew, by the constructor, Migrate and PendingMigrations; it is
// never downgraded.
func TestMigrateRefusesNewerVersion(t *testing.T) {
	pool, schema := ownSchema(t)
	ctx := context.Background()
	table := schema + ".deliveries"
	d, err := pgstore.NewDeliveryTracker(ctx, pgstore.DeliveryTrackerConfig{Pool: pool, Table: table})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := pool.Exec(ctx, `UPDATE `+schema+`.antidote_schema_versions SET version = 5 WHERE component = 'deliveries' AND name = $1`, table); err != nil {
		t.Fatal(err)
	}
	_, err = pgstore.NewDeliveryTracker(ctx, pgstore.DeliveryTrackerConfig{Pool: pool, Table: table})
	if !errors.Is(err, pgstore.ErrSchemaTooNew) || !strings.Contains(err.Error(), "version 5") || !strings.Contains(err.Error(), "knows up to 1") {
		t.Errorf("start on a newer schema: %v; want ErrSchemaTooNew naming versions 5 and 1", err)
	}
	if _, err := d.Migrate(ctx); !errors.Is(err, pgstore.ErrSchemaTooNew) {
		t.Errorf("Migrate: %v", err)
	}
	if _, err := d.PendingMigrations(ctx); !errors.Is(err, pgstore.ErrSchemaTooNew) {
		t.Errorf("PendingMigrations: %v", err)
	}
	var v int
	if err := pool.QueryRow(ctx, `SELECT version FROM `+schema+`.antidote_schema_versions WHERE component = 'deliveries'`).Scan(&v); err != nil || v != 5 {
		t.Errorf("version = %d, %v; want 5 left alone", v, err)
	}
}
