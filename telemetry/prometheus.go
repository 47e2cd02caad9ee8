package telemetry

import (
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
)

// NewPrometheusMeterProvider returns a meter provider whose metrics are
// served by the handler in the Prometheus text format (mount it on
// /metrics; the examples' --metrics-addr does). Pass the provider to
// middleware.MetricsConfig.MeterProvider.
//
// It uses its own registry, not prometheus.DefaultRegisterer: two
// providers in one process (tests, two routers) would otherwise collide.
// The registry also has the Go runtime and process collectors. Pull-based:
// nothing runs between scrapes, so there is nothing to shut down.
// Metric names: dots become underscores, counters end in "_total" and
// seconds in "_seconds" (antidote_messages_processed_total,
// messaging_process_duration_seconds, messaging_client_consumed_messages_total).
func NewPrometheusMeterProvider() (metric.MeterProvider, http.Handler, error) {
	return NewPrometheusMeterProviderFor(nil)
}

// NewPrometheusMeterProviderFor is NewPrometheusMeterProvider registering
// on reg instead of a private registry (nil: a private one), e.g.
// prometheus.DefaultRegisterer or a service's own registry, so Antidote's
// metrics are served beside the service's. The handler serves reg when it
// is also a prometheus.Gatherer; otherwise it is nil and the caller serves
// its registry.
func NewPrometheusMeterProviderFor(reg prometheus.Registerer) (metric.MeterProvider, http.Handler, error) {
	reader, handler, err := newPrometheusReader(reg)
	if err != nil {
		return nil, nil, err
	}
	return sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)), handler, nil
}

// newPrometheusReader registers an OTel Prometheus exporter on reg (nil: a
// new private registry with the Go and process collectors).
func newPrometheusReader(reg prometheus.Registerer) (sdkmetric.Reader, http.Handler, error) {
	if reg == nil {
		private := prometheus.NewRegistry()
		if err := private.Register(collectors.NewGoCollector()); err != nil {
			return nil, nil, fmt.Errorf("telemetry: registering the Go collector: %w", err)
		}
		if err := private.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})); err != nil {
			return nil, nil, fmt.Errorf("telemetry: registering the process collector: %w", err)
		}
		reg = private
	}
	exp, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return nil, nil, fmt.Errorf("telemetry: Prometheus exporter: %w", err)
	}
	var handler http.Handler
	if g, ok := reg.(prometheus.Gatherer); ok {
		handler = promhttp.HandlerFor(g, promhttp.HandlerOpts{})
	}
	return exp, handler, nil
}
