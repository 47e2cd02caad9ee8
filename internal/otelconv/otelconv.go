// Package otelconv holds what middleware and telemetry share to follow the
// OpenTelemetry messaging semantic conventions: the broker address as
// server.address/server.port, the error class (error.type) and the
// attributes a destination always has, built once per topic.
package otelconv

import (
	"errors"
	"net"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"unicode"

	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
)

// Operation names (messaging.operation.name): the span name's first word.
const (
	OpSend    = "send"
	OpProcess = "process"
)

// System names of messaging.system that change which attributes apply.
const (
	SystemKafka    = "kafka"
	SystemRabbitMQ = "rabbitmq"
)

// DefaultKafkaKeyMetadata is the metadata key Antidote's Kafka adapter takes
// the record key from (adapters.KafkaConfig.PartitionKey's default).
const DefaultKafkaKeyMetadata = "partition_key"

// ServerAttributes returns server.address and server.port of addr, the
// broker's address as adapters.Broker.Addr gives it: "host:port" or a
// comma-separated list of them (the first is used: the bootstrap broker),
// or a URL (amqp://user:xxx@host:5672/vhost, postgres://host:5432/db; a
// multi-host URL gives its first host). A bare host gives server.address
// alone; anything unparsable ("in-process", "") gives nothing.
func ServerAttributes(addr string) []attribute.KeyValue {
	addr = strings.TrimSpace(addr)
	if addr == "" {
		return nil
	}
	if strings.Contains(addr, "://") {
		u, err := url.Parse(addr)
		if err != nil {
			// A multi-host URL (postgres://a:5432,b:5432/db) does not parse:
			// take what is between "@" (or "//") and the first "/", ",".
			rest := addr[strings.Index(addr, "://")+3:]
			if i := strings.LastIndex(rest, "@"); i >= 0 {
				rest = rest[i+1:]
			}
			if i := strings.IndexAny(rest, "/?"); i >= 0 {
				rest = rest[:i]
			}
			return hostPort(rest)
		}
		return hostPort(u.Host)
	}
	return hostPort(addr)
}

func hostPort(s string) []attribute.KeyValue {
	if i := strings.IndexByte(s, ','); i >= 0 {
		s = s[:i]
	}
	s = strings.TrimSpace(s)
	if s == "" {
		return nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		if strings.ContainsAny(s, " /:") { // not a host name ("in-process" is one word, but see below)
			return nil
		}
		host, port = s, ""
	}
	if host == "" || host == "in-process" {
		return nil
	}
	attrs := []attribute.KeyValue{semconv.ServerAddress(host)}
	if p, err := strconv.Atoi(port); err == nil && p > 0 {
		attrs = append(attrs, semconv.ServerPort(p))
	}
	return attrs
}

// ErrorType is error.type for err: the class of error, low-cardinality. An
// error with an ErrorType() string method (anywhere in its chain) names its
// own class; otherwise it is the error's Go type, package-qualified
// ("*errors.errorString" for errors.New), as semconv.ErrorType has it.
// poison's unexported markers (Transient, Permanent, WithReason, Defer) and
// fmt.Errorf's %w wrapping are looked through: they say how to handle an
// error, not what it is.
func ErrorType(err error) string {
	if err == nil {
		return ""
	}
	for {
		t := reflect.TypeOf(err)
		if t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		inner := errors.Unwrap(err)
		if many, ok := err.(interface{ Unwrap() []error }); ok && inner == nil {
			if errs := many.Unwrap(); len(errs) > 0 {
				inner = errs[0] // Defer's: the error, then ErrDeferred
			}
		}
		if inner == nil || t.PkgPath() != poisonPkg || t.Name() == "" || unicode.IsUpper(rune(t.Name()[0])) {
			break
		}
		err = inner
	}
	return semconv.ErrorType(err).Value.AsString()
}

const poisonPkg = "github.com/antidote-mq/antidote/poison"
