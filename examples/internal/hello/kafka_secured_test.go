package hello

import (
	"net"
	"strconv"
	"testing"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/internal/testcerts"
)

// The poison scenario with the full stack (router.New: retries, breaker,
// DLQ, crash-loop guard, idempotency) against `antidote devkafka` secured
// with SASL/SCRAM-SHA-512 over TLS, and against a three-broker devkafka
// whose first bootstrap address is dead, configured through env only: the
// same counts as on a plain broker, nothing lost.
func TestKafkaSecuredAndClustered(t *testing.T) {
	const n, every = 2000, 50
	wantDead := ExpectedDeadLetters(n, every)
	certs := testcerts.Write(t, t.TempDir())
	const password = "hello-secured-password"
	for _, tc := range []struct {
		name string
		env  func(t *testing.T)
	}{
		{"scram-sha-512 over tls", func(t *testing.T) {
			addr := devKafka(t, "--sasl-mechanism", "SCRAM-SHA-512", "--sasl-user", "u", "--sasl-password", password,
				"--tls-cert", certs.ServerCert, "--tls-key", certs.ServerKey)
			t.Setenv("ANTIDOTE_KAFKA_BROKERS", addr)
			t.Setenv("ANTIDOTE_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
			t.Setenv("ANTIDOTE_KAFKA_SASL_USERNAME", "u")
			t.Setenv("ANTIDOTE_KAFKA_SASL_PASSWORD", password)
			t.Setenv("ANTIDOTE_KAFKA_TLS_ENABLED", "true")
			t.Setenv("ANTIDOTE_KAFKA_TLS_CA_FILE", certs.CA)
		}},
		{"three brokers, first bootstrap address dead", func(t *testing.T) {
			addr := devKafka(t, "--brokers", "3")
			t.Setenv("ANTIDOTE_KAFKA_BROKERS", deadAddr(t)+","+addr)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.env(t)
			s, stderr, code := runExample(t, adapters.KindKafka, "--messages", strconv.Itoa(n), "--poison-every", strconv.Itoa(every), "--topic", topic(t), "--json")
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			if s.Published != n || s.DeadLettered != int64(wantDead) || s.Processed != int64(n-wantDead) {
				t.Fatalf("summary %+v, want %d published, %d dead-lettered, %d processed", s, n, wantDead, n-wantDead)
			}
		})
	}
}

func deadAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
