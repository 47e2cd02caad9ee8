package middleware

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/internal/otelconv"
)

// DefaultDurationBuckets are the handler-duration histogram bounds, in
// seconds: from a millisecond (a cache hit) to a minute (a message that
// waited through Retry's backoff), since a delivery's duration includes its
// retries.
var DefaultDurationBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}

// Metric names. With the Prometheus exporter dots become underscores,
// counters get "_total" and seconds "_seconds".
const (
	MetricProcessed        = "antidote.messages.processed"
	MetricFailed           = "antidote.messages.failed"
	MetricRetried          = "antidote.messages.retried"
	MetricRetryScheduled   = "antidote.messages.retry_scheduled"
	MetricDeadLettered     = "antidote.messages.dead_lettered"
	MetricDuplicates       = "antidote.messages.duplicates"
	MetricHandlerDuration  = "antidote.handler.duration"
	MetricThrottleWait     = "antidote.throttle.wait"
	MetricBackpressure     = "antidote.backpressure.blocks"
	MetricBackpressureWait = "antidote.backpressure.wait"
	MetricBreakerState     = "antidote.breaker.state"
	MetricBreakerChanges   = "antidote.breaker.transitions"
	MetricBreakerHeld      = "antidote.breaker.held"
	MetricDLQDepth         = "antidote.dlq.depth"
	MetricConsumerLag      = "antidote.consumer.lag"

	// The OpenTelemetry messaging conventions' consumer metrics (semconv
	// v1.43.0), beside Antidote's own: Prometheus names
	// messaging_process_duration_seconds and
	// messaging_client_consumed_messages_total.
	MetricProcessDuration  = "messaging.process.duration"
	MetricConsumedMessages = "messaging.client.consumed.messages"
)

// SemconvDurationBuckets are the bounds (seconds) the messaging conventions
// advise for messaging.process.duration.
var SemconvDurationBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10}

// Metric attribute keys: short, since they become Prometheus labels.
const (
	MetricAttrHandler = attribute.Key("handler")
	MetricAttrOutcome = attribute.Key("outcome")
	MetricAttrReason  = attribute.Key("reason")
	MetricAttrTopic   = attribute.Key("topic")
	MetricAttrFrom    = attribute.Key("from")
	MetricAttrTo      = attribute.Key("to")
)

// MetricsConfig configures Metrics. The zero value is usable.
type MetricsConfig struct {
	// MeterProvider creates the instruments. Default: the global provider
	// (otel.GetMeterProvider()) as it is when NewMetrics runs, a no-op until
	// a program installs one. telemetry.NewPrometheusMeterProvider and
	// telemetry.Setup return one.
	MeterProvider metric.MeterProvider
	// DurationBuckets are the explicit bounds (seconds, ascending) of the
	// handler duration histogram. Default DefaultDurationBuckets. More
	// buckets cost one series each per handler and outcome.
	DurationBuckets []float64
	// DLQDepth, when set, is read at every metrics collection and reported
	// as the gauge antidote.dlq.depth, one series per DLQ topic (the map's
	// keys). Optional, and only where it is cheap: it runs on the exporter's
	// schedule (every scrape or export interval) under the collection's
	// context, so it must answer quickly, e.g. a cached count or a
	// PostgreSQL count of a small table. An error skips that collection.
	// If nil, the gauge is not reported.
	DLQDepth func(ctx context.Context) (map[string]int64, error)
	// ConsumerLag, when set, is read at every metrics collection like
	// DLQDepth and reported as the gauge antidote.consumer.lag (Prometheus
	// antidote_consumer_lag), one series per topic (the map's keys): how
	// many messages wait to be consumed (an adapters.LagSource's Lag per
	// topic). If nil, the gauge is not reported.
	ConsumerLag func(ctx context.Context) (map[string]int64, error)

	// System, ConsumerGroup and ServerAddress are the semconv attributes
	// messaging.system, messaging.consumer.group.name and
	// server.address/server.port of messaging.process.duration and
	// messaging.client.consumed.messages, as in TracingConfig. Optional.
	// router.New fills them when unset here from router.Config.Consumer,
	// else from its Tracing config.
	System, ConsumerGroup, ServerAddress string
}

func (c *MetricsConfig) setDefaults() {
	if c.MeterProvider == nil {
		c.MeterProvider = otel.GetMeterProvider()
	}
	if len(c.DurationBuckets) == 0 {
		c.DurationBuckets = DefaultDurationBuckets
	}
}

// Validate reports every invalid field of c, after defaults are applied
// (NewMetrics applies them first), in field order, joined with errors.Join.
// The zero value is valid.
func (c MetricsConfig) Validate() error {
	var errs []error
	for i := 1; i < len(c.DurationBuckets); i++ {
		if c.DurationBuckets[i] <= c.DurationBuckets[i-1] {
			errs = append(errs, fmt.Errorf("antidote: MetricsConfig.DurationBuckets must be strictly ascending; bucket %d (%v) is not above bucket %d (%v)", i, c.DurationBuckets[i], i-1, c.DurationBuckets[i-1]))
			break
		}
	}
	return errors.Join(errs...)
}

// Metrics counts deliveries by handler and outcome with the OpenTelemetry
// metric API. Build it with NewMetrics; put Middleware on the router right
// below Tracing (above the crash-loop guard and DeadLetter).
//
// The middleware alone records, per handler: processed, failed (nacked,
// label outcome "failed" or "deferred"), retried (each of Retry's retries,
// as it happens), retry_scheduled (moved to a delayed stage),
// dead_lettered (label reason), duplicates (when RecordDuplicate is wired)
// and the handler duration histogram (label outcome). The events that
// other components own come in through the Record methods, which the caller
// wires to their callbacks:
//
//	IdempotencyConfig.OnDuplicate      → RecordDuplicate
//	ThrottleConfig.OnWait              → RecordThrottleWait
//	throttle.BackpressureConfig.OnWait → RecordBackpressureBlock
//	BreakerConfig.OnStateChange        → RecordBreakerState
//	BreakerConfig.OnHold               → RecordBreakerHold
//
// Do not wire RetryConfig.OnRetry to anything here: Retry reports to
// Metrics through the message context, with the handler name.
//
// A nil *Metrics is valid: every Record method is then a no-op, so callers
// can wire hooks unconditionally.
type Metrics struct {
	cfg MetricsConfig

	processed, failed, retried, scheduled, deadLettered, duplicates metric.Int64Counter
	backpressure, breakerChanges                                    metric.Int64Counter
	throttleWait, backpressureWait                                  metric.Float64Counter
	duration                                                        metric.Float64Histogram
	breakerState                                                    metric.Int64Gauge
	breakerHeld                                                     metric.Int64UpDownCounter
	processDuration                                                 metric.Float64Histogram
	consumed                                                        metric.Int64Counter
	semconvBase                                                     []attribute.KeyValue // system, operation, group, server

	registrations []metric.Registration // the DLQ depth and lag callbacks, if any

	// attribute sets are built once per label combination: a delivery
	// then records without allocating them again.
	opts        sync.Map // metricsOptKey → *metricOpts
	semconvOpts sync.Map // semconvOptKey → *metricOpts

	noop bool // the MeterProvider is metric/noop's: Middleware adds nothing
}

type metricsOptKey struct {
	kind byte
	a, b string
}

// semconvOptKey is what the semconv consumer metrics' attributes vary by.
type semconvOptKey struct{ topic, errorType string }

// NewMetrics fills cfg's defaults, validates it (see MetricsConfig.Validate)
// and creates the instruments.
func NewMetrics(cfg MetricsConfig) (*Metrics, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	meter := cfg.MeterProvider.Meter(antidote.TracerName, metric.WithSchemaURL(semconv.SchemaURL))
	m := &Metrics{cfg: cfg}
	switch cfg.MeterProvider.(type) {
	case metricnoop.MeterProvider, *metricnoop.MeterProvider:
		m.noop = true
	}
	var errs []error
	counter := func(name, unit, desc string) metric.Int64Counter {
		c, err := meter.Int64Counter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return c
	}
	seconds := func(name, desc string) metric.Float64Counter {
		c, err := meter.Float64Counter(name, metric.WithUnit("s"), metric.WithDescription(desc))
		errs = append(errs, err)
		return c
	}
	m.processed = counter(MetricProcessed, "{message}", "Messages the handler processed successfully (acked).")
	m.failed = counter(MetricFailed, "{message}", "Messages that ended in an error and were nacked, to be delivered again (outcome failed or deferred).")
	m.retried = counter(MetricRetried, "{retry}", "In-process retries of a failed handler attempt.")
	m.scheduled = counter(MetricRetryScheduled, "{message}", "Messages moved to a delayed (non-blocking) retry stage.")
	m.deadLettered = counter(MetricDeadLettered, "{message}", "Messages published to the dead-letter queue, by reason.")
	m.duplicates = counter(MetricDuplicates, "{message}", "Messages skipped because their idempotency key was already processed.")
	m.backpressure = counter(MetricBackpressure, "{block}", "Publishes that waited for consumers to catch up (producer backpressure).")
	m.breakerChanges = counter(MetricBreakerChanges, "{transition}", "State changes of the DLQ-storm circuit breaker.")
	m.throttleWait = seconds(MetricThrottleWait, "Time handlers waited for the throttle.")
	m.backpressureWait = seconds(MetricBackpressureWait, "Time publishers waited under backpressure.")
	var err error
	m.duration, err = meter.Float64Histogram(MetricHandlerDuration, metric.WithUnit("s"),
		metric.WithDescription("Time from a delivery entering the middleware stack to its outcome, retries included."),
		metric.WithExplicitBucketBoundaries(cfg.DurationBuckets...))
	errs = append(errs, err)
	m.breakerState, err = meter.Int64Gauge(MetricBreakerState, metric.WithUnit("{state}"),
		metric.WithDescription("DLQ-storm breaker state: 0 closed, 1 half-open, 2 open."))
	errs = append(errs, err)
	m.breakerHeld, err = meter.Int64UpDownCounter(MetricBreakerHeld, metric.WithUnit("{message}"),
		metric.WithDescription("Messages the DLQ-storm breaker holds back now (nacked after a backoff instead of dead-lettered), by handler."))
	errs = append(errs, err)
	m.processDuration, err = meter.Float64Histogram(MetricProcessDuration, metric.WithUnit("s"),
		metric.WithDescription("Duration of processing operation."),
		metric.WithExplicitBucketBoundaries(SemconvDurationBuckets...))
	errs = append(errs, err)
	m.consumed, err = meter.Int64Counter(MetricConsumedMessages, metric.WithUnit("{message}"),
		metric.WithDescription("Number of messages that were delivered to the application."))
	errs = append(errs, err)
	if cfg.System != "" {
		m.semconvBase = append(m.semconvBase, semconv.MessagingSystemKey.String(cfg.System))
	}
	m.semconvBase = append(m.semconvBase, semconv.MessagingOperationName(otelconv.OpProcess), semconv.MessagingOperationTypeProcess)
	if cfg.ConsumerGroup != "" {
		m.semconvBase = append(m.semconvBase, semconv.MessagingConsumerGroupName(cfg.ConsumerGroup))
	}
	m.semconvBase = append(m.semconvBase, otelconv.ServerAttributes(cfg.ServerAddress)...)
	gauge := func(name, desc, what string, read func(context.Context) (map[string]int64, error)) {
		if read == nil {
			return
		}
		g, err := meter.Int64ObservableGauge(name, metric.WithUnit("{message}"), metric.WithDescription(desc))
		errs = append(errs, err)
		if err != nil {
			return
		}
		reg, err := meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
			values, err := read(ctx)
			if err != nil {
				return fmt.Errorf("antidote: reading %s: %w", what, err)
			}
			for topic, n := range values {
				o.ObserveInt64(g, n, metric.WithAttributes(MetricAttrTopic.String(topic)))
			}
			return nil
		}, g)
		errs = append(errs, err)
		if err == nil {
			m.registrations = append(m.registrations, reg)
		}
	}
	gauge(MetricDLQDepth, "Unresolved letters in each dead-letter topic.", "DLQ depth", cfg.DLQDepth)
	gauge(MetricConsumerLag, "Messages waiting to be consumed, by topic.", "consumer lag", cfg.ConsumerLag)
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("antidote: creating metric instruments: %w", err)
	}
	return m, nil
}

// Close unregisters the DLQ depth and consumer lag callbacks, so a
// provider that outlives this Metrics stops calling DLQDepth and
// ConsumerLag. It starts and leaves no goroutine.
func (m *Metrics) Close() error {
	if m == nil {
		return nil
	}
	var errs []error
	for _, r := range m.registrations {
		if err := r.Unregister(); err != nil {
			errs = append(errs, fmt.Errorf("antidote: unregistering a gauge callback: %w", err))
		}
	}
	m.registrations = nil
	return errors.Join(errs...)
}

// Middleware returns the counting handler. With a no-op MeterProvider
// (go.opentelemetry.io/otel/metric/noop) it returns h itself: nothing would
// be recorded.
func (m *Metrics) Middleware(h message.HandlerFunc) message.HandlerFunc {
	if m.noop {
		return h
	}
	return func(msg *message.Message) ([]*message.Message, error) {
		st, ctx := joinDelivery(msg.Context())
		handler := message.HandlerNameFromCtx(ctx)
		st.mu.Lock()
		st.metrics, st.handler = m, handler
		st.mu.Unlock()
		msg.SetContext(ctx)

		start := time.Now()
		produced, err := h(msg)
		m.record(ctx, st, handler, time.Since(start).Seconds(), err)
		return produced, err
	}
}

// record counts one finished delivery (out of Middleware's closure, so the
// frame that stays on the stack while the handler runs is small).
func (m *Metrics) record(ctx context.Context, st *deliveryState, handler string, elapsed float64, err error) {
	outcome, reason := st.final(err)
	// The message context may be cancelled by now (shutdown); the
	// measurement must not be lost with it.
	rec := recordContext(ctx)
	byOutcome := m.opt(metricsOptKey{kind: 'o', a: handler, b: string(outcome)})
	m.duration.Record(rec, elapsed, byOutcome.rec...)
	switch outcome {
	case OutcomeProcessed:
		m.processed.Add(rec, 1, m.handlerOpt(handler).add...)
	case OutcomeFailed, OutcomeDeferred:
		m.failed.Add(rec, 1, byOutcome.add...)
	case OutcomeDeadLettered:
		m.deadLettered.Add(rec, 1, m.opt(metricsOptKey{kind: 'r', a: handler, b: string(reason)}).add...)
	case OutcomeRetryScheduled:
		m.scheduled.Add(rec, 1, m.handlerOpt(handler).add...)
	}
	// OutcomeDuplicate was counted by RecordDuplicate when it happened.

	// The semconv pair: by destination, with error.type on failure (the
	// DLQ reason for a dead-lettered message, as on the span).
	k := semconvOptKey{topic: message.SubscribeTopicFromCtx(ctx)}
	switch outcome {
	case OutcomeFailed, OutcomeDeferred:
		k.errorType = otelconv.ErrorType(err)
	case OutcomeDeadLettered:
		k.errorType = reasonClass(reason)
	}
	sc := m.semconvOpt(k)
	m.processDuration.Record(rec, elapsed, sc.rec...)
	m.consumed.Add(rec, 1, sc.add...)
}

// semconvOpt returns the cached attribute options of the semconv consumer
// metrics for k: topics and error classes are a small, bounded set.
func (m *Metrics) semconvOpt(k semconvOptKey) *metricOpts {
	if v, ok := m.semconvOpts.Load(k); ok {
		return v.(*metricOpts)
	}
	attrs := append([]attribute.KeyValue(nil), m.semconvBase...)
	if k.topic != "" {
		attrs = append(attrs, semconv.MessagingDestinationName(k.topic))
	}
	if k.errorType != "" {
		attrs = append(attrs, semconv.ErrorTypeKey.String(k.errorType))
	}
	o := metric.WithAttributeSet(attribute.NewSet(attrs...))
	v, _ := m.semconvOpts.LoadOrStore(k, &metricOpts{add: []metric.AddOption{o}, rec: []metric.RecordOption{o}})
	return v.(*metricOpts)
}

// recordContext is ctx without its cancellation, so a measurement is not
// lost when the message context ends (shutdown). A context that is not done
// is used as it is: context.WithoutCancel would allocate per record.
func recordContext(ctx context.Context) context.Context {
	if ctx.Err() != nil {
		return context.WithoutCancel(ctx)
	}
	return ctx
}

// RecordDuplicate counts a delivery skipped as a duplicate and, when ctx is
// the message's context below Metrics/Tracing, marks its outcome
// "duplicate" (and adds the span event "duplicate skipped"). handler "" is
// read from ctx. Wire it to IdempotencyConfig.OnDuplicate:
//
//	OnDuplicate: func(msg *message.Message, _ string) { m.RecordDuplicate(msg.Context(), "") }
func (m *Metrics) RecordDuplicate(ctx context.Context, handler string) {
	if m == nil {
		return
	}
	if handler == "" {
		handler = message.HandlerNameFromCtx(ctx)
	}
	if st := deliveryStateOf(ctx); st != nil {
		st.set(OutcomeDuplicate, "")
	}
	if span := trace.SpanFromContext(ctx); span.IsRecording() {
		span.AddEvent(EventDuplicate)
	}
	m.duplicates.Add(recordContext(ctx), 1, m.handlerOpt(handler).add...)
}

// RecordThrottleWait adds the time one delivery waited for the throttle
// (antidote.throttle.wait, seconds, by handler; rate() of it is the share of
// time a handler spends throttled). handler "" is read from ctx. Wire it to
// ThrottleConfig.OnWait:
//
//	OnWait: func(msg *message.Message, waited time.Duration) { m.RecordThrottleWait(msg.Context(), "", waited) }
func (m *Metrics) RecordThrottleWait(ctx context.Context, handler string, waited time.Duration) {
	if m == nil || waited <= 0 {
		return
	}
	if handler == "" {
		handler = message.HandlerNameFromCtx(ctx)
	}
	m.throttleWait.Add(recordContext(ctx), waited.Seconds(), m.handlerOpt(handler).add...)
}

// RecordBackpressureBlock counts one publish to topic that met producer
// backpressure (it waited for the consumers' backlog to fall, or was
// refused) and adds the time it waited. Wire it to
// throttle.BackpressureConfig.OnWait, which is called only for such
// publishes:
//
//	OnWait: func(topic string, waited time.Duration, _ error) { m.RecordBackpressureBlock(context.Background(), topic, waited) }
func (m *Metrics) RecordBackpressureBlock(ctx context.Context, topic string, waited time.Duration) {
	if m == nil {
		return
	}
	rec := recordContext(ctx)
	opt := m.opt(metricsOptKey{kind: 't', a: topic})
	m.backpressure.Add(rec, 1, opt.add...)
	if waited > 0 {
		m.backpressureWait.Add(rec, waited.Seconds(), opt.add...)
	}
}

// RecordBreakerState records a state change of the DLQ-storm breaker:
// the gauge antidote.breaker.state (0 closed, 1 half-open, 2 open) and one
// antidote.breaker.transitions. Wire it to BreakerConfig.OnStateChange:
//
//	OnStateChange: func(from, to string) { m.RecordBreakerState(context.Background(), from, to) }
func (m *Metrics) RecordBreakerState(ctx context.Context, from, to string) {
	if m == nil {
		return
	}
	rec := recordContext(ctx)
	var state int64
	switch to {
	case "half-open":
		state = 1
	case "open":
		state = 2
	}
	m.breakerState.Record(rec, state)
	m.breakerChanges.Add(rec, 1, m.opt(metricsOptKey{kind: 'b', a: from, b: to}).add...)
}

// RecordBreakerHold moves the gauge antidote.breaker.held (messages the
// breaker holds back now, by handler) up when held, down when not. Wire it
// to BreakerConfig.OnHold, which reports each hold's start and end once:
//
//	OnHold: func(handler string, held bool) { m.RecordBreakerHold(context.Background(), handler, held) }
func (m *Metrics) RecordBreakerHold(ctx context.Context, handler string, held bool) {
	if m == nil {
		return
	}
	var d int64 = -1
	if held {
		d = 1
	}
	m.breakerHeld.Add(recordContext(ctx), d, m.handlerOpt(handler).add...)
}

func (m *Metrics) handlerOpt(handler string) *metricOpts {
	return m.opt(metricsOptKey{kind: 'h', a: handler})
}

// metricOpts holds one attribute set as ready-made option slices: passing
// a slice with opts... does not allocate, a single option would (the
// variadic slice escapes through the instrument's interface).
type metricOpts struct {
	add []metric.AddOption
	rec []metric.RecordOption
}

// opt returns the cached attribute options for k. Label values are handler
// names, outcomes, reasons, topics and breaker states: a small, bounded set.
func (m *Metrics) opt(k metricsOptKey) *metricOpts {
	if v, ok := m.opts.Load(k); ok {
		return v.(*metricOpts)
	}
	var set attribute.Set
	switch k.kind {
	case 'h':
		set = attribute.NewSet(MetricAttrHandler.String(k.a))
	case 'o':
		set = attribute.NewSet(MetricAttrHandler.String(k.a), MetricAttrOutcome.String(k.b))
	case 'r':
		set = attribute.NewSet(MetricAttrHandler.String(k.a), MetricAttrReason.String(k.b))
	case 't':
		set = attribute.NewSet(MetricAttrTopic.String(k.a))
	case 'b':
		set = attribute.NewSet(MetricAttrFrom.String(k.a), MetricAttrTo.String(k.b))
	}
	o := metric.WithAttributeSet(set)
	v, _ := m.opts.LoadOrStore(k, &metricOpts{add: []metric.AddOption{o}, rec: []metric.RecordOption{o}})
	return v.(*metricOpts)
}
