package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/hospital"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/internal/testenv/hospitalstore"
	"github.com/antidote-mq/antidote/pgstore"
)

// serve never listens beyond loopback without a token: exit code 2, with
// the fix named, before anything is opened.
func TestHospitalServeRefusesBeyondLoopbackWithoutToken(t *testing.T) {
	t.Setenv(envHospitalToken, "")
	t.Setenv(envHospitalURL, "postgres://nobody@127.0.0.1:1/none")
	for _, addr := range []string{"0.0.0.0:0", ":0", "[::]:0", "192.0.2.1:8080"} {
		var stderr strings.Builder
		code := run(context.Background(), []string{"hospital", "serve", "--addr", addr}, strings.NewReader(""), io.Discard, &stderr)
		if code != exitUsage || !strings.Contains(stderr.String(), envHospitalToken) {
			t.Errorf("serve --addr %s without a token: exit %d, %q; want 2 naming %s", addr, code, stderr.String(), envHospitalToken)
		}
	}
	t.Setenv(envHospitalToken, "short")
	var stderr strings.Builder
	if code := run(context.Background(), []string{"hospital", "serve", "--addr", "0.0.0.0:0"}, strings.NewReader(""), io.Discard, &stderr); code != exitUsage {
		t.Errorf("a 5-character token: exit %d %s", code, stderr.String())
	}
	for _, host := range []string{"127.0.0.1", "::1", "localhost", "127.1.2.3"} {
		if !loopback(host) {
			t.Errorf("%s is loopback", host)
		}
	}
	for _, host := range []string{"", "0.0.0.0", "::", "10.0.0.1", "example.com"} {
		if loopback(host) {
			t.Errorf("%q is not loopback", host)
		}
	}
}

func TestHospitalNeedsAStore(t *testing.T) {
	t.Setenv(envHospitalURL, "")
	var stderr strings.Builder
	code := run(context.Background(), []string{"hospital", "ingest", "--topics", "a.dlq", "--broker", "postgres"}, strings.NewReader(""), io.Discard, &stderr)
	if code != exitUsage || !strings.Contains(stderr.String(), envHospitalURL) {
		t.Errorf("ingest without a store: exit %d, %q", code, stderr.String())
	}
}

// The config file's hospital section: url is read, the rest goes to the
// adapters' strict parser with its line numbers kept.
func TestHospitalConfigFile(t *testing.T) {
	rest, u, err := splitHospitalYAML([]byte("broker: postgres\nhospital:\n  # the store\n  url: postgres://h@db/h\npostgres:\n  url: postgres://b@db/b\n  tabel_prefix: x\n"))
	if err != nil || u != "postgres://h@db/h" {
		t.Fatalf("url %q, %v", u, err)
	}
	_, err = adapters.ParseYAML(rest)
	if err == nil || !strings.Contains(err.Error(), "line 7") {
		t.Errorf("the adapters' error %v does not keep its line (7)", err)
	}
	if _, _, err := splitHospitalYAML([]byte("hospital:\n  uri: x\n")); err == nil || !strings.Contains(err.Error(), "hospital.uri") {
		t.Errorf("an unknown hospital key: %v", err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "antidote.yaml")
	if err := os.WriteFile(path, []byte("broker: postgres\nhospital: {url: 'postgres://h@db:5432/h'}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(envHospitalURL, "")
	cfg, storeURL, err := (&hospitalFlags{config: path}).load()
	if err != nil || storeURL != "postgres://h@db:5432/h" || cfg.Broker != adapters.KindPostgres {
		t.Errorf("load: %v %q %v", cfg.Broker, storeURL, err)
	}
	t.Setenv(envHospitalURL, "postgres://env@db/h")
	if _, storeURL, _ := (&hospitalFlags{config: path}).load(); storeURL != "postgres://env@db/h" {
		t.Errorf("%s does not override hospital.url: %q", envHospitalURL, storeURL)
	}
}

// ingest drains a PostgreSQL broker's DLQ into the store: every letter
// once, acked (a second run finds none).
func TestHospitalIngestCommand(t *testing.T) {
	url := testenv.PostgresURL(t)
	t.Setenv("ANTIDOTE_BROKER", "postgres")
	t.Setenv("ANTIDOTE_POSTGRES_URL", url)
	t.Setenv(envHospitalURL, url)
	table := hospitalstore.Name(t, "hcli_")
	pool := hospitalstore.Pool(t)
	topic := "hcli_" + watermill.NewShortUUID()
	deadLetter(t, adapters.Config{Broker: adapters.KindPostgres, Postgres: adapters.PostgresConfig{URL: url}}, topic, 4)

	ingest := func() string {
		t.Helper()
		var stdout, stderr strings.Builder
		// The source topic stands for its DLQ.
		code := run(context.Background(), []string{"hospital", "ingest", "--topics", topic, "--idle", "3s", "--table", table},
			strings.NewReader(""), &stdout, &stderr)
		if code != exitOK {
			t.Fatalf("ingest: exit %d\n%s\n%s", code, stdout.String(), stderr.String())
		}
		return stdout.String()
	}
	if out := ingest(); !strings.Contains(out, "4 letters received: 4 new") {
		t.Errorf("first ingest: %q", out)
	}
	if out := ingest(); !strings.Contains(out, "0 letters received") {
		t.Errorf("second ingest found letters again: %q", out)
	}
	store, err := pgstore.NewHospitalStore(context.Background(), pgstore.HospitalStoreConfig{Pool: pool, Table: table})
	if err != nil {
		t.Fatal(err)
	}
	ids, err := hospital.Select(context.Background(), store, hospital.LetterQuery{DLQTopic: topic + ".dlq"})
	if err != nil || len(ids) != 4 {
		t.Errorf("%d letters in the store (%v), want 4", len(ids), err)
	}
}

// With ANTIDOTE_HOSPITAL_URL set, antidote dlq reads the store the
// ingester filled (the broker's DLQ is empty by then) and treats its rows.
func TestDLQCommandsOnTheStore(t *testing.T) {
	url := testenv.PostgresURL(t)
	t.Setenv("ANTIDOTE_BROKER", "postgres")
	t.Setenv("ANTIDOTE_POSTGRES_URL", url)
	t.Setenv(envHospitalURL, url)
	t.Setenv("COLUMNS", "140")
	table := hospitalstore.Name(t, "hdlq_")
	pool := hospitalstore.Pool(t)
	topic := "hdlq_" + watermill.NewShortUUID()
	deadLetter(t, adapters.Config{Broker: adapters.KindPostgres, Postgres: adapters.PostgresConfig{URL: url}}, topic, 3)
	cli := func(want int, args ...string) string {
		t.Helper()
		var stdout, stderr strings.Builder
		if code := run(context.Background(), args, strings.NewReader(""), &stdout, &stderr); code != want {
			t.Fatalf("%v: exit %d, want %d\n%s\n%s", args, code, want, stdout.String(), stderr.String())
		}
		return stdout.String()
	}
	cli(exitOK, "hospital", "ingest", "--topics", topic+".dlq", "--idle", "3s", "--table", table)
	// The DLQ table is empty now: what list shows comes from the store.
	var left int
	pgcfg := adapters.Config{Broker: adapters.KindPostgres, Postgres: adapters.PostgresConfig{URL: url}}
	pgcfg.SetDefaults()
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM `+adapters.PostgresTable(pgcfg.Postgres, topic+".dlq")).Scan(&left); err != nil || left != 0 {
		t.Fatalf("%d letters still in the broker's DLQ after ingest (%v)", left, err)
	}
	if out := cli(exitOK, "dlq", "list", "--topic", topic, "--hospital-table", table); !strings.Contains(out, "3 letters in "+topic+".dlq") {
		t.Errorf("list: %q", out)
	}
	if out := cli(exitOK, "dlq", "group", "--topic", topic, "--hospital-table", table); !strings.Contains(out, "3 letters in 1 group") {
		t.Errorf("group: %q", out)
	}
	if out := cli(exitOK, "dlq", "purge", "--topic", topic, "--hospital-table", table, "--yes"); !strings.Contains(out, "purged 3 letters") {
		t.Errorf("purge: %q", out)
	}
	cli(exitNoMatch, "dlq", "list", "--topic", topic, "--hospital-table", table)
	var purged int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM "`+table+`_letters" WHERE state = 'purged'`).Scan(&purged); err != nil || purged != 3 {
		t.Errorf("%d rows purged (%v), want 3", purged, err)
	}
}
