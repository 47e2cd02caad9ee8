package telemetry_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	collectormetrics "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/telemetry"
)

// clearOTelEnv makes a test independent of the machine's environment.
func clearOTelEnv(t *testing.T) {
	for _, k := range []string{
		"OTEL_SDK_DISABLED", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
		"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL",
		"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
		"OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER", "OTEL_SERVICE_NAME",
		"OTEL_RESOURCE_ATTRIBUTES", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG",
		"OTEL_EXPORTER_PROMETHEUS_HOST", "OTEL_EXPORTER_PROMETHEUS_PORT", "OTEL_METRICS_PRODUCERS",
	} {
		t.Setenv(k, "")
	}
}

func TestSetupFromEnvIsANoOpWithoutEndpoint(t *testing.T) {
	clearOTelEnv(t)
	tp, mp, shutdown, err := telemetry.SetupFromEnv(context.Background())
	require.NoError(t, err)
	_, span := tp.Tracer("t").Start(context.Background(), "x")
	assert.False(t, span.IsRecording(), "no endpoint: no-op tracer")
	span.End()
	require.NotNil(t, mp)
	c, err := mp.Meter("t").Int64Counter("c")
	require.NoError(t, err)
	c.Add(context.Background(), 1)
	assert.NoError(t, shutdown(context.Background()))

	// An endpoint with the exporter turned off is a no-op too.
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
	t.Setenv("OTEL_TRACES_EXPORTER", "none")
	tel, err := telemetry.Setup(context.Background(), telemetry.SetupConfig{})
	require.NoError(t, err)
	assert.False(t, tel.TracesExported)
	assert.False(t, tel.MetricsExported, "the general endpoint alone does not export metrics")
	assert.Nil(t, tel.MetricsHandler)

	// OTEL_SDK_DISABLED wins over an exporter asked for by name.
	t.Setenv("OTEL_TRACES_EXPORTER", "otlp")
	t.Setenv("OTEL_METRICS_EXPORTER", "otlp")
	t.Setenv("OTEL_SDK_DISABLED", "true")
	tel, err = telemetry.Setup(context.Background(), telemetry.SetupConfig{})
	require.NoError(t, err)
	assert.False(t, tel.TracesExported)
	assert.False(t, tel.MetricsExported)
	assert.Empty(t, tel.TracesExporter)
}

func TestSetupRejectsWhatItCannotDo(t *testing.T) {
	for _, tc := range []struct{ key, value, want string }{
		{"OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", "OTEL_EXPORTER_OTLP_PROTOCOL=\"http/json\": invalid OTLP protocol"},
		{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "thrift", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=\"thrift\""},
		{"OTEL_TRACES_EXPORTER", "zipkin", "OTEL_TRACES_EXPORTER=\"zipkin\""},
		{"OTEL_METRICS_EXPORTER", "statsd", "OTEL_METRICS_EXPORTER=\"statsd\""},
	} {
		t.Run(tc.key, func(t *testing.T) {
			clearOTelEnv(t)
			t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
			t.Setenv(tc.key, tc.value)
			_, err := telemetry.Setup(context.Background(), telemetry.SetupConfig{})
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

// otlpHTTP is a minimal OTLP/HTTP collector: it decodes what it is sent.
type otlpHTTP struct {
	mu      sync.Mutex
	traces  []*collectortrace.ExportTraceServiceRequest
	metrics []*collectormetrics.ExportMetricsServiceRequest
}

func (c *otlpHTTP) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil || r.Header.Get("Content-Type") != "application/x-protobuf" {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch r.URL.Path {
	case "/v1/traces":
		req := &collectortrace.ExportTraceServiceRequest{}
		if proto.Unmarshal(body, req) == nil {
			c.traces = append(c.traces, req)
		}
		out, _ := proto.Marshal(&collectortrace.ExportTraceServiceResponse{})
		_, _ = w.Write(out)
	case "/v1/metrics":
		req := &collectormetrics.ExportMetricsServiceRequest{}
		if proto.Unmarshal(body, req) == nil {
			c.metrics = append(c.metrics, req)
		}
		out, _ := proto.Marshal(&collectormetrics.ExportMetricsServiceResponse{})
		_, _ = w.Write(out)
	default:
		http.NotFound(w, r)
	}
}

func spanNamesOf(reqs []*collectortrace.ExportTraceServiceRequest) (names []string, services []string) {
	for _, req := range reqs {
		for _, rs := range req.ResourceSpans {
			for _, a := range rs.Resource.Attributes {
				if a.Key == "service.name" {
					services = append(services, a.Value.GetStringValue())
				}
			}
			for _, ss := range rs.ScopeSpans {
				for _, s := range ss.Spans {
					names = append(names, s.Name)
				}
			}
		}
	}
	return names, services
}

func TestSetupExportsOverOTLPHTTP(t *testing.T) {
	clearOTelEnv(t)
	collector := &otlpHTTP{}
	srv := httptest.NewServer(collector)
	defer srv.Close()
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", srv.URL) // http:// means plaintext
	t.Setenv("OTEL_SERVICE_NAME", "billing")
	t.Setenv("OTEL_METRICS_EXPORTER", "otlp")

	tel, err := telemetry.Setup(context.Background(), telemetry.SetupConfig{ServiceName: "overridden-by-env", Prometheus: true})
	require.NoError(t, err)
	assert.True(t, tel.TracesExported)
	assert.True(t, tel.MetricsExported)
	assert.Equal(t, "otlp", tel.TracesExporter, "on by the endpoint alone")
	assert.Equal(t, "otlp", tel.MetricsExporter)
	assert.Equal(t, telemetry.ProtocolHTTP, tel.Protocol)
	_, span := tel.TracerProvider.Tracer("t").Start(context.Background(), "process orders")
	assert.True(t, span.IsRecording())
	span.End()
	metrics, err := middleware.NewMetrics(middleware.MetricsConfig{MeterProvider: tel.MeterProvider})
	require.NoError(t, err)
	metrics.RecordDuplicate(context.Background(), "orders-handler")

	// The Prometheus handler serves the same provider.
	rec := httptest.NewRecorder()
	tel.MetricsHandler.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	assert.Contains(t, rec.Body.String(), `antidote_messages_duplicates_total{handler="orders-handler"`)

	// Shutdown flushes the batch and the last metrics.
	require.NoError(t, tel.Shutdown(context.Background()))
	assert.NoError(t, tel.Shutdown(context.Background()), "idempotent")

	collector.mu.Lock()
	defer collector.mu.Unlock()
	names, services := spanNamesOf(collector.traces)
	assert.Equal(t, []string{"process orders"}, names)
	assert.Equal(t, []string{"billing"}, services, "OTEL_SERVICE_NAME wins over the config")
	var metricNames []string
	for _, req := range collector.metrics {
		for _, rm := range req.ResourceMetrics {
			for _, sm := range rm.ScopeMetrics {
				for _, m := range sm.Metrics {
					metricNames = append(metricNames, m.Name)
				}
			}
		}
	}
	assert.Contains(t, metricNames, middleware.MetricDuplicates)

}

type grpcCollector struct {
	collectortrace.UnimplementedTraceServiceServer
	got chan *collectortrace.ExportTraceServiceRequest
}

func (c *grpcCollector) Export(_ context.Context, req *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	c.got <- req
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

func TestSetupExportsOverOTLPGRPC(t *testing.T) {
	clearOTelEnv(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	server := grpc.NewServer()
	collector := &grpcCollector{got: make(chan *collectortrace.ExportTraceServiceRequest, 4)}
	collectortrace.RegisterTraceServiceServer(server, collector)
	go func() { _ = server.Serve(lis) }()
	defer server.Stop()

	t.Setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://"+lis.Addr().String())
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
	tel, err := telemetry.Setup(context.Background(), telemetry.SetupConfig{ServiceName: "billing"})
	require.NoError(t, err)
	assert.Equal(t, telemetry.ProtocolGRPC, tel.Protocol)
	assert.False(t, tel.MetricsExported)
	_, span := tel.TracerProvider.Tracer("t").Start(context.Background(), "send orders")
	span.End()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, tel.Shutdown(ctx))

	select {
	case req := <-collector.got:
		names, services := spanNamesOf([]*collectortrace.ExportTraceServiceRequest{req})
		assert.Equal(t, []string{"send orders"}, names)
		assert.Equal(t, []string{"billing"}, services, "the config's name when env has none")
	case <-time.After(5 * time.Second):
		t.Fatal("the gRPC collector received nothing")
	}
}

func TestSetupHonoursTheSamplerFromEnv(t *testing.T) {
	clearOTelEnv(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
	t.Setenv("OTEL_TRACES_SAMPLER", "always_off")
	tel, err := telemetry.Setup(context.Background(), telemetry.SetupConfig{})
	require.NoError(t, err)
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = tel.Shutdown(ctx) // nothing buffered: nothing is sent to the closed port
	}()
	_, span := tel.TracerProvider.Tracer("t").Start(context.Background(), "x")
	assert.False(t, span.SpanContext().IsSampled())
	span.End()
}

func TestNewPrometheusMeterProvider(t *testing.T) {
	mp, handler, err := telemetry.NewPrometheusMeterProvider()
	require.NoError(t, err)
	metrics, err := middleware.NewMetrics(middleware.MetricsConfig{
		MeterProvider: mp,
		DLQDepth:      func(context.Context) (map[string]int64, error) { return map[string]int64{"orders.dlq": 3}, nil },
	})
	require.NoError(t, err)
	defer metrics.Close()
	ctx := context.Background()
	metrics.RecordDuplicate(ctx, "orders-handler")
	metrics.RecordThrottleWait(ctx, "orders-handler", 250*time.Millisecond)
	metrics.RecordBreakerState(ctx, "closed", "open")
	metrics.RecordBackpressureBlock(ctx, "orders", time.Second)
	h := metrics.Middleware(func(*message.Message) ([]*message.Message, error) { return nil, nil })
	_, err = h(message.NewMessage("1", nil))
	require.NoError(t, err)

	rec := httptest.NewRecorder()
	handler.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	require.Equal(t, http.StatusOK, rec.Code)
	body := rec.Body.String()
	for _, want := range []string{
		`antidote_messages_duplicates_total{handler="orders-handler"`,
		`antidote_throttle_wait_seconds_total{handler="orders-handler"`,
		`antidote_breaker_state{`,
		`antidote_breaker_transitions_total{from="closed"`,
		`antidote_backpressure_blocks_total{`,
		`antidote_backpressure_wait_seconds_total{`,
		`antidote_messages_processed_total{handler=""`,
		`antidote_handler_duration_seconds_bucket{handler=""`,
		`antidote_dlq_depth{`,
		`go_goroutines `, // the runtime collector
		// The semconv metrics, as dashboards built on the conventions expect them.
		`messaging_process_duration_seconds_bucket{`,
		`messaging_process_duration_seconds_count{`,
		`messaging_client_consumed_messages_total{`,
		`messaging_operation_name="process"`,
	} {
		assert.Contains(t, body, want)
	}
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, "antidote_dlq_depth{") {
			assert.Contains(t, line, `topic="orders.dlq"`)
			assert.True(t, strings.HasSuffix(line, " 3"), line)
		}
	}

	// Two providers in one process do not collide (private registries).
	_, _, err = telemetry.NewPrometheusMeterProvider()
	assert.NoError(t, err)
}
