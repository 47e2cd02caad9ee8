package adapters

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

// ErrInsecureTLS is logged (never returned) when a TLS section sets
// insecure_skip_verify: the connection is encrypted, but to whoever answers.
var ErrInsecureTLS = errors.New("TLS certificate verification is off (insecure_skip_verify): anyone between this process and the broker can read and change its traffic")

// TLSConfig is the TLS section of a broker (kafka.tls, amqp.tls). The
// files are PEM, read when the config is validated and again when a
// connection is built, so a rotated certificate is picked up by the next
// Open.
type TLSConfig struct {
	// Enabled turns TLS on. If Enabled is false, the connection is plain
	// TCP and every other field is ignored (for AMQP, an amqps:// URL turns
	// TLS on by itself). Default false.
	Enabled bool `yaml:"enabled"`

	// CAFile is a PEM file of the certificate authorities that sign the
	// broker's certificate. If CAFile is empty, the system's trusted
	// authorities are used, which suits a managed service with a public
	// certificate; a private CA needs this file.
	CAFile string `yaml:"ca_file"`

	// CertFile is the PEM client certificate presented to the broker
	// (mutual TLS). If CertFile is empty, no client certificate is sent.
	// It needs KeyFile.
	CertFile string `yaml:"cert_file"`

	// KeyFile is the PEM private key of CertFile. If KeyFile is empty, no
	// client certificate is sent; it must be set exactly when CertFile is.
	KeyFile string `yaml:"key_file"`

	// ServerName is the name the broker's certificate must carry. If
	// ServerName is empty, the host of the address dialled is used: set it
	// when brokers are reached through an IP address or a proxy whose name
	// the certificate does not carry.
	ServerName string `yaml:"server_name"`

	// InsecureSkipVerify accepts any certificate the broker presents.
	// Default false. Only for a throwaway test setup: the connection is
	// then encrypted but not authenticated, and Open logs an error saying
	// so (ErrInsecureTLS) every time.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
}

// Build returns the *tls.Config described by t, or nil when t is not
// Enabled. Errors name the field (under prefix, e.g. "kafka.tls") and the
// file; they never hold the key's content.
func (t TLSConfig) Build(prefix string) (*tls.Config, error) {
	if !t.Enabled {
		return nil, nil
	}
	if errs := t.check(prefix); len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	c := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         t.ServerName,
		InsecureSkipVerify: t.InsecureSkipVerify, //nolint:gosec // opt-in, logged loudly at Open
	}
	if t.CAFile != "" {
		pool, err := loadCAs(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("%s.ca_file: %w", prefix, err)
		}
		c.RootCAs = pool
	}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("%s.cert_file and %s.key_file: %s and %s do not load as a PEM certificate and its key: %v", prefix, prefix, t.CertFile, t.KeyFile, err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}

// check reports the fields that cannot work, without reading the files.
func (t TLSConfig) check(prefix string) []error {
	var errs []error
	switch {
	case t.CertFile != "" && t.KeyFile == "":
		errs = append(errs, fmt.Errorf("%s.key_file: is empty while %s.cert_file is set; give the client certificate's private key (PEM)", prefix, prefix))
	case t.CertFile == "" && t.KeyFile != "":
		errs = append(errs, fmt.Errorf("%s.cert_file: is empty while %s.key_file is set; give the client certificate (PEM)", prefix, prefix))
	}
	return errs
}

// validate reports, for Validate, what Build would refuse: missing pairs
// and files that do not exist or do not parse.
func (t TLSConfig) validate(prefix string) []error {
	if !t.Enabled {
		return nil
	}
	if errs := t.check(prefix); len(errs) > 0 {
		return errs
	}
	if _, err := t.Build(prefix); err != nil {
		return []error{err}
	}
	return nil
}

func loadCAs(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return pool, nil
}
