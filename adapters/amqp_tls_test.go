package adapters_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/internal/testcerts"
	"github.com/antidote-mq/antidote/internal/testenv"
)

// AMQPConfigFor hands amqp.tls and amqp.external_auth to the connection.
func TestAMQPConfigForTLS(t *testing.T) {
	certs := testcerts.Write(t, t.TempDir())
	c := adapters.Config{Broker: adapters.KindAMQP, AMQP: adapters.AMQPConfig{
		URL:          "amqps://rabbit.internal:5671/",
		TLS:          adapters.TLSConfig{Enabled: true, CAFile: certs.CA, CertFile: certs.ClientCert, KeyFile: certs.ClientKey, ServerName: "rabbit.example"},
		ExternalAuth: true,
	}}
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	ac := adapters.AMQPConfigFor(c).Connection.AmqpConfig
	tc := ac.TLSClientConfig
	if tc == nil || tc.ServerName != "rabbit.example" || len(tc.Certificates) != 1 || tc.RootCAs == nil || tc.InsecureSkipVerify {
		t.Fatalf("TLS config %+v", tc)
	}
	leaf, err := x509.ParseCertificate(tc.Certificates[0].Certificate[0])
	if err != nil || leaf.Subject.CommonName != testcerts.ClientCN {
		t.Fatalf("client certificate %v %v", leaf, err)
	}
	if len(ac.SASL) != 1 || ac.SASL[0].Mechanism() != "EXTERNAL" {
		t.Fatalf("SASL %v", ac.SASL)
	}
	c.AMQP.ExternalAuth = false
	if ac := adapters.AMQPConfigFor(c).Connection.AmqpConfig; ac.SASL != nil {
		t.Fatalf("SASL without external_auth: %v", ac.SASL)
	}
}

// Open's dial negotiates TLS with the configured CA and presents the client
// certificate: a TLS listener in the test that requires one sees it.
func TestAMQPDialNegotiatesTLS(t *testing.T) {
	certs := testcerts.Write(t, t.TempDir())
	serverCert, err := tls.LoadX509KeyPair(certs.ServerCert, certs.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(certs.CA)
	if err != nil {
		t.Fatal(err)
	}
	clientCAs := x509.NewCertPool()
	clientCAs.AppendCertsFromPEM(caPEM)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{serverCert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    clientCAs,
		MinVersion:   tls.VersionTLS12,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peers := make(chan string, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := c.(*tls.Conn)
				if err := tc.Handshake(); err != nil {
					peers <- "handshake failed: " + err.Error()
					return
				}
				st := tc.ConnectionState()
				if len(st.PeerCertificates) == 0 {
					peers <- "no client certificate"
					return
				}
				peers <- "cn=" + st.PeerCertificates[0].Subject.CommonName + " server_name=" + st.ServerName
				// Not RabbitMQ: the AMQP handshake fails after this.
			}()
		}
	}()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	cfg := func(ca string) adapters.Config {
		return adapters.Config{Broker: adapters.KindAMQP, ConnectTimeout: 5 * time.Second, AMQP: adapters.AMQPConfig{
			URL: fmt.Sprintf("amqps://guest:%s@127.0.0.1:%s/", secret, port),
			TLS: adapters.TLSConfig{Enabled: true, CAFile: ca, CertFile: certs.ClientCert, KeyFile: certs.ClientKey, ServerName: "localhost"},
		}}
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	_, err = adapters.Open(ctx, cfg(certs.CA), nil)
	if err == nil {
		t.Fatal("Open succeeded against a TLS listener that is not RabbitMQ")
	}
	// The first connection is Open's TCP reachability check, which
	// closes without a handshake; the client's comes next.
	var saw []string
	for done := false; !done; {
		select {
		case p := <-peers:
			saw = append(saw, p)
			done = strings.HasPrefix(p, "cn=")
		default:
			t.Fatalf("no TLS handshake with a client certificate reached the listener: %q", saw)
		}
	}
	if p := saw[len(saw)-1]; p != "cn="+testcerts.ClientCN+" server_name=localhost" {
		t.Fatalf("server saw %q", p)
	}
	if strings.Contains(err.Error(), secret) {
		t.Errorf("error prints the password: %v", err)
	}

	// A CA that did not sign the server's certificate: the client refuses,
	// and says what to set.
	_, err = adapters.Open(ctx, cfg(certs.OtherCA), nil)
	if !errors.Is(err, adapters.ErrUnreachable) || !strings.Contains(err.Error(), "amqp.tls.ca_file") {
		t.Fatalf("untrusted server: %v", err)
	}
}

// A private RabbitMQ with a TLS listener that requires client certificates:
// PLAIN over TLS and SASL EXTERNAL (the user is the certificate's CN) both
// carry messages.
func TestAMQPTLSPrivateRabbitMQ(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a RabbitMQ node")
	}
	certs := testcerts.Write(t, t.TempDir())
	r := testenv.StartRabbitMQWithTLS(t, &testenv.RabbitMQTLS{CAFile: certs.CA, CertFile: certs.ServerCert, KeyFile: certs.ServerKey})
	if err := r.AddUser(testcerts.ClientCN, "unused-"+secret); err != nil {
		t.Fatal(err)
	}
	tlsCfg := adapters.TLSConfig{Enabled: true, CAFile: certs.CA, CertFile: certs.ClientCert, KeyFile: certs.ClientKey}
	for _, tc := range []struct {
		name     string
		url      string
		external bool
	}{
		{"plain over TLS", r.TLSURL, false},
		{"external", strings.Replace(r.TLSURL, "guest:guest@", "", 1), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			b, err := adapters.Open(ctx, adapters.Config{Broker: adapters.KindAMQP, AMQP: adapters.AMQPConfig{URL: tc.url, TLS: tlsCfg, ExternalAuth: tc.external}}, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			if got := roundTrip(t, ctx, b, "tls_"+strings.ReplaceAll(tc.name, " ", "_"), 10); got != 10 {
				t.Fatalf("%d of 10", got)
			}
		})
	}
	// The dial does TLS itself (so that the frame guard reads AMQP, not
	// TLS records): AmqpURI is amqp:// on the TLS port. Dialling the
	// amqps:// URL with the same AmqpConfig, as code that pairs the two
	// itself does, is amqp091-go's own TLS, and works too.
	cfg := adapters.Config{Broker: adapters.KindAMQP, AMQP: adapters.AMQPConfig{URL: r.TLSURL, TLS: tlsCfg}}
	cfg.SetDefaults()
	wc := adapters.AMQPConfigFor(cfg)
	if !strings.HasPrefix(wc.Connection.AmqpURI, "amqp://") {
		t.Errorf("AmqpURI %s: the dial's TLS needs amqp://", adapters.Redact(wc.Connection.AmqpURI))
	}
	for _, u := range []string{wc.Connection.AmqpURI, r.TLSURL} {
		conn, err := amqp.DialConfig(u, *wc.Connection.AmqpConfig)
		if err != nil {
			t.Fatalf("dial %s: %v", adapters.Redact(u), err)
		}
		_ = conn.Close()
	}
	// Without a client certificate the listener refuses the handshake.
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	_, err := adapters.Open(ctx, adapters.Config{Broker: adapters.KindAMQP, AMQP: adapters.AMQPConfig{URL: r.TLSURL,
		TLS: adapters.TLSConfig{Enabled: true, CAFile: certs.CA}}}, nil)
	if err == nil {
		t.Fatal("connected without the client certificate the server requires")
	}
}
