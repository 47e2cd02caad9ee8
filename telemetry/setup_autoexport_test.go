package telemetry_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/telemetry"
)

// OTEL_TRACES_EXPORTER=console writes spans to stdout, as autoexport does.
// The stdout exporter holds the os.Stdout of package init, so the setup
// runs in a child process of this test binary whose stdout is read.
func TestSetupConsoleExporter(t *testing.T) {
	if os.Getenv("ANTIDOTE_TELEMETRY_CONSOLE_CHILD") == "1" {
		tel, err := telemetry.Setup(context.Background(), telemetry.SetupConfig{ServiceName: "billing"})
		if err != nil {
			t.Fatal(err)
		}
		if tel.TracesExporter != "console" || !tel.TracesExported || tel.Protocol != "" || tel.MetricsExported {
			t.Fatalf("unexpected setup: %+v", tel)
		}
		_, span := tel.TracerProvider.Tracer("t").Start(context.Background(), "process orders")
		span.End()
		if err := tel.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
		return
	}
	clearOTelEnv(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestSetupConsoleExporter$", "-test.count=1")
	cmd.Env = append(os.Environ(), "ANTIDOTE_TELEMETRY_CONSOLE_CHILD=1", "OTEL_TRACES_EXPORTER=console")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), `"Name":"process orders"`)
	assert.Contains(t, string(out), `"Value":"billing"`)
}

// OTEL_METRICS_EXPORTER=prometheus serves /metrics on its own port
// (OTEL_EXPORTER_PROMETHEUS_HOST/PORT) until Shutdown, as autoexport does.
func TestSetupPrometheusExporterFromEnv(t *testing.T) {
	clearOTelEnv(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := lis.Addr().(*net.TCPAddr).Port
	require.NoError(t, lis.Close())
	t.Setenv("OTEL_METRICS_EXPORTER", "prometheus")
	t.Setenv("OTEL_EXPORTER_PROMETHEUS_HOST", "127.0.0.1")
	t.Setenv("OTEL_EXPORTER_PROMETHEUS_PORT", strconv.Itoa(port))
	tel, err := telemetry.Setup(context.Background(), telemetry.SetupConfig{})
	require.NoError(t, err)
	assert.Equal(t, "prometheus", tel.MetricsExporter)
	assert.False(t, tel.TracesExported, "no trace exporter asked for, no endpoint")
	assert.Nil(t, tel.MetricsHandler, "the env's server, not a handler to mount")

	metrics, err := middleware.NewMetrics(middleware.MetricsConfig{MeterProvider: tel.MeterProvider})
	require.NoError(t, err)
	metrics.RecordDuplicate(context.Background(), "orders-handler")
	url := "http://127.0.0.1:" + strconv.Itoa(port) + "/metrics"
	resp, err := http.Get(url)
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	require.NoError(t, err)
	assert.Contains(t, string(body), `antidote_messages_duplicates_total{handler="orders-handler"`)

	require.NoError(t, tel.Shutdown(context.Background()))
	_, err = http.Get(url)
	assert.Error(t, err, "Shutdown stops the server")
}

// SetupConfig.Registerer: Antidote's metrics land in the caller's registry.
func TestSetupPrometheusOnTheCallersRegisterer(t *testing.T) {
	clearOTelEnv(t)
	reg := prometheus.NewRegistry()
	own := prometheus.NewCounter(prometheus.CounterOpts{Name: "billing_invoices_total"})
	reg.MustRegister(own)
	own.Inc()
	tel, err := telemetry.Setup(context.Background(), telemetry.SetupConfig{Prometheus: true, Registerer: reg})
	require.NoError(t, err)
	defer func() { _ = tel.Shutdown(context.Background()) }()
	metrics, err := middleware.NewMetrics(middleware.MetricsConfig{MeterProvider: tel.MeterProvider})
	require.NoError(t, err)
	metrics.RecordDuplicate(context.Background(), "orders-handler")

	families, err := reg.Gather()
	require.NoError(t, err)
	var names []string
	for _, f := range families {
		names = append(names, f.GetName())
	}
	assert.Contains(t, names, "antidote_messages_duplicates_total")
	assert.Contains(t, names, "billing_invoices_total")
	assert.NotContains(t, names, "go_goroutines", "the caller's registry gets no collectors of ours")

	require.NotNil(t, tel.MetricsHandler, "a *prometheus.Registry is a Gatherer: served")
	rec := httptest.NewRecorder()
	tel.MetricsHandler.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	assert.Contains(t, rec.Body.String(), "billing_invoices_total 1")
	assert.Contains(t, rec.Body.String(), "antidote_messages_duplicates_total{")

	// A Registerer that cannot gather: no handler, the caller serves it.
	_, handler, err := telemetry.NewPrometheusMeterProviderFor(registerOnly{prometheus.NewRegistry()})
	require.NoError(t, err)
	assert.Nil(t, handler)
}

type registerOnly struct{ r *prometheus.Registry }

func (o registerOnly) Register(c prometheus.Collector) error   { return o.r.Register(c) }
func (o registerOnly) MustRegister(cs ...prometheus.Collector) { o.r.MustRegister(cs...) }
func (o registerOnly) Unregister(c prometheus.Collector) bool  { return o.r.Unregister(c) }
