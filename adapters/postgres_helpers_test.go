package adapters_test

import (
	"context"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/internal/testenv"
)

// pgOpen opens a PostgreSQL broker on the test server with short intervals,
// after mod has adjusted the section; it is closed when the test ends.
func pgOpen(t *testing.T, mod func(*adapters.PostgresConfig)) *adapters.Broker {
	t.Helper()
	cfg := adapters.Config{Broker: adapters.KindPostgres, Postgres: adapters.PostgresConfig{
		URL:            testenv.PostgresURL(t),
		PollInterval:   10 * time.Millisecond,
		ResendInterval: 50 * time.Millisecond,
	}}
	if mod != nil {
		mod(&cfg.Postgres)
	}
	b, err := adapters.Open(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// pgConn is a direct connection to the test server, for inspecting and
// seeding queue tables; it drops the tables of topics when the test ends
// (after the broker, which was opened earlier, is closed).
func pgConn(t *testing.T, b *adapters.Broker, topics ...string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), b.Config.Postgres.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = b.Close()
		for _, topic := range topics {
			_, _ = conn.Exec(context.Background(), "DROP TABLE IF EXISTS "+adapters.PostgresTable(b.Config.Postgres, topic))
		}
		_ = conn.Close(context.Background())
	})
	return conn
}

// pgRows counts the rows of topic's queue table.
func pgRows(t *testing.T, conn *pgx.Conn, b *adapters.Broker, topic string) int {
	t.Helper()
	var n int
	if err := conn.QueryRow(context.Background(), "SELECT count(*) FROM "+adapters.PostgresTable(b.Config.Postgres, topic)).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// pgWait polls cond until it holds or limit passes, then fails with what.
func pgWait(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("within %s: %s", limit, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pgReceive subscribes to topic, acks n messages and returns them; the
// subscription stays open until the test ends, so the batch's ack (the
// rows' deletion, run after the last message of a batch) is not cut off.
func pgReceive(t *testing.T, b *adapters.Broker, topic string, n int) []*message.Message {
	t.Helper()
	return pgReceiveWith(t, b.Subscriber, topic, n)
}

// pgReceiveLetters reads a DLQ as the hospital does: believing the
// letters' envelope keys.
func pgReceiveLetters(t *testing.T, b *adapters.Broker, topic string, n int) []*message.Message {
	t.Helper()
	return pgReceiveWith(t, b.LetterSubscriber(), topic, n)
}

func pgReceiveWith(t *testing.T, sub message.Subscriber, topic string, n int) []*message.Message {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ch, err := sub.Subscribe(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	var out []*message.Message
	deadline := time.After(30 * time.Second)
	for len(out) < n {
		select {
		case m := <-ch:
			m.Ack()
			out = append(out, m)
		case <-deadline:
			t.Fatalf("received %d of %d messages: the queue is blocked", len(out), n)
		}
	}
	return out
}

// pgTableExists reports whether topic's queue table exists.
func pgTableExists(t *testing.T, conn *pgx.Conn, b *adapters.Broker, topic string) bool {
	t.Helper()
	var exists bool
	if err := conn.QueryRow(context.Background(), "SELECT to_regclass($1) IS NOT NULL", adapters.PostgresTable(b.Config.Postgres, topic)).Scan(&exists); err != nil {
		t.Fatal(err)
	}
	return exists
}
