// Package testenv finds the real servers that integration tests talk to.
//
// Addresses come from env with the machine's defaults. A test that cannot
// reach its server skips and says why, unless ANTIDOTE_REQUIRE_SERVICES=1
// (set by .ci/run), where a missing server fails the test instead.
package testenv

import (
	"net"
	"net/url"
	"os"
	"testing"
	"time"
)

// Defaults used when the matching env var is unset.
const (
	DefaultPostgresURL = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	DefaultAMQPURL     = "amqp://guest:guest@127.0.0.1:5672/"
	DefaultRedisAddr   = "127.0.0.1:6379"
)

// Required reports whether missing services must fail tests.
func Required() bool { return os.Getenv("ANTIDOTE_REQUIRE_SERVICES") == "1" }

// PostgresURL returns ANTIDOTE_POSTGRES_URL (or the default) once the server answers.
func PostgresURL(t testing.TB) string {
	t.Helper()
	u := envOr("ANTIDOTE_POSTGRES_URL", DefaultPostgresURL)
	need(t, "PostgreSQL", hostOf(u, "127.0.0.1:5432"))
	return u
}

// AMQPURL returns ANTIDOTE_AMQP_URL (or the default) once RabbitMQ answers.
func AMQPURL(t testing.TB) string {
	t.Helper()
	u := envOr("ANTIDOTE_AMQP_URL", DefaultAMQPURL)
	need(t, "RabbitMQ", hostOf(u, "127.0.0.1:5672"))
	return u
}

// RedisAddr returns ANTIDOTE_REDIS_ADDR (or the default) once Redis answers.
func RedisAddr(t testing.TB) string {
	t.Helper()
	a := envOr("ANTIDOTE_REDIS_ADDR", DefaultRedisAddr)
	need(t, "Redis", a)
	return a
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func hostOf(raw, def string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return def
	}
	if u.Port() == "" {
		_, port, _ := net.SplitHostPort(def)
		return net.JoinHostPort(u.Hostname(), port)
	}
	return u.Host
}

func need(t testing.TB, name, addr string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err == nil {
		_ = c.Close()
		return
	}
	if Required() {
		t.Fatalf("%s at %s is required (ANTIDOTE_REQUIRE_SERVICES=1) but unreachable: %v", name, addr, err)
	}
	t.Skipf("%s at %s unreachable (%v); start it or set ANTIDOTE_REQUIRE_SERVICES=1 to make this a failure", name, addr, err)
}

// Integration skips t under go test -short. It marks the tests that belong
// to the integration suite rather than to the quick unit run: those that
// drive a broker end to end for seconds, start private servers, SIGKILL a
// process or wait out real timeouts. The full go test ./... (CI) runs them;
// -short keeps the library packages' run under two minutes (docs/testing.md).
func Integration(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test (brokers end to end, private servers, SIGKILL or real timeouts): skipped with -short")
	}
}
