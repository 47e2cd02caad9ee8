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
// seconds in "_seconds" (antidote_messages_processed_total).
func NewPrometheusMeterProvider() (metric.MeterProvider, http.Handler, error) {
	reader, handler, err := newPrometheusReader()
	if err != nil {
		return nil, nil, err
	}
	return sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)), handler, nil
}

func newPrometheusReader() (sdkmetric.Reader, http.Handler, error) {
	reg := prometheus.NewRegistry()
	if err := reg.Register(collectors.NewGoCollector()); err != nil {
		return nil, nil, fmt.Errorf("telemetry: registering the Go collector: %w", err)
	}
	if err := reg.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})); err != nil {
		return nil, nil, fmt.Errorf("telemetry: registering the process collector: %w", err)
	}
	exp, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return nil, nil, fmt.Errorf("telemetry: Prometheus exporter: %w", err)
	}
	return exp, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), nil
}
