package telemetry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/contrib/exporters/autoexport"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
)

// Protocols of OTEL_EXPORTER_OTLP_PROTOCOL that the OTLP exporters support.
const (
	ProtocolHTTP = "http/protobuf"
	ProtocolGRPC = "grpc"
)

// SetupConfig configures Setup. The zero value is SetupFromEnv.
type SetupConfig struct {
	// ServiceName is service.name when neither OTEL_SERVICE_NAME nor
	// OTEL_RESOURCE_ATTRIBUTES names the service (env wins, as the OTel
	// spec wants: operators rename services without a rebuild). Default
	// "unknown_service:<executable>".
	ServiceName string
	// ServiceVersion is service.version unless env sets it. Optional.
	ServiceVersion string
	// Prometheus adds a pull reader and returns its handler in
	// Telemetry.MetricsHandler, whatever OTEL_METRICS_EXPORTER says (which
	// may add an OTLP, console or Prometheus reader of its own). Default
	// false.
	Prometheus bool
	// Registerer is where the Prometheus reader registers its collector
	// (with Prometheus true): e.g. prometheus.DefaultRegisterer, or a
	// service's own registry, so Antidote's metrics are served beside the
	// service's. MetricsHandler then serves it when it is also a
	// prometheus.Gatherer (a *prometheus.Registry, the default registerer),
	// else it is nil and the caller serves its registry. Default: a private
	// registry with the Go runtime and process collectors, so two setups in
	// one process do not collide.
	Registerer prometheus.Registerer
	// SetGlobal also installs the providers and Propagator() as the otel
	// globals, for third-party instrumentation that only reads globals.
	// Default false: Antidote takes providers in its configs, and a library
	// user may own the globals. Shutdown does not undo it.
	SetGlobal bool
}

// Telemetry is what Setup built.
type Telemetry struct {
	// TracerProvider: an SDK provider exporting with the exporter
	// OTEL_TRACES_EXPORTER chose, or a no-op one when traces are off.
	TracerProvider trace.TracerProvider
	// MeterProvider: an SDK provider (the OTEL_METRICS_EXPORTER reader
	// and/or the Prometheus one), or a no-op one when both are off.
	MeterProvider metric.MeterProvider
	// Propagator is Propagator().
	Propagator propagation.TextMapPropagator
	// MetricsHandler serves the Prometheus text format (nil unless
	// SetupConfig.Prometheus): mount it on /metrics.
	MetricsHandler http.Handler
	// TracesExported and MetricsExported say whether spans, and metrics
	// other than SetupConfig.Prometheus's, go to an exporter.
	TracesExported, MetricsExported bool
	// TracesExporter and MetricsExporter name the exporter in use ("otlp",
	// "console", "prometheus" for metrics, or another name registered with
	// autoexport); "" when off.
	TracesExporter, MetricsExporter string
	// Protocol is the OTLP protocol in use for traces ("" unless they go
	// over OTLP).
	Protocol string

	shutdown []func(context.Context) error
	once     sync.Once
	err      error
}

// Shutdown flushes what is buffered and stops the exporters' goroutines
// (batch span processor, periodic metric reader, the Prometheus server of
// OTEL_METRICS_EXPORTER=prometheus), within ctx. Safe to call more than
// once; later calls return the first result.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	t.once.Do(func() {
		var errs []error
		for _, f := range t.shutdown {
			errs = append(errs, f(ctx))
		}
		if err := errors.Join(errs...); err != nil {
			t.err = fmt.Errorf("telemetry: shutdown: %w", err)
		}
	})
	return t.err
}

// SetupFromEnv is Setup(ctx, SetupConfig{}): tracer and meter providers
// from the standard OTEL_* variables, not installed globally. With nothing
// configured it returns no-op providers and a shutdown that does nothing,
// so a program can call it unconditionally. Call shutdown before exit to
// flush the last spans.
func SetupFromEnv(ctx context.Context) (trace.TracerProvider, metric.MeterProvider, func(context.Context) error, error) {
	t, err := Setup(ctx, SetupConfig{})
	if err != nil {
		return nil, nil, nil, err
	}
	return t.TracerProvider, t.MeterProvider, t.Shutdown, nil
}

// Setup builds tracer and meter providers from the standard OTel
// environment, choosing exporters the way the contrib autoexport package
// does (it is autoexport underneath: go.opentelemetry.io/contrib/exporters/autoexport):
//
//   - OTEL_TRACES_EXPORTER: "otlp", "console" (stdout), "none", or a name
//     registered with autoexport.RegisterSpanExporter; anything else is an
//     error. Unset, Antidote differs from autoexport's default ("otlp" to
//     localhost:4318 whether or not anything listens): traces are exported
//     over OTLP only when OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or
//     OTEL_EXPORTER_OTLP_ENDPOINT is set (e.g. http://127.0.0.1:4318 for
//     Jaeger's OTLP/HTTP port), and are off otherwise: a program can call
//     Setup unconditionally.
//   - OTEL_METRICS_EXPORTER: "otlp", "console", "prometheus" (its own HTTP
//     server on OTEL_EXPORTER_PROMETHEUS_HOST:OTEL_EXPORTER_PROMETHEUS_PORT,
//     default localhost:9464, path /metrics), "none", or a registered name.
//     Unset, metrics go over OTLP only when
//     OTEL_EXPORTER_OTLP_METRICS_ENDPOINT is set: the general endpoint
//     alone usually points at a tracing backend (Jaeger's all-in-one has a
//     traces pipeline only, and the exporter would log an error every
//     interval). SetupConfig.Prometheus adds a handler to mount yourself.
//   - OTEL_SDK_DISABLED=true turns both off.
//   - OTLP protocol: OTEL_EXPORTER_OTLP_{TRACES,METRICS}_PROTOCOL, else
//     OTEL_EXPORTER_OTLP_PROTOCOL: "http/protobuf" (default) or "grpc";
//     anything else is an error. The exporters read the rest themselves:
//     OTEL_EXPORTER_OTLP_HEADERS, _TIMEOUT, _COMPRESSION, _CERTIFICATE,
//     _INSECURE (an http:// endpoint is plaintext), OTEL_METRIC_EXPORT_INTERVAL.
//   - Sampling: OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG (default
//     parentbased_always_on); batching: OTEL_BSP_*.
//   - Resource: OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, over
//     cfg.ServiceName.
//
// Nothing connects here: exporters dial on first export, so an unreachable
// collector never fails startup (spans are dropped and the SDK reports it
// through otel's error handler). OTEL_METRICS_EXPORTER=prometheus does bind
// its port here. Call Shutdown before exit.
func Setup(ctx context.Context, cfg SetupConfig) (*Telemetry, error) {
	t := &Telemetry{Propagator: Propagator()}
	disabled := strings.EqualFold(env("OTEL_SDK_DISABLED"), "true")
	tracesOn := !disabled && (env("OTEL_TRACES_EXPORTER") != "" ||
		env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != "" || env("OTEL_EXPORTER_OTLP_ENDPOINT") != "")
	metricsOn := !disabled && (env("OTEL_METRICS_EXPORTER") != "" || env("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") != "")

	// On a later error, undo what was built so no goroutine is left behind.
	var pending sdkmetric.Reader // a reader no provider owns yet
	fail := func(err error) (*Telemetry, error) {
		if pending != nil {
			_ = pending.Shutdown(ctx)
		}
		_ = t.Shutdown(ctx)
		return nil, err
	}
	var res *resource.Resource
	resourceOf := func() (*resource.Resource, error) {
		if res == nil {
			var err error
			res, err = newResource(ctx, cfg)
			return res, err
		}
		return res, nil
	}

	t.TracerProvider = tracenoop.NewTracerProvider()
	if tracesOn {
		exp, err := autoexport.NewSpanExporter(ctx)
		if err != nil {
			return fail(exporterError("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", err))
		}
		if !autoexport.IsNoneSpanExporter(exp) {
			r, err := resourceOf()
			if err != nil {
				_ = exp.Shutdown(ctx)
				return fail(err)
			}
			// The sampler is left to the SDK, which reads OTEL_TRACES_SAMPLER.
			tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(r))
			t.TracerProvider, t.TracesExported = tp, true
			t.TracesExporter = exporterName("OTEL_TRACES_EXPORTER")
			if t.TracesExporter == "otlp" {
				t.Protocol = otlpProtocol("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
			}
			t.shutdown = append(t.shutdown, tp.Shutdown)
		}
	}

	t.MeterProvider = metricnoop.NewMeterProvider()
	var readers []sdkmetric.Option
	if metricsOn {
		reader, err := autoexport.NewMetricReader(ctx)
		if err != nil {
			return fail(exporterError("OTEL_METRICS_EXPORTER", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", err))
		}
		if autoexport.IsNoneMetricReader(reader) {
			_ = reader.Shutdown(ctx)
		} else {
			readers = append(readers, sdkmetric.WithReader(reader))
			t.MetricsExported = true
			t.MetricsExporter = exporterName("OTEL_METRICS_EXPORTER")
			// Until the provider owns it, a failure below must stop it
			// (OTEL_METRICS_EXPORTER=prometheus runs a server).
			pending = reader
		}
	}
	if cfg.Prometheus {
		reader, handler, err := newPrometheusReader(cfg.Registerer)
		if err != nil {
			return fail(err)
		}
		readers = append(readers, sdkmetric.WithReader(reader))
		t.MetricsHandler = handler
	}
	if len(readers) > 0 {
		r, err := resourceOf()
		if err != nil {
			return fail(err)
		}
		mp := sdkmetric.NewMeterProvider(append(readers, sdkmetric.WithResource(r))...)
		pending = nil // the provider's Shutdown stops it
		t.MeterProvider = mp
		t.shutdown = append(t.shutdown, mp.Shutdown)
	}

	if cfg.SetGlobal {
		otel.SetTracerProvider(t.TracerProvider)
		otel.SetMeterProvider(t.MeterProvider)
		otel.SetTextMapPropagator(t.Propagator)
	}
	return t, nil
}

func env(key string) string { return strings.TrimSpace(os.Getenv(key)) }

// exporterName is the exporter key's value, "otlp" when unset (the
// endpoint turned it on).
func exporterName(key string) string {
	if v := env(key); v != "" {
		return v
	}
	return "otlp"
}

// otlpProtocol reads the signal's OTLP protocol, then the general one.
func otlpProtocol(signalKey string) string {
	if v := env(signalKey); v != "" {
		return v
	}
	if v := env("OTEL_EXPORTER_OTLP_PROTOCOL"); v != "" {
		return v
	}
	return ProtocolHTTP
}

// exporterError names the variables that autoexport's error is about.
func exporterError(exporterKey, protocolKey string, err error) error {
	return fmt.Errorf("telemetry: %s=%q, %s=%q, OTEL_EXPORTER_OTLP_PROTOCOL=%q: %w (exporters: otlp, console, none%s; protocols: %s, %s)",
		exporterKey, env(exporterKey), protocolKey, env(protocolKey), env("OTEL_EXPORTER_OTLP_PROTOCOL"), err,
		map[bool]string{true: ", prometheus"}[exporterKey == "OTEL_METRICS_EXPORTER"], ProtocolHTTP, ProtocolGRPC)
}

func newResource(ctx context.Context, cfg SetupConfig) (*resource.Resource, error) {
	name := cfg.ServiceName
	if name == "" {
		name = "unknown_service:" + filepath.Base(os.Args[0])
	}
	defaults := []resource.Option{resource.WithAttributes(semconv.ServiceName(name))}
	if cfg.ServiceVersion != "" {
		defaults = append(defaults, resource.WithAttributes(semconv.ServiceVersion(cfg.ServiceVersion)))
	}
	// Later options win: env over the config's defaults.
	res, err := resource.New(ctx, append(defaults, resource.WithTelemetrySDK(), resource.WithFromEnv())...)
	if err != nil {
		return nil, fmt.Errorf("telemetry: building the resource (check OTEL_RESOURCE_ATTRIBUTES): %w", err)
	}
	return res, nil
}
