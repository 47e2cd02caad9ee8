package otelconv

import (
	"errors"
	"fmt"
	"testing"

	"go.opentelemetry.io/otel/attribute"

	"github.com/antidote-mq/antidote/poison"
)

func TestServerAttributes(t *testing.T) {
	for _, tc := range []struct {
		addr string
		host string
		port int64
	}{
		{"127.0.0.1:9092", "127.0.0.1", 9092},
		{"kafka-0:9092,kafka-1:9092", "kafka-0", 9092},
		{"amqp://guest:xxxxx@rabbit:5672/vhost", "rabbit", 5672},
		{"amqps://rabbit.example.com/", "rabbit.example.com", 0},
		{"postgres://postgres:xxxxx@db-a:5432,db-b:5433/app?sslmode=disable", "db-a", 5432},
		{"[::1]:9092", "::1", 9092},
		{"broker", "broker", 0},
		{"in-process", "", 0},
		{"", "", 0},
	} {
		t.Run(tc.addr, func(t *testing.T) {
			got := map[attribute.Key]attribute.Value{}
			for _, kv := range ServerAttributes(tc.addr) {
				got[kv.Key] = kv.Value
			}
			if h := got["server.address"].AsString(); h != tc.host {
				t.Errorf("server.address = %q, want %q", h, tc.host)
			}
			if p := got["server.port"].AsInt64(); p != tc.port {
				t.Errorf("server.port = %d, want %d", p, tc.port)
			}
		})
	}
}

type classified struct{}

func (classified) Error() string     { return "x" }
func (classified) ErrorType() string { return "timeout" }

func TestErrorType(t *testing.T) {
	if got := ErrorType(nil); got != "" {
		t.Errorf("nil: %q", got)
	}
	if got := ErrorType(fmt.Errorf("wrapped: %w", errors.New("x"))); got != "*errors.errorString" {
		t.Errorf("fmt-wrapped errors.New: %q", got)
	}
	if got := ErrorType(poison.Defer(poison.Transient(fmt.Errorf("db: %w", errors.New("x"))))); got != "*errors.errorString" {
		t.Errorf("poison's markers are looked through: %q", got)
	}
	if got := ErrorType(poison.Invalidf("bad")); got != "*poison.ValidationError" {
		t.Errorf("poison's exported error types are classes: %q", got)
	}
	if got := ErrorType(fmt.Errorf("wrapped: %w", classified{})); got != "timeout" {
		t.Errorf("ErrorType method in the chain: %q", got)
	}
}
