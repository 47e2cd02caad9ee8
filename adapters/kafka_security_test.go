package adapters_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/devkafka"
	"github.com/antidote-mq/antidote/internal/testcerts"
	"github.com/antidote-mq/antidote/internal/testenv"
)

const secret = "s3cr3t-Pa55word-never-printed"

func TestKafkaSecurityValidate(t *testing.T) {
	certs := testcerts.Write(t, t.TempDir())
	base := func() adapters.Config {
		return adapters.Config{Broker: adapters.KindKafka, Kafka: adapters.KafkaConfig{Brokers: []string{"127.0.0.1:9092"}}}
	}
	cases := []struct {
		name  string
		set   func(*adapters.Config)
		wants []string
	}{
		{"unknown mechanism", func(c *adapters.Config) {
			c.Kafka.SASL = adapters.KafkaSASLConfig{Mechanism: "GSSAPI", Username: "u", Password: secret}
		}, []string{"kafka.sasl.mechanism", `"GSSAPI"`, "PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"}},
		{"mechanism without user", func(c *adapters.Config) {
			c.Kafka.SASL = adapters.KafkaSASLConfig{Mechanism: "SCRAM-SHA-512", Password: secret}
		}, []string{"kafka.sasl.username", "ANTIDOTE_KAFKA_SASL_USERNAME"}},
		{"mechanism without password", func(c *adapters.Config) {
			c.Kafka.SASL = adapters.KafkaSASLConfig{Mechanism: "plain", Username: "u"}
		}, []string{"kafka.sasl.password", "PLAIN"}},
		{"password without mechanism", func(c *adapters.Config) {
			c.Kafka.SASL = adapters.KafkaSASLConfig{Username: "u", Password: secret}
		}, []string{"kafka.sasl.mechanism", "is empty"}},
		{"cert without key", func(c *adapters.Config) {
			c.Kafka.TLS = adapters.TLSConfig{Enabled: true, CertFile: certs.ClientCert}
		}, []string{"kafka.tls.key_file"}},
		{"key without cert", func(c *adapters.Config) {
			c.Kafka.TLS = adapters.TLSConfig{Enabled: true, KeyFile: certs.ClientKey}
		}, []string{"kafka.tls.cert_file"}},
		{"missing CA file", func(c *adapters.Config) {
			c.Kafka.TLS = adapters.TLSConfig{Enabled: true, CAFile: "/nonexistent/ca.pem"}
		}, []string{"kafka.tls.ca_file", "/nonexistent/ca.pem", "no such file"}},
		{"CA file that is not PEM", func(c *adapters.Config) {
			c.Kafka.TLS = adapters.TLSConfig{Enabled: true, CAFile: certs.ClientKey}
		}, []string{"kafka.tls.ca_file", certs.ClientKey, "no PEM certificate"}},
		{"key that does not match", func(c *adapters.Config) {
			c.Kafka.TLS = adapters.TLSConfig{Enabled: true, CertFile: certs.ClientCert, KeyFile: certs.ServerKey}
		}, []string{"kafka.tls.cert_file", certs.ClientCert, certs.ServerKey}},
		{"token provider and mechanism", func(c *adapters.Config) {
			c.Kafka.SASL = adapters.KafkaSASLConfig{Mechanism: "PLAIN", Username: "u", Password: secret, TokenProvider: staticToken{}}
		}, []string{"kafka.sasl.mechanism", "TokenProvider"}},
		{"amqp TLS on an amqp:// URL", func(c *adapters.Config) {
			c.Broker = adapters.KindAMQP
			c.AMQP.URL = "amqp://u:" + secret + "@127.0.0.1:5672/"
			c.AMQP.TLS = adapters.TLSConfig{Enabled: true, CAFile: certs.CA}
		}, []string{"amqp.tls.enabled", "amqps://"}},
		{"amqp external auth without a certificate", func(c *adapters.Config) {
			c.Broker = adapters.KindAMQP
			c.AMQP.URL = "amqps://127.0.0.1:5671/"
			c.AMQP.ExternalAuth = true
		}, []string{"amqp.external_auth", "amqp.tls.cert_file"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := base()
			tc.set(&c)
			c.SetDefaults()
			err := c.Validate()
			if err == nil {
				t.Fatal("accepted")
			}
			if !errors.Is(err, adapters.ErrInvalidConfig) {
				t.Errorf("does not wrap ErrInvalidConfig: %v", err)
			}
			for _, w := range tc.wants {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not say %q: %v", w, err)
				}
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("error prints the password: %v", err)
			}
			// Open says the same, before dialling anything.
			if _, oerr := adapters.Open(t.Context(), c, nil); oerr == nil || strings.Contains(oerr.Error(), secret) {
				t.Errorf("Open: %v", oerr)
			}
		})
	}
	ok := base()
	ok.Kafka.SASL = adapters.KafkaSASLConfig{Mechanism: "scram-sha-512", Username: "u", Password: secret}
	ok.Kafka.TLS = adapters.TLSConfig{Enabled: true, CAFile: certs.CA, CertFile: certs.ClientCert, KeyFile: certs.ClientKey, ServerName: "localhost"}
	ok.SetDefaults()
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid config refused: %v", err)
	}
}

type staticToken struct{}

func (staticToken) Token() (*sarama.AccessToken, error) { return &sarama.AccessToken{Token: "t"}, nil }

// SaramaConfig carries every security setting, and ConfigureSarama runs last.
func TestSaramaConfigSecurity(t *testing.T) {
	certs := testcerts.Write(t, t.TempDir())
	c := adapters.Config{Broker: adapters.KindKafka, Kafka: adapters.KafkaConfig{
		Brokers: []string{"127.0.0.1:9092"},
		SASL:    adapters.KafkaSASLConfig{Mechanism: "SCRAM-SHA-256", Username: "u", Password: secret},
		TLS:     adapters.TLSConfig{Enabled: true, CAFile: certs.CA, CertFile: certs.ClientCert, KeyFile: certs.ClientKey, ServerName: "kafka.internal"},
		ConfigureSarama: func(sc *sarama.Config) {
			if !sc.Net.SASL.Enable || !sc.Net.TLS.Enable {
				panic("ConfigureSarama ran before the security settings")
			}
			sc.ClientID = "from-hook"
		},
	}}
	c.SetDefaults()
	sc, err := adapters.SaramaConfig(c)
	if err != nil {
		t.Fatal(err)
	}
	if sc.ClientID != "from-hook" {
		t.Errorf("ConfigureSarama not applied: client id %q", sc.ClientID)
	}
	if !sc.Net.SASL.Enable || sc.Net.SASL.Mechanism != sarama.SASLTypeSCRAMSHA256 || sc.Net.SASL.User != "u" || sc.Net.SASL.SCRAMClientGeneratorFunc == nil {
		t.Errorf("SASL: %+v", sc.Net.SASL)
	}
	tc := sc.Net.TLS.Config
	if !sc.Net.TLS.Enable || tc == nil || tc.ServerName != "kafka.internal" || len(tc.Certificates) != 1 || tc.RootCAs == nil || tc.InsecureSkipVerify {
		t.Fatalf("TLS: %+v", tc)
	}
	if err := sc.Validate(); err != nil {
		t.Errorf("sarama refuses the config: %v", err)
	}

	c.Kafka.SASL = adapters.KafkaSASLConfig{TokenProvider: staticToken{}}
	sc, err = adapters.SaramaConfig(c)
	if err != nil {
		t.Fatal(err)
	}
	if sc.Net.SASL.Mechanism != sarama.SASLTypeOAuth || sc.Net.SASL.TokenProvider == nil {
		t.Errorf("TokenProvider: mechanism %q", sc.Net.SASL.Mechanism)
	}
}

// securedKafka starts a broker requiring mechanism (with user u and the
// secret password), over TLS with certs when tls is true.
func securedKafka(t *testing.T, mechanism string, withTLS bool, certs testcerts.Files) *devkafka.Broker {
	t.Helper()
	cfg := devkafka.Config{Partitions: 2, SASLMechanism: mechanism, SASLUser: "u", SASLPassword: secret}
	if withTLS {
		cfg.TLSCertFile, cfg.TLSKeyFile = certs.ServerCert, certs.ServerKey
	}
	k, err := devkafka.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Close)
	return k
}

func securedConfig(addrs []string, mechanism, password string, tls *adapters.TLSConfig, group string) adapters.Config {
	c := adapters.Config{Broker: adapters.KindKafka, ConnectTimeout: 5 * time.Second, Kafka: adapters.KafkaConfig{
		Brokers:       addrs,
		ConsumerGroup: group,
		SASL:          adapters.KafkaSASLConfig{Mechanism: mechanism, Username: "u", Password: password},
	}}
	if tls != nil {
		c.Kafka.TLS = *tls
	}
	return c
}

// roundTrip publishes n messages through b and consumes them, returning how
// many distinct ones arrived.
func roundTrip(t *testing.T, ctx context.Context, b *adapters.Broker, topic string, n int) int {
	t.Helper()
	msgs, err := b.Subscriber.Subscribe(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if err := b.Publisher.Publish(topic, message.NewMessage(fmt.Sprint(i), []byte("x"))); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]bool{}
	for len(seen) < n {
		select {
		case m := <-msgs:
			seen[m.UUID] = true
			m.Ack()
		case <-ctx.Done():
			t.Fatalf("%d of %d messages consumed", len(seen), n)
		}
	}
	return len(seen)
}

// PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 (over TLS with a client
// certificate and a private CA) connect and carry messages; so does the
// lag source, which builds its own client.
func TestKafkaSASLRoundTrip(t *testing.T) {
	testenv.Integration(t)
	certs := testcerts.Write(t, t.TempDir())
	for _, tc := range []struct {
		mechanism string
		tls       bool
	}{{"PLAIN", false}, {"SCRAM-SHA-256", false}, {"SCRAM-SHA-512", true}, {"PLAIN", true}} {
		t.Run(fmt.Sprintf("%s_tls_%t", tc.mechanism, tc.tls), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			k := securedKafka(t, tc.mechanism, tc.tls, certs)
			var tlsCfg *adapters.TLSConfig
			if tc.tls {
				tlsCfg = &adapters.TLSConfig{Enabled: true, CAFile: certs.CA, CertFile: certs.ClientCert, KeyFile: certs.ClientKey}
			}
			log := watermill.NewCaptureLogger()
			b, err := adapters.Open(ctx, securedConfig(k.Addrs(), tc.mechanism, secret, tlsCfg, "sasl"), log)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			if got := roundTrip(t, ctx, b, "secured", 10); got != 10 {
				t.Fatalf("%d of 10", got)
			}
			lag, err := adapters.NewKafkaLag(ctx, b.Config)
			if err != nil {
				t.Fatalf("lag source on the secured broker: %v", err)
			}
			defer lag.Close()
			if _, err := lag.Lag(ctx, "secured"); err != nil {
				t.Fatalf("lag: %v", err)
			}
			for _, msgs := range log.Captured() {
				for _, m := range msgs {
					if strings.Contains(fmt.Sprint(m), secret) {
						t.Errorf("the password is in a log line: %s", m.Msg)
					}
				}
			}
		})
	}
}

// Without the CA that signed the brokers' certificate, TLS fails at Open.
func TestKafkaTLSUntrustedCA(t *testing.T) {
	certs := testcerts.Write(t, t.TempDir())
	k := securedKafka(t, "SCRAM-SHA-512", true, certs)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	_, err := adapters.Open(ctx, securedConfig(k.Addrs(), "SCRAM-SHA-512", secret, &adapters.TLSConfig{Enabled: true, CAFile: certs.OtherCA}, "g"), nil)
	if err == nil {
		t.Fatal("Open trusted a broker whose CA is not configured")
	}
	if !strings.Contains(err.Error(), "certificate") || !strings.Contains(err.Error(), "kafka.tls.ca_file") {
		t.Errorf("error does not say which certificate setting to fix: %v", err)
	}
}

// A wrong password fails Open with ErrAuthentication, naming the mechanism
// and the user but not the password; the context bounds a hang.
func TestKafkaWrongPassword(t *testing.T) {
	certs := testcerts.Write(t, t.TempDir())
	for _, mechanism := range []string{"SCRAM-SHA-512", "PLAIN"} {
		t.Run(mechanism, func(t *testing.T) {
			k := securedKafka(t, mechanism, true, certs)
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			const wrong = "wrong-" + secret
			cfg := securedConfig(k.Addrs(), mechanism, wrong, &adapters.TLSConfig{Enabled: true, CAFile: certs.CA}, "g")
			done := make(chan error, 1)
			go func() {
				b, err := adapters.Open(ctx, cfg, nil)
				if b != nil {
					_ = b.Close()
				}
				done <- err
			}()
			var err error
			select {
			case err = <-done:
			case <-ctx.Done():
				t.Fatal("Open with a wrong password hangs")
			}
			if !errors.Is(err, adapters.ErrAuthentication) {
				t.Fatalf("not ErrAuthentication: %v", err)
			}
			for _, w := range []string{"authentication failed", mechanism, `user "u"`, "kafka.sasl.password"} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not say %q: %v", w, err)
				}
			}
			if strings.Contains(err.Error(), wrong) || strings.Contains(err.Error(), secret) {
				t.Errorf("error prints the password: %v", err)
			}
		})
	}
}

// Open starts when any bootstrap broker answers, logging the others; with
// none answering it fails naming them all, after one timeout, not one per
// address.
func TestKafkaPartialBootstrap(t *testing.T) {
	testenv.Integration(t)
	k, err := devkafka.Start(devkafka.Config{Partitions: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	dead1, dead2 := freeClosedPort(t), freeClosedPort(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	log := watermill.NewCaptureLogger()
	cfg := adapters.Config{Broker: adapters.KindKafka, ConnectTimeout: 2 * time.Second,
		Kafka: adapters.KafkaConfig{Brokers: append([]string{dead1, dead2}, k.Addrs()...), ConsumerGroup: "partial"}}
	b, err := adapters.Open(ctx, cfg, log)
	if err != nil {
		t.Fatalf("Open with one of three bootstrap brokers up: %v", err)
	}
	defer b.Close()
	warned := false
	for _, m := range log.Captured()[watermill.ErrorLogLevel] {
		s := fmt.Sprint(m.Fields["not_answering"])
		if strings.Contains(s, dead1) && strings.Contains(s, dead2) && !strings.Contains(s, k.Addrs()[0]) {
			warned = true
		}
	}
	if !warned {
		t.Errorf("no log line naming the brokers that did not answer: %+v", log.Captured())
	}
	if got := roundTrip(t, ctx, b, "partial", 20); got != 20 {
		t.Fatalf("%d of 20", got)
	}

	cfg.Kafka.Brokers = []string{dead1, dead2}
	_, err = adapters.Open(ctx, cfg, nil)
	if !errors.Is(err, adapters.ErrUnreachable) {
		t.Fatalf("no broker up: %v", err)
	}
	for _, a := range []string{dead1, dead2} {
		if !strings.Contains(err.Error(), a) {
			t.Errorf("error does not name %s: %v", a, err)
		}
	}
}

// A three-broker cluster, bootstrapped through a list whose first address is
// dead, loses one broker mid-run: every published message is processed.
func TestKafkaClusterBrokerKilled(t *testing.T) {
	testenv.Integration(t)
	k, err := devkafka.Start(devkafka.Config{Partitions: 6, Brokers: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	if len(k.Addrs()) != 3 {
		t.Fatalf("addrs %v", k.Addrs())
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	cfg := adapters.Config{Broker: adapters.KindKafka, ConnectTimeout: 2 * time.Second, Kafka: adapters.KafkaConfig{
		Brokers:       append([]string{freeClosedPort(t)}, k.Addrs()...),
		ConsumerGroup: "cluster",
	}}
	b, err := adapters.Open(ctx, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	const topic, n = "cluster", 600
	msgs, err := b.Subscriber.Subscribe(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu   sync.Mutex
		seen = map[string]bool{}
	)
	var consumed atomic.Int64
	go func() {
		for m := range msgs {
			mu.Lock()
			if !seen[m.UUID] {
				seen[m.UUID] = true
				consumed.Add(1)
			}
			mu.Unlock()
			m.Ack()
		}
	}()
	var published int
	for i := range n {
		if i == n/2 {
			// Kill a broker (it leads some of the partitions, and the
			// clients hold connections to it) once a quarter are through.
			for consumed.Load() < int64(n/4) && ctx.Err() == nil {
				time.Sleep(10 * time.Millisecond)
			}
			if err := k.StopBroker(1); err != nil {
				t.Fatal(err)
			}
			if c, err := net.DialTimeout("tcp", k.Addrs()[1], time.Second); err == nil {
				_ = c.Close()
				t.Fatal("the stopped broker still accepts connections")
			}
		}
		m := message.NewMessage(fmt.Sprint(i), []byte("x"))
		m.Metadata.Set("partition_key", fmt.Sprint(i%12))
		if err := b.Publisher.Publish(topic, m); err != nil {
			t.Fatalf("publish %d after a broker died: %v", i, err)
		}
		published++
	}
	for consumed.Load() < int64(published) && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
	if got := consumed.Load(); got != int64(published) || published != n {
		t.Fatalf("published %d of %d, processed %d distinct", published, n, got)
	}
}

// The YAML keys and env variables of the contract reach the fields.
func TestSecurityYAMLAndEnv(t *testing.T) {
	c, err := adapters.ParseYAML([]byte(`
broker: kafka
kafka:
  brokers: ["h:9092"]
  sasl: {mechanism: SCRAM-SHA-512, username: u, password: p}
  tls: {enabled: true, ca_file: /ca.pem, cert_file: /c.pem, key_file: /k.pem, server_name: kafka.internal, insecure_skip_verify: true}
amqp:
  tls: {enabled: true, ca_file: /aca.pem}
  external_auth: true
`))
	if err != nil {
		t.Fatal(err)
	}
	want := adapters.TLSConfig{Enabled: true, CAFile: "/ca.pem", CertFile: "/c.pem", KeyFile: "/k.pem", ServerName: "kafka.internal", InsecureSkipVerify: true}
	if c.Kafka.TLS != want || c.Kafka.SASL.Mechanism != "SCRAM-SHA-512" || c.Kafka.SASL.Username != "u" || c.Kafka.SASL.Password != "p" ||
		c.AMQP.TLS.CAFile != "/aca.pem" || !c.AMQP.ExternalAuth {
		t.Fatalf("YAML: %+v %+v", c.Kafka, c.AMQP)
	}
	env := map[string]string{
		"ANTIDOTE_KAFKA_SASL_MECHANISM": "PLAIN", "ANTIDOTE_KAFKA_SASL_USERNAME": "eu", "ANTIDOTE_KAFKA_SASL_PASSWORD": "ep",
		"ANTIDOTE_KAFKA_TLS_ENABLED": "true", "ANTIDOTE_KAFKA_TLS_CA_FILE": "/eca", "ANTIDOTE_KAFKA_TLS_CERT_FILE": "/ec",
		"ANTIDOTE_KAFKA_TLS_KEY_FILE": "/ek", "ANTIDOTE_KAFKA_TLS_SERVER_NAME": "en", "ANTIDOTE_KAFKA_TLS_INSECURE_SKIP_VERIFY": "true",
		"ANTIDOTE_AMQP_TLS_ENABLED": "true", "ANTIDOTE_AMQP_TLS_CA_FILE": "/a1", "ANTIDOTE_AMQP_TLS_CERT_FILE": "/a2",
		"ANTIDOTE_AMQP_TLS_KEY_FILE": "/a3", "ANTIDOTE_AMQP_TLS_SERVER_NAME": "an", "ANTIDOTE_AMQP_TLS_INSECURE_SKIP_VERIFY": "true",
		"ANTIDOTE_AMQP_EXTERNAL_AUTH": "true",
	}
	var e adapters.Config
	if err := e.ApplyEnv(func(k string) (string, bool) { v, ok := env[k]; return v, ok }); err != nil {
		t.Fatal(err)
	}
	if (e.Kafka.SASL != adapters.KafkaSASLConfig{Mechanism: "PLAIN", Username: "eu", Password: "ep"}) ||
		e.Kafka.TLS != (adapters.TLSConfig{Enabled: true, CAFile: "/eca", CertFile: "/ec", KeyFile: "/ek", ServerName: "en", InsecureSkipVerify: true}) ||
		e.AMQP.TLS != (adapters.TLSConfig{Enabled: true, CAFile: "/a1", CertFile: "/a2", KeyFile: "/a3", ServerName: "an", InsecureSkipVerify: true}) ||
		!e.AMQP.ExternalAuth {
		t.Fatalf("env: %+v %+v", e.Kafka, e.AMQP)
	}
}
