package adapters_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/internal/testcerts"
	"github.com/antidote-mq/antidote/internal/testenv"
)

// Validate accepts every form pgx accepts, and refuses what pgx refuses
// without printing the password.
func TestPostgresURLFormsPgxAccepts(t *testing.T) {
	certs := testcerts.Write(t, t.TempDir())
	for _, u := range []string{
		"postgres://u:" + secret + "@127.0.0.1:5432/test?sslmode=disable",
		"postgresql://u@db.internal/test?sslmode=verify-full&sslrootcert=" + certs.CA,
		"postgres://u@h1:5432,h2:5433/test?target_session_attrs=read-write",
		"postgres://u@h1,h2/test",
		"host=127.0.0.1 port=5432 dbname=test user=postgres sslmode=disable password=" + secret,
		"host=h1,h2 port=5432,5433 dbname=test",
		"host=/var/run/postgresql dbname=test",
	} {
		c := adapters.Config{Broker: adapters.KindPostgres, Postgres: adapters.PostgresConfig{URL: u}}
		c.SetDefaults()
		if err := c.Validate(); err != nil {
			t.Errorf("%s refused: %v", adapters.Redact(u), err)
		}
	}
	for _, u := range []string{
		"mysql://u:" + secret + "@h/db",
		"postgres://u:" + secret + "@h:notaport/db",
		"host=h sslmode=sometimes password=" + secret,
		// pgx reads the CA file when it parses: a missing one is named.
		"postgres://u:" + secret + "@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
	} {
		c := adapters.Config{Broker: adapters.KindPostgres, Postgres: adapters.PostgresConfig{URL: u}}
		c.SetDefaults()
		err := c.Validate()
		if !errors.Is(err, adapters.ErrInvalidConfig) || !strings.Contains(err.Error(), "postgres.url") {
			t.Errorf("%s accepted or unnamed: %v", adapters.Redact(u), err)
			continue
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("the error prints the password: %v", err)
		}
	}
	if r := adapters.Redact("host=h password='a b " + secret + "' dbname=x"); strings.Contains(r, secret) || !strings.Contains(r, "dbname=x") {
		t.Errorf("Redact keyword/value: %q", r)
	}
}

// A multi-host URL whose first host is down opens on the second, and
// ConfigurePool runs on the pool's config.
func TestPostgresMultiHostAndConfigurePool(t *testing.T) {
	base := testenv.PostgresURL(t)
	pc, err := pgxpool.ParseConfig(base)
	if err != nil {
		t.Fatal(err)
	}
	dead := freeClosedPort(t)
	multi := strings.Replace(base, pc.ConnConfig.Host+":5432", dead+","+pc.ConnConfig.Host+":5432", 1)
	if multi == base {
		t.Skipf("cannot make a multi-host URL from %s", adapters.Redact(base))
	}
	var called bool
	cfg := adapters.Config{Broker: adapters.KindPostgres, ConnectTimeout: 3 * time.Second, Postgres: adapters.PostgresConfig{
		URL: multi,
		ConfigurePool: func(c *pgxpool.Config) {
			called = true
			c.MaxConns = 3
			c.ConnConfig.RuntimeParams["application_name"] = "antidote-hook"
		},
	}}
	cfg.SetDefaults()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	pool, err := adapters.OpenPostgresPool(ctx, cfg)
	if err != nil {
		t.Fatalf("multi-host URL with the first host down: %v", err)
	}
	defer pool.Close()
	if !called || pool.Config().MaxConns != 3 {
		t.Fatalf("ConfigurePool called %t, max conns %d", called, pool.Config().MaxConns)
	}
	var name string
	if err := pool.QueryRow(ctx, "SELECT current_setting('application_name')").Scan(&name); err != nil || name != "antidote-hook" {
		t.Fatalf("application_name %q %v", name, err)
	}
}
