package adapters_test

import (
	"context"
	"io"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/internal/testenv"
)

// cutProxy forwards TCP to target until cut, which closes the listener and
// every connection at once: the broker vanishes as a network partition or
// a killed host makes it.
type cutProxy struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func startCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	return startCutProxyAt(t, "127.0.0.1:0", target)
}

func startCutProxyAt(t *testing.T, listen, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				_ = c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(u, c); _ = u.Close() }()
			go func() { _, _ = io.Copy(c, u); _ = c.Close() }()
		}
	}()
	t.Cleanup(p.cut)
	return p
}

func (p *cutProxy) cut() {
	_ = p.ln.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
}

// A PostgreSQL broker that vanishes while a producer publishes: every
// Publish after the cut returns an error within the connect timeout (none
// hangs, none reports success), and every Publish that returned nil is in
// the queue table: nothing acknowledged to the producer is lost.
func TestPostgresVanishingMidPublishLosesNothingSilently(t *testing.T) {
	direct := testenv.PostgresURL(t)
	u, err := url.Parse(direct)
	if err != nil {
		t.Fatal(err)
	}
	proxy := startCutProxy(t, u.Host)
	viaProxy := *u
	viaProxy.Host = proxy.ln.Addr().String()
	cfg := adapters.Config{Broker: adapters.KindPostgres, ConnectTimeout: 2 * time.Second,
		Postgres: adapters.PostgresConfig{URL: viaProxy.String(), MaxConns: 2}}
	b, err := adapters.Open(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	topic := "vanish_" + watermill.NewShortUUID()
	conn, err := pgx.Connect(context.Background(), direct)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	table := adapters.PostgresTable(b.Config.Postgres, topic)
	t.Cleanup(func() { _, _ = conn.Exec(context.Background(), "DROP TABLE IF EXISTS "+table) })

	acked := map[string]bool{}
	var failed int
	for i := range 40 {
		if i == 20 {
			proxy.cut()
		}
		id := watermill.NewUUID()
		start := time.Now()
		err := b.Publisher.Publish(topic, message.NewMessage(id, []byte(`{"n":1}`)))
		if took := time.Since(start); took > 15*time.Second {
			t.Fatalf("publish %d took %s after the broker vanished", i, took)
		}
		if err == nil {
			acked[id] = true
		} else {
			failed++
		}
		if i >= 20 && err == nil {
			t.Fatalf("publish %d reported success with the broker gone", i)
		}
	}
	if len(acked) != 20 || failed != 20 {
		t.Fatalf("acked %d, failed %d; want 20 and 20", len(acked), failed)
	}
	rows, err := conn.Query(context.Background(), "SELECT uuid FROM "+table)
	if err != nil {
		t.Fatal(err)
	}
	stored := map[string]bool{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		stored[id] = true
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	for id := range acked {
		if !stored[id] {
			t.Errorf("message %s was acknowledged to the producer but is not in %s", id, table)
		}
	}
}
