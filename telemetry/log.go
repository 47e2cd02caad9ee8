package telemetry

import (
	"context"
	"log/slog"

	"go.opentelemetry.io/otel/trace"
)

// Log attribute names of the trace context, as the middleware's own log
// lines name them too (middleware.LogFieldTraceID, LogFieldSpanID).
const (
	LogTraceID = "trace_id"
	LogSpanID  = "span_id"
)

// NewLogHandler wraps inner so that every record logged with a context
// holding a span (slog.InfoContext(msg.Context(), ...) in a handler below
// middleware.Tracing) carries the span's trace_id and span_id (W3C hex),
// which log backends use to jump from a log line to its trace. Records
// without a span, or logged without a context, pass through unchanged.
//
//	logger := slog.New(telemetry.NewLogHandler(slog.NewJSONHandler(os.Stderr, nil)))
//	wmLogger := watermill.NewSlogLogger(logger) // for the router and the middleware
//
// Watermill's LoggerAdapter has no context, so the middleware adds the
// same two fields to its own lines about a message itself.
func NewLogHandler(inner slog.Handler) slog.Handler {
	if h, ok := inner.(logHandler); ok {
		return h // already wrapped
	}
	return logHandler{inner: inner}
}

type logHandler struct{ inner slog.Handler }

func (h logHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return h.inner.Enabled(ctx, level)
}

func (h logHandler) Handle(ctx context.Context, r slog.Record) error {
	if ctx != nil {
		if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
			r = r.Clone() // the caller's record may be shared with other handlers
			r.AddAttrs(slog.String(LogTraceID, sc.TraceID().String()), slog.String(LogSpanID, sc.SpanID().String()))
		}
	}
	return h.inner.Handle(ctx, r)
}

func (h logHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return logHandler{inner: h.inner.WithAttrs(attrs)}
}

func (h logHandler) WithGroup(name string) slog.Handler {
	return logHandler{inner: h.inner.WithGroup(name)}
}
