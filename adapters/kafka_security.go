package adapters

import (
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"

	"github.com/IBM/sarama"
	"github.com/xdg-go/scram"
)

// The SASL mechanisms kafka.sasl.mechanism accepts.
const (
	SASLPlain       = "PLAIN"
	SASLScramSHA256 = "SCRAM-SHA-256"
	SASLScramSHA512 = "SCRAM-SHA-512"
	// SASLOAuthBearer is set by KafkaSASLConfig.TokenProvider (code only).
	SASLOAuthBearer = "OAUTHBEARER"
)

// SASLMechanisms lists the mechanisms settable by name, in the order docs/brokers.md lists them.
var SASLMechanisms = []string{SASLPlain, SASLScramSHA256, SASLScramSHA512}

// ErrAuthentication is wrapped by Open's error when a broker refuses the
// configured credentials.
var ErrAuthentication = errors.New("authentication failed")

// KafkaSASLConfig is kafka.sasl: how the client authenticates to the brokers.
type KafkaSASLConfig struct {
	// Mechanism is PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (case does not
	// matter). If Mechanism is empty (the default), the client does not
	// authenticate. PLAIN sends the password as it is: use it only with
	// kafka.tls.enabled. SCRAM never sends the password itself.
	Mechanism string `yaml:"mechanism"`

	// Username to authenticate as. Required when Mechanism is set.
	Username string `yaml:"username"`

	// Password of Username. Required when Mechanism is set. It is never
	// written to logs or errors; prefer ANTIDOTE_KAFKA_SASL_PASSWORD (or
	// its _FILE variant) to a YAML file.
	Password string `yaml:"password"`

	// TokenProvider, if set, authenticates with SASL/OAUTHBEARER using the
	// tokens it returns (code only, not YAML); Mechanism, Username and
	// Password must then be empty. If TokenProvider is nil, Mechanism
	// decides.
	TokenProvider sarama.AccessTokenProvider `yaml:"-"`
}

// enabled reports whether any SASL is configured.
func (s KafkaSASLConfig) enabled() bool { return s.Mechanism != "" || s.TokenProvider != nil }

// mechanism is the normalized mechanism name.
func (s KafkaSASLConfig) mechanism() string {
	if s.TokenProvider != nil {
		return SASLOAuthBearer
	}
	return strings.ToUpper(strings.TrimSpace(s.Mechanism))
}

// validate reports the fields of kafka.sasl that cannot work. No message
// holds the password.
func (s KafkaSASLConfig) validate() []error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("kafka.sasl.%s: %s", field, fmt.Sprintf(format, args...)))
	}
	if s.TokenProvider != nil {
		if s.Mechanism != "" || s.Username != "" || s.Password != "" {
			bad("mechanism", "is %q (or username/password set) while TokenProvider is set, which uses OAUTHBEARER; set one or the other", s.Mechanism)
		}
		return errs
	}
	if s.Mechanism == "" {
		if s.Username != "" || s.Password != "" {
			bad("mechanism", "is empty while kafka.sasl.username or kafka.sasl.password is set; choose one of %s (ANTIDOTE_KAFKA_SASL_MECHANISM)", strings.Join(SASLMechanisms, ", "))
		}
		return errs
	}
	switch s.mechanism() {
	case SASLPlain, SASLScramSHA256, SASLScramSHA512:
	default:
		bad("mechanism", "unknown mechanism %q; use one of %s (OAUTHBEARER: set TokenProvider in code)", s.Mechanism, strings.Join(SASLMechanisms, ", "))
		return errs
	}
	if s.Username == "" {
		bad("username", "is empty while kafka.sasl.mechanism is %s; set the user (ANTIDOTE_KAFKA_SASL_USERNAME)", s.mechanism())
	}
	if s.Password == "" {
		bad("password", "is empty while kafka.sasl.mechanism is %s; set the password (ANTIDOTE_KAFKA_SASL_PASSWORD)", s.mechanism())
	}
	return errs
}

// applyKafkaSecurity sets TLS and SASL on sc from k.
func applyKafkaSecurity(sc *sarama.Config, k KafkaConfig) error {
	tc, err := k.TLS.Build("kafka.tls")
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	if tc != nil {
		sc.Net.TLS.Enable = true
		sc.Net.TLS.Config = tc
	}
	s := k.SASL
	if !s.enabled() {
		return nil
	}
	if errs := s.validate(); len(errs) > 0 {
		return fmt.Errorf("%w: %v", ErrInvalidConfig, errors.Join(errs...))
	}
	sc.Net.SASL.Enable = true
	sc.Net.SASL.Handshake = true
	sc.Net.SASL.Version = sarama.SASLHandshakeV1
	switch s.mechanism() {
	case SASLOAuthBearer:
		sc.Net.SASL.Mechanism = sarama.SASLTypeOAuth
		sc.Net.SASL.TokenProvider = s.TokenProvider
		return nil
	case SASLPlain:
		sc.Net.SASL.Mechanism = sarama.SASLTypePlaintext
	case SASLScramSHA256:
		sc.Net.SASL.Mechanism = sarama.SASLTypeSCRAMSHA256
		sc.Net.SASL.SCRAMClientGeneratorFunc = func() sarama.SCRAMClient { return &scramClient{hash: sha256.New} }
	case SASLScramSHA512:
		sc.Net.SASL.Mechanism = sarama.SASLTypeSCRAMSHA512
		sc.Net.SASL.SCRAMClientGeneratorFunc = func() sarama.SCRAMClient { return &scramClient{hash: sha512.New} }
	}
	sc.Net.SASL.User = s.Username
	sc.Net.SASL.Password = s.Password
	return nil
}

// scramClient is sarama's SCRAMClient on github.com/xdg-go/scram, as in
// sarama's own examples.
type scramClient struct {
	hash scram.HashGeneratorFcn
	conv *scram.ClientConversation
}

func (c *scramClient) Begin(user, password, authzID string) error {
	client, err := c.hash.NewClient(user, password, authzID)
	if err != nil {
		// xdg-go/scram's SASLprep errors do not quote the password.
		return fmt.Errorf("scram: %w", err)
	}
	c.conv = client.NewConversation()
	return nil
}

func (c *scramClient) Step(challenge string) (string, error) { return c.conv.Step(challenge) }

func (c *scramClient) Done() bool { return c.conv.Done() }

// kafkaAuthError turns a client error caused by refused credentials into
// one wrapping ErrAuthentication that names the mechanism and user (never
// the password); it returns nil when err is not an authentication failure.
// A broker that refuses credentials may just close the connection (the
// client then sees EOF): when SASL is on and the error says nothing, one
// broker is asked the same question without SASL; if it answers then, the
// credentials were what it refused.
func kafkaAuthError(err error, k KafkaConfig, sc *sarama.Config) error {
	if err == nil || !k.SASL.enabled() || sc == nil {
		return nil
	}
	var cause string
	switch {
	case errors.Is(err, sarama.ErrSASLAuthenticationFailed):
		cause = "the broker says the credentials are wrong"
	case errors.Is(err, sarama.ErrUnsupportedSASLMechanism):
		cause = "the broker does not enable this mechanism"
	case errors.Is(err, sarama.ErrIllegalSASLState):
		cause = "the broker refused the SASL exchange"
	default:
		addr, ok := answersWithoutSASL(k.Brokers, sc)
		if !ok {
			return nil
		}
		cause = "the broker at " + addr + " answers without SASL but closed the connection when the credentials were sent"
	}
	who := ""
	if k.SASL.TokenProvider == nil {
		who = fmt.Sprintf(", user %q", k.SASL.Username)
	}
	return fmt.Errorf("kafka at %s: SASL %s %w%s (%s); check kafka.sasl.username and kafka.sasl.password (ANTIDOTE_KAFKA_SASL_USERNAME, ANTIDOTE_KAFKA_SASL_PASSWORD) and the mechanism the brokers enable",
		strings.Join(k.Brokers, ","), k.SASL.mechanism(), ErrAuthentication, who, redactSecret(cause, k.SASL.Password))
}

// answersWithoutSASL reports the first of addrs that answers an ApiVersions
// request over sc's connection (TLS included) with SASL off, while it
// refuses the same request with sc's SASL on.
func answersWithoutSASL(addrs []string, sc *sarama.Config) (string, bool) {
	plain := *sc
	plain.Net.SASL.Enable = false
	ask := func(addr string, c *sarama.Config) error {
		b := sarama.NewBroker(addr)
		if err := b.Open(c); err != nil {
			return err
		}
		defer func() { _ = b.Close() }()
		_, err := b.ApiVersions(&sarama.ApiVersionsRequest{})
		return err
	}
	for _, addr := range addrs {
		if ask(addr, &plain) != nil {
			continue
		}
		return addr, ask(addr, sc) != nil
	}
	return "", false
}

// kafkaTLSHint says what to set when err is a certificate the client did
// not trust; "" otherwise.
func kafkaTLSHint(err error) string {
	var unknown x509.UnknownAuthorityError
	var host x509.HostnameError
	switch {
	case errors.As(err, &unknown) || strings.Contains(err.Error(), "x509: certificate signed by unknown authority"):
		return "; the brokers' TLS certificate is signed by a CA this process does not trust: set kafka.tls.ca_file (ANTIDOTE_KAFKA_TLS_CA_FILE) to it"
	case errors.As(err, &host) || strings.Contains(err.Error(), "x509: certificate is valid for"):
		return "; the brokers' TLS certificate does not carry the name dialled: set kafka.tls.server_name (ANTIDOTE_KAFKA_TLS_SERVER_NAME) to a name it carries"
	case strings.Contains(err.Error(), "tls: "):
		return "; TLS failed: check kafka.tls.* (a broker without TLS, or one that wants a client certificate: kafka.tls.cert_file and key_file)"
	}
	return ""
}

// redactSecret hides secret in s, in case a client library quoted it. A
// secret under 4 bytes is left alone: hiding it would mangle the message
// (no client library this package uses quotes passwords anyway).
func redactSecret(s, secret string) string {
	if len(secret) < 4 {
		return s
	}
	return strings.ReplaceAll(s, secret, "[REDACTED]")
}
