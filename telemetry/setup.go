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

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
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

// Protocols of OTEL_EXPORTER_OTLP_PROTOCOL that Setup supports.
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
	// Prometheus adds a pull reader on a private Prometheus registry (with
	// the Go runtime and process collectors) and returns its handler in
	// Telemetry.MetricsHandler, whatever the OTLP settings. Default false.
	Prometheus bool
	// SetGlobal also installs the providers and Propagator() as the otel
	// globals, for third-party instrumentation that only reads globals.
	// Default false: Antidote takes providers in its configs, and a library
	// user may own the globals. Shutdown does not undo it.
	SetGlobal bool
}

// Telemetry is what Setup built.
type Telemetry struct {
	// TracerProvider: an SDK provider exporting over OTLP, or a no-op one
	// when traces are off.
	TracerProvider trace.TracerProvider
	// MeterProvider: an SDK provider (OTLP and/or Prometheus readers), or a
	// no-op one when both are off.
	MeterProvider metric.MeterProvider
	// Propagator is Propagator().
	Propagator propagation.TextMapPropagator
	// MetricsHandler serves the Prometheus text format (nil unless
	// SetupConfig.Prometheus): mount it on /metrics.
	MetricsHandler http.Handler
	// TracesExported and MetricsExported say whether OTLP export is on.
	TracesExported, MetricsExported bool
	// Protocol is the OTLP protocol in use for traces ("" when off).
	Protocol string

	shutdown []func(context.Context) error
	once     sync.Once
	err      error
}

// Shutdown flushes what is buffered and stops the exporters' goroutines
// (batch span processor, periodic metric reader), within ctx. Safe to call
// more than once; later calls return the first result.
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
// from the standard OTEL_* variables, not installed globally. With no OTLP
// endpoint configured it returns no-op providers and a shutdown that does
// nothing, so a program can call it unconditionally. Call shutdown before
// exit to flush the last spans.
func SetupFromEnv(ctx context.Context) (trace.TracerProvider, metric.MeterProvider, func(context.Context) error, error) {
	t, err := Setup(ctx, SetupConfig{})
	if err != nil {
		return nil, nil, nil, err
	}
	return t.TracerProvider, t.MeterProvider, t.Shutdown, nil
}

// Setup builds tracer and meter providers from the standard OTel
// environment (it reads env: the one place in Antidote besides the
// ...FromEnv helpers):
//
//   - Traces are exported over OTLP when OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
//     or OTEL_EXPORTER_OTLP_ENDPOINT is set (e.g. http://127.0.0.1:4318 for
//     Jaeger's OTLP/HTTP port, http://127.0.0.1:4317 with protocol grpc),
//     unless OTEL_TRACES_EXPORTER=none or OTEL_SDK_DISABLED=true. Otherwise
//     the tracer provider is a no-op.
//   - Protocol: OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, else
//     OTEL_EXPORTER_OTLP_PROTOCOL: "http/protobuf" (default, as the spec
//     says) or "grpc"; "http/json" is not supported by the Go exporters and
//     is an error.
//   - The exporters read the rest themselves: OTEL_EXPORTER_OTLP_HEADERS,
//     _TIMEOUT, _COMPRESSION, _CERTIFICATE, _INSECURE (an http:// endpoint
//     is plaintext).
//   - Sampling: OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG (default
//     parentbased_always_on); batching: OTEL_BSP_*.
//   - Resource: OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, over
//     cfg.ServiceName.
//   - Metrics go over OTLP only when asked for: OTEL_METRICS_EXPORTER=otlp
//     (to the general endpoint) or OTEL_EXPORTER_OTLP_METRICS_ENDPOINT set.
//     Unlike the spec's default, the general endpoint alone does not turn
//     them on, because it usually points at a tracing backend (Jaeger's
//     all-in-one has a traces pipeline only, and the exporter would log an
//     error every interval);
//     Prometheus (cfg.Prometheus) is the usual way. Protocol:
//     OTEL_EXPORTER_OTLP_METRICS_PROTOCOL, else the general one; interval:
//     OTEL_METRIC_EXPORT_INTERVAL.
//
// Nothing connects here: exporters dial on first export, so an unreachable
// collector never fails startup (spans are dropped and the SDK reports it
// through otel's error handler). Call Shutdown before exit.
func Setup(ctx context.Context, cfg SetupConfig) (*Telemetry, error) {
	t := &Telemetry{Propagator: Propagator()}
	disabled := strings.EqualFold(env("OTEL_SDK_DISABLED"), "true")

	tracesOn, err := exporterWanted("OTEL_TRACES_EXPORTER", !disabled &&
		(env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != "" || env("OTEL_EXPORTER_OTLP_ENDPOINT") != ""))
	if err != nil {
		return nil, err
	}
	metricsOn := !disabled && (env("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") != "" ||
		(strings.EqualFold(env("OTEL_METRICS_EXPORTER"), "otlp") && env("OTEL_EXPORTER_OTLP_ENDPOINT") != ""))
	if v := env("OTEL_METRICS_EXPORTER"); v != "" && !strings.EqualFold(v, "otlp") && !strings.EqualFold(v, "none") {
		return nil, fmt.Errorf("telemetry: OTEL_METRICS_EXPORTER=%q is not supported: use otlp or none (or SetupConfig.Prometheus for a scrape endpoint)", v)
	}
	if strings.EqualFold(env("OTEL_METRICS_EXPORTER"), "none") {
		metricsOn = false
	}

	var res *resource.Resource
	if tracesOn || metricsOn || cfg.Prometheus {
		if res, err = newResource(ctx, cfg); err != nil {
			return nil, err
		}
	}
	// On a later error, undo what was built so no goroutine is left behind.
	fail := func(err error) (*Telemetry, error) {
		_ = t.Shutdown(ctx)
		return nil, err
	}

	t.TracerProvider = tracenoop.NewTracerProvider()
	if tracesOn {
		proto, err := protocol("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
		if err != nil {
			return fail(err)
		}
		var exp sdktrace.SpanExporter
		if proto == ProtocolGRPC {
			exp, err = otlptracegrpc.New(ctx)
		} else {
			exp, err = otlptracehttp.New(ctx)
		}
		if err != nil {
			return fail(fmt.Errorf("telemetry: OTLP trace exporter (%s): %w", proto, err))
		}
		// The sampler is left to the SDK, which reads OTEL_TRACES_SAMPLER.
		tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
		t.TracerProvider, t.TracesExported, t.Protocol = tp, true, proto
		t.shutdown = append(t.shutdown, tp.Shutdown)
	}

	t.MeterProvider = metricnoop.NewMeterProvider()
	var readers []sdkmetric.Option
	if metricsOn {
		proto, err := protocol("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL")
		if err != nil {
			return fail(err)
		}
		var exp sdkmetric.Exporter
		if proto == ProtocolGRPC {
			exp, err = otlpmetricgrpc.New(ctx)
		} else {
			exp, err = otlpmetrichttp.New(ctx)
		}
		if err != nil {
			return fail(fmt.Errorf("telemetry: OTLP metric exporter (%s): %w", proto, err))
		}
		readers = append(readers, sdkmetric.WithReader(sdkmetric.NewPeriodicReader(exp)))
		t.MetricsExported = true
	}
	if cfg.Prometheus {
		reader, handler, err := newPrometheusReader()
		if err != nil {
			return fail(err)
		}
		readers = append(readers, sdkmetric.WithReader(reader))
		t.MetricsHandler = handler
	}
	if len(readers) > 0 {
		mp := sdkmetric.NewMeterProvider(append(readers, sdkmetric.WithResource(res))...)
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

// exporterWanted applies OTEL_{TRACES,METRICS}_EXPORTER to on: "none" turns
// export off, "otlp" or unset keeps on, anything else is an error (rather
// than silently exporting nothing).
func exporterWanted(key string, on bool) (bool, error) {
	switch v := env(key); strings.ToLower(v) {
	case "", "otlp":
		return on, nil
	case "none":
		return false, nil
	default:
		return false, fmt.Errorf("telemetry: %s=%q is not supported: use otlp or none", key, v)
	}
}

// protocol reads the signal's OTLP protocol, then the general one.
func protocol(signalKey string) (string, error) {
	key, v := signalKey, env(signalKey)
	if v == "" {
		key, v = "OTEL_EXPORTER_OTLP_PROTOCOL", env("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	switch strings.ToLower(v) {
	case "", ProtocolHTTP:
		return ProtocolHTTP, nil
	case ProtocolGRPC:
		return ProtocolGRPC, nil
	default:
		return "", fmt.Errorf("telemetry: %s=%q is not supported: use %s (default) or %s", key, v, ProtocolHTTP, ProtocolGRPC)
	}
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
