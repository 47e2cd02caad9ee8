// Package telemetry carries OpenTelemetry trace context through messages
// and sets up exporters, so one trace shows a message's whole story: the
// producer's publish, every attempt, the retry stages, the dead-letter
// publish and, later, the replay (linked).
//
//   - MetadataCarrier, Inject, Extract: W3C traceparent/tracestate/baggage in
//     message.Metadata, which every Antidote broker carries (Kafka headers,
//     AMQP headers, the PostgreSQL metadata column).
//   - NewPublisher, NewScheduler: decorators that start a producer span per
//     message ("send <topic>", OpenTelemetry messaging conventions) as the
//     child of msg.Context() and inject it, and record the semconv producer
//     metrics. Wrap the producer's publisher, the DeadLetter publisher and
//     the DelayedRetry scheduler with them.
//   - Setup, SetupFromEnv: tracer and meter providers from the standard
//     OTEL_* environment, exporters chosen as contrib autoexport does
//     (otlp, console, prometheus, none), no-ops when nothing is configured.
//     They return providers; only Setup with SetGlobal touches the otel
//     globals.
//   - NewPrometheusMeterProvider(For): metrics on an http.Handler for
//     scraping, on a private registry or the caller's.
//   - NewLogHandler: slog records logged with a span's context carry its
//     trace_id and span_id.
//
// The consumer side is middleware.Tracing and middleware.Metrics, which use
// only the OTel API; the SDK is imported here and nowhere in the library's
// middleware.
package telemetry
