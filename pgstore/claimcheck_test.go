package pgstore_test

import (
	"context"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/antidote-mq/antidote/internal/storetest"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/pgstore"
)

func TestClaimCheckStore(t *testing.T) {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testenv.PostgresURL(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	table := "claims_" + watermill.NewShortUUID()
	pg, err := pgstore.NewClaimCheckStore(ctx, pgstore.ClaimCheckStoreConfig{Pool: pool, Table: table})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = pool.Exec(context.Background(), `DROP TABLE IF EXISTS "`+table+`"`) })
	storetest.ClaimCheck(t, pg)
}

func TestClaimCheckStoreConfigValidates(t *testing.T) {
	ctx := context.Background()
	if _, err := pgstore.NewClaimCheckStore(ctx, pgstore.ClaimCheckStoreConfig{}); err == nil {
		t.Error("no database accepted")
	}
	pool, err := pgxpool.New(ctx, testenv.PostgresURL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := pgstore.NewClaimCheckStore(ctx, pgstore.ClaimCheckStoreConfig{Pool: pool, Table: "x; DROP TABLE y"}); err == nil {
		t.Error("table name with SQL accepted")
	}
}
