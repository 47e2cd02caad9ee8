package telemetry_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/antidote-mq/antidote/telemetry"
)

func TestLogHandlerAddsTheSpanOfTheContext(t *testing.T) {
	tp, _ := newTP()
	var buf bytes.Buffer
	logger := slog.New(telemetry.NewLogHandler(slog.NewJSONHandler(&buf, nil))).With("service", "billing")
	ctx, span := tp.Tracer("t").Start(context.Background(), "process orders")
	defer span.End()

	lines := func() []map[string]any {
		var out []map[string]any
		dec := json.NewDecoder(&buf)
		for dec.More() {
			var m map[string]any
			require.NoError(t, dec.Decode(&m))
			out = append(out, m)
		}
		buf.Reset()
		return out
	}

	logger.InfoContext(ctx, "charged", "amount", 3)
	logger.Info("no context")
	logger.InfoContext(context.Background(), "no span")
	logger.WithGroup("req").InfoContext(ctx, "grouped", "id", 7)
	got := lines()
	require.Len(t, got, 4)
	assert.Equal(t, span.SpanContext().TraceID().String(), got[0]["trace_id"])
	assert.Equal(t, span.SpanContext().SpanID().String(), got[0]["span_id"])
	assert.Equal(t, "billing", got[0]["service"], "WithAttrs keeps the wrapper")
	assert.EqualValues(t, 3, got[0]["amount"])
	for _, l := range got[1:3] {
		assert.NotContains(t, l, "trace_id", l["msg"])
		assert.NotContains(t, l, "span_id", l["msg"])
	}
	group, ok := got[3]["req"].(map[string]any)
	require.True(t, ok, "%v", got[3])
	assert.Equal(t, span.SpanContext().TraceID().String(), group["trace_id"], "WithGroup keeps the wrapper (the ids go into the open group)")

	h := telemetry.NewLogHandler(slog.NewTextHandler(&buf, nil))
	assert.Equal(t, h, telemetry.NewLogHandler(h), "wrapping twice adds the ids once")
}
