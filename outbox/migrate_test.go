package outbox_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/outbox"
)

type nopPublisher struct{}

func (nopPublisher) Publish(string, ...*message.Message) error { return nil }
func (nopPublisher) Close() error                              { return nil }

// NewRelay migrates the tables unless SkipCreateTables; Migrate then finds
// nothing to do; a version newer than this binary's is refused.
func TestRelayMigratesUnlessSkipped(t *testing.T) {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testenv.PostgresURL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	schema := "obmig_" + strings.ToLower(watermill.NewShortUUID())
	if _, err := pool.Exec(ctx, `CREATE SCHEMA `+schema); err != nil {
		t.Fatal(err)
	}
	defer func() { _, _ = pool.Exec(context.Background(), `DROP SCHEMA `+schema+` CASCADE`) }()
	ob, err := outbox.New(outbox.Config{Table: schema + ".outbox"})
	if err != nil {
		t.Fatal(err)
	}
	exists := func() bool {
		var ok bool
		if err := pool.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, schema+".outbox").Scan(&ok); err != nil {
			t.Fatal(err)
		}
		return ok
	}
	cfg := outbox.RelayConfig{Pool: pool, Outbox: ob, Publisher: nopPublisher{}, Service: "mig", SkipCreateTables: true}
	if _, err := outbox.NewRelay(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if exists() {
		t.Fatal("SkipCreateTables: NewRelay created the table")
	}
	if p, err := ob.PendingMigrations(ctx, pool); err != nil || len(p) != 1 {
		t.Fatalf("pending = %d, %v; want 1", len(p), err)
	}
	cfg.SkipCreateTables = false
	if _, err := outbox.NewRelay(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if !exists() {
		t.Fatal("NewRelay did not create the table")
	}
	if applied, err := ob.Migrate(ctx, pool); err != nil || len(applied) != 0 {
		t.Errorf("Migrate after NewRelay: %d applied, %v; want none", len(applied), err)
	}
	if _, err := pool.Exec(ctx, `UPDATE `+schema+`.antidote_schema_versions SET version = 9 WHERE component = 'outbox'`); err != nil {
		t.Fatal(err)
	}
	if _, err := outbox.NewRelay(ctx, cfg); !errors.Is(err, outbox.ErrSchemaTooNew) {
		t.Errorf("NewRelay on a newer schema: %v; want ErrSchemaTooNew", err)
	}
}
