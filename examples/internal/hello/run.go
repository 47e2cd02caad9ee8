package hello

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/idempotency"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/poison"
	"github.com/antidote-mq/antidote/router"
	"github.com/antidote-mq/antidote/telemetry"

	// kafka.embedded: the in-process broker of `go run ./examples/kafka`.
	_ "github.com/antidote-mq/antidote/devkafka"
)

// Summary is the run's final account; with --json it is the last stdout line.
type Summary struct {
	Broker            string `json:"broker"`
	Published         int64  `json:"published"`
	Processed         int64  `json:"processed"`
	DeadLettered      int64  `json:"dead_lettered"`
	DuplicatesSkipped int64  `json:"duplicates_skipped"`
	Retries           int64  `json:"retries"`
	// OrderViolations counts messages of a key (--keys) handed to the
	// handler before the one published just before them was done, or while
	// another of their key was running. It must be 0.
	OrderViolations int64 `json:"order_violations"`
	ElapsedMS       int64 `json:"elapsed_ms"`
	// DeadLetterReasons counts DeadLettered by the letters' reason
	// (antidote.reason: permanent, panic, retries_exhausted, ...); absent
	// when nothing was dead-lettered.
	DeadLetterReasons map[string]int64 `json:"dead_letter_reasons,omitempty"`
}

// runKey marks which run published a message, so a run with --role all
// counts its own messages apart from leftovers of earlier runs.
const runKey = "antidote.example_run"

// keyMetadata carries the business idempotency key of each write; the
// producer decorator stamps it as the Idempotency-Key consumers dedupe on.
const keyMetadata = "hello.write_id"

// publishBatch is how many messages go in one Publish call, and
// publishConcurrency how many calls run at once.
const (
	publishBatch       = 100
	publishConcurrency = 4
)

// Main runs the example on kind with the process's args and exits.
func Main(kind adapters.Kind) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := Run(ctx, kind, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Run is Main without the process: it returns the exit code (0 when every
// published message is accounted for, 1 on a failure, 2 on bad flags).
func Run(ctx context.Context, kind adapters.Kind, args []string, stdout, stderr io.Writer) int {
	opts, err := ParseFlags(string(kind), args, stderr)
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(stderr, "error:", err)
		}
		return 2
	}
	r := &run{opts: opts, args: args, kind: kind, stdout: stdout, stderr: stderr, runID: watermill.NewShortUUID(), order: newOrderWatch()}
	if err := r.do(ctx); err != nil {
		fmt.Fprintln(stderr, "error:", err)
		return 1
	}
	return r.exitCode()
}

type run struct {
	opts           Options
	args           []string // as given, for the summary's "run it again" line
	kind           adapters.Kind
	stdout, stderr io.Writer
	runID          string
	start          time.Time

	published    atomic.Int64
	processed    atomic.Int64
	deadLettered atomic.Int64
	lastArrival  atomic.Int64 // unix nanos
	seen         sync.Map     // message UUID -> struct{}
	retries      atomic.Int64
	producerDone atomic.Bool
	stopping     atomic.Bool
	closeMetrics func()
	sink         Sink
	tracker      poison.DeliveryTracker
	idem         idempotency.Store
	idemTx       bool                        // --idempotency postgres-tx
	health       func(context.Context) error // the breaker's HealthCheck: the sink's database
	duplicates   atomic.Int64
	failures     sync.Map // message UUID -> *atomic.Int32, for the transient poison
	order        *orderWatch
	letters      letterLog // what reached the DLQ, for the summary
	broker       *adapters.Broker
}

func (r *run) logger() watermill.LoggerAdapter {
	// Lines logged with a message's context carry its trace_id and span_id.
	sl := slog.New(telemetry.NewLogHandler(slog.NewTextHandler(r.stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	return quietOnStop{LoggerAdapter: watermill.NewSlogLogger(sl), slog: sl, stopping: &r.stopping}
}

// quietOnStop drops error logs once shutdown began: subscribers report their
// cancelled queries then, which is expected and would only alarm the reader.
// The library's "not durable" lines (antidote.ErrNotDurable: what the demo
// opted in to), a bootstrap broker of several that did not answer at start
// (adapters.ErrUnreachable while Open went on) and TLS without verification
// (adapters.ErrInsecureTLS) are warnings, not errors.
type quietOnStop struct {
	watermill.LoggerAdapter
	slog     *slog.Logger
	stopping *atomic.Bool
}

func (l quietOnStop) Error(msg string, err error, fields watermill.LogFields) {
	switch {
	case errors.Is(err, antidote.ErrNotDurable), errors.Is(err, adapters.ErrUnreachable), errors.Is(err, adapters.ErrInsecureTLS):
		attrs := []any{"why", err.Error()}
		for k, v := range fields {
			attrs = append(attrs, k, v)
		}
		l.slog.Warn(msg, attrs...)
	case !l.stopping.Load():
		l.LoggerAdapter.Error(msg, err, fields)
	}
}

func (l quietOnStop) With(fields watermill.LogFields) watermill.LoggerAdapter {
	attrs := make([]any, 0, 2*len(fields))
	for k, v := range fields {
		attrs = append(attrs, k, v)
	}
	return quietOnStop{LoggerAdapter: l.LoggerAdapter.With(fields), slog: l.slog.With(attrs...), stopping: l.stopping}
}

func (r *run) do(ctx context.Context) error {
	cfg, err := adapters.LoadConfig(r.opts.Config)
	if err != nil {
		return err
	}
	cfg.Broker = r.kind
	if r.kind == adapters.KindKafka && len(cfg.Kafka.Brokers) == 0 {
		if r.opts.Role != "all" {
			return errors.New("--role " + r.opts.Role + " needs a broker that outlives this process: run `go run ./cmd/antidote devkafka` and set ANTIDOTE_KAFKA_BROKERS=127.0.0.1:9092")
		}
		// The demo opts in to a broker in this process: nothing to install.
		cfg.Kafka.Embedded = true
	}
	if r.opts.Concurrency > 0 {
		if r.kind != adapters.KindKafka && r.opts.Concurrency > 1 {
			return fmt.Errorf("--concurrency %d: Kafka only (kafka.concurrency); RabbitMQ and the PostgreSQL queue hand a consumer one message at a time, see docs/brokers.md", r.opts.Concurrency)
		}
		cfg.Kafka.Concurrency = r.opts.Concurrency
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return err
	}
	r.start = time.Now()
	logger := r.logger()
	b, err := adapters.Open(ctx, cfg, logger)
	if err != nil {
		return err
	}
	defer b.Close()
	r.broker = b
	where := b.Addr
	if b.Embedded {
		where += " (embedded broker in this process; set ANTIDOTE_KAFKA_BROKERS to use your own)"
	}
	fmt.Fprintf(r.stderr, "%s broker at %s, topic %q, role %s\n", r.kind, where, r.opts.Topic, r.opts.Role)

	payloads, err := r.payloads()
	if err != nil {
		return err
	}

	stopProgress := r.progress()
	defer stopProgress()

	tel, err := r.telemetry(ctx)
	if err != nil {
		return err
	}
	defer func() {
		if r.closeMetrics != nil {
			r.closeMetrics()
		}
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = tel.Shutdown(sctx) // flushes spans still in the batch
	}()
	consumer := b.ConsumerIdentity()
	traced := func(p message.Publisher) (message.Publisher, error) {
		return telemetry.NewPublisher(p, telemetry.PublisherConfig{
			TracerProvider: tel.TracerProvider, MeterProvider: tel.MeterProvider,
			System: consumer.System, ServerAddress: consumer.ServerAddress, KafkaKeyMetadata: cfg.Kafka.PartitionKey,
		})
	}
	tracedPub, err := traced(b.Publisher)
	if err != nil {
		return err
	}
	pub, err := idempotency.NewPublisher(tracedPub, idempotency.ProducerConfig{
		Service: "hello-" + string(r.kind),
		Key:     idempotency.FromMetadata(keyMetadata),
	})
	if err != nil {
		return err
	}
	if r.opts.Role == "producer" {
		err := r.produce(ctx, pub, payloads)
		stopProgress()
		r.summary()
		return err
	}

	closeConsumer, err := r.openConsumerSide(ctx, cfg)
	defer closeConsumer()
	if err != nil {
		return err
	}
	dlq, err := newLetterPublisher(b.Publisher, r.opts.DLQOut, r.letter)
	if err != nil {
		return err
	}
	defer dlq.Close()
	tracedDLQ, err := traced(dlq)
	if err != nil {
		return err
	}
	lag, closeLag := r.consumerLag(ctx, b)
	defer closeLag()
	var throttle *middleware.ThrottleConfig
	if r.opts.Rate > 0 {
		throttle = &middleware.ThrottleConfig{Rate: r.opts.Rate, Burst: 1}
	}
	rt, err := router.New(router.Config{
		Logger: logger,
		// Who consumes, once: spans, metrics, letters and the crash-loop
		// tracker's keys all name it.
		Consumer:   consumer,
		Tracing:    middleware.TracingConfig{TracerProvider: tel.TracerProvider, KafkaKeyMetadata: cfg.Kafka.PartitionKey},
		Metrics:    middleware.MetricsConfig{MeterProvider: tel.MeterProvider, ConsumerLag: lag},
		DeadLetter: middleware.DeadLetterConfig{Publisher: tracedDLQ},
		Breaker:    middleware.BreakerConfig{HealthCheck: r.health},
		Retry: middleware.RetryConfig{
			OnRetry: func(int, error, time.Duration) { r.retries.Add(1) },
		},
		CrashLoopGuard: middleware.CrashLoopGuardConfig{Tracker: r.tracker},
		Throttle:       throttle,
		Idempotency: &middleware.IdempotencyConfig{
			Store:         r.idem,
			Transactional: r.idemTx,
			OnDuplicate: func(m *message.Message, _ string) {
				r.lastArrival.Store(time.Now().UnixNano())
				r.count(m, &r.duplicates)
			},
		},
	})
	if err != nil {
		return err
	}
	rt.AddConsumerHandler("hello", r.opts.Topic, orderWatchSubscriber{Subscriber: b.Subscriber, w: r.order}, r.handle)
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	routerDone := make(chan error, 1)
	go func() { routerDone <- rt.Run(rctx) }()
	select {
	case <-rt.Running():
	case err := <-routerDone:
		return fmt.Errorf("router: %w", err)
	}
	r.lastArrival.Store(time.Now().UnixNano())

	var produceErr error
	if r.opts.Role == "all" {
		produceErr = r.produce(ctx, pub, payloads)
	}
	r.producerDone.Store(true)
	if produceErr == nil {
		r.waitUntilDone(ctx)
	}
	r.stopping.Store(true)
	cancel()
	if err := <-routerDone; err != nil {
		produceErr = errors.Join(produceErr, fmt.Errorf("router: %w", err))
	}
	stopProgress()
	r.summary()
	return produceErr
}

// telemetry sets up traces (OTLP, from the OTEL_* env; off when no endpoint
// is set) and metrics (OTLP from env, and Prometheus on --metrics-addr).
func (r *run) telemetry(ctx context.Context) (*telemetry.Telemetry, error) {
	tel, err := telemetry.Setup(ctx, telemetry.SetupConfig{ServiceName: "hello-" + string(r.kind), Prometheus: r.opts.MetricsAddr != ""})
	if err != nil {
		return nil, fmt.Errorf("telemetry: %w", err)
	}
	if tel.TracesExported {
		how := tel.TracesExporter
		if tel.Protocol != "" {
			how += " " + tel.Protocol
		}
		fmt.Fprintf(r.stderr, "exporting traces (%s)\n", how)
	}
	if r.opts.MetricsAddr != "" {
		ln, err := net.Listen("tcp", r.opts.MetricsAddr)
		if err != nil {
			_ = tel.Shutdown(ctx)
			return nil, fmt.Errorf("--metrics-addr: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", tel.MetricsHandler)
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		fmt.Fprintf(r.stderr, "metrics on http://%s/metrics\n", ln.Addr())
		r.closeMetrics = func() { _ = srv.Close() }
	}
	return tel, nil
}

// consumerLag reads the topic's backlog at each metrics scrape (the gauge
// antidote.consumer.lag) when --metrics-addr serves metrics; nil otherwise,
// or when the broker keeps no backlog to read.
func (r *run) consumerLag(ctx context.Context, b *adapters.Broker) (func(context.Context) (map[string]int64, error), func()) {
	if r.opts.MetricsAddr == "" || b.Kind == adapters.KindMemory {
		return nil, func() {}
	}
	src, err := adapters.OpenLagSource(ctx, b.Config)
	if err != nil {
		fmt.Fprintf(r.stderr, "consumer lag not reported: %v\n", err)
		return nil, func() {}
	}
	return func(ctx context.Context) (map[string]int64, error) {
		n, err := src.Lag(ctx, r.opts.Topic)
		if err != nil {
			return nil, err
		}
		return map[string]int64{r.opts.Topic: n}, nil
	}, func() { _ = src.Close() }
}

// produce publishes the messages in batches, publishConcurrency batches at a
// time: a broker that confirms each message (RabbitMQ) is otherwise bound by
// one round trip per message.
//
// With --keys the messages of one key all go through one publisher, in
// order (batches published at once could land in any order).
func (r *run) produce(ctx context.Context, pub message.Publisher, payloads func(i int) []byte) error {
	var chans [publishConcurrency]chan []*message.Message
	for w := range chans {
		chans[w] = make(chan []*message.Message)
	}
	errs := make(chan error, publishConcurrency)
	var wg sync.WaitGroup
	for w := 0; w < publishConcurrency; w++ {
		wg.Add(1)
		batches := chans[w]
		go func() {
			defer wg.Done()
			for batch := range batches {
				if err := pub.Publish(r.opts.Topic, batch...); err != nil {
					errs <- fmt.Errorf("publish to %q after %d messages: %w", r.opts.Topic, r.published.Load(), err)
					for range batches { // drain so the feeder stops
					}
					return
				}
				r.published.Add(int64(len(batch)))
			}
		}()
	}
	var feedErr error
	var pending [publishConcurrency][]*message.Message
	next := 0 // the worker of the next batch, without --keys
	for i := 1; i <= r.opts.Messages && feedErr == nil; i++ {
		if feedErr = ctx.Err(); feedErr != nil {
			break
		}
		msg := message.NewMessage(watermill.NewUUID(), payloads(i))
		msg.Metadata.Set(runKey, r.runID)
		if k := r.opts.Keys; k > 0 {
			msg.Metadata.Set("partition_key", "k"+strconv.Itoa(i%k))
			msg.Metadata.Set(seqMetadata, strconv.Itoa((i-1)/k+1))
		} else {
			msg.Metadata.Set("partition_key", strconv.Itoa(i))
		}
		// The business key: the same write gets the same key however often
		// it is sent.
		msg.Metadata.Set(keyMetadata, r.runID+"/"+strconv.Itoa(i))
		w := 0
		if k := r.opts.Keys; k > 0 {
			w = (i % k) % publishConcurrency
		}
		batch := append(pending[w], msg)
		if r.opts.DupEvery > 0 && i%r.opts.DupEvery == 0 {
			// A re-send, as a relay would: a new message, the same key.
			dup := message.NewMessage(watermill.NewUUID(), msg.Payload)
			for k, v := range msg.Metadata {
				dup.Metadata.Set(k, v)
			}
			batch = append(batch, dup)
		}
		pending[w] = batch
		for w := range pending {
			if len(pending[w]) == 0 || (len(pending[w]) < publishBatch && i < r.opts.Messages) {
				continue
			}
			to := w
			if r.opts.Keys == 0 {
				to, next = next, (next+1)%publishConcurrency
			}
			select {
			case chans[to] <- pending[w]:
			case feedErr = <-errs:
			}
			pending[w] = nil
		}
	}
	for _, c := range chans {
		close(c)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		feedErr = errors.Join(feedErr, err)
	}
	return feedErr
}

// payloads returns the ith (1-based) payload: a line of --input, or a
// generated write (poison every --poison-every). With --input, Messages
// becomes the number of lines.
func (r *run) payloads() (func(i int) []byte, error) {
	if r.opts.Input == "" {
		return func(i int) []byte { return payloadFor(i, r.opts.PoisonEvery, r.opts.StuckEvery) }, nil
	}
	data, err := os.ReadFile(r.opts.Input)
	if err != nil {
		return nil, fmt.Errorf("--input: %w", err)
	}
	lines := bytes.Split(data, []byte("\n"))
	if n := len(lines); n > 0 && len(lines[n-1]) == 0 {
		lines = lines[:n-1]
	}
	r.opts.Messages = len(lines)
	return func(i int) []byte { return lines[i-1] }, nil
}

func (r *run) handle(msg *message.Message) error {
	r.lastArrival.Store(time.Now().UnixNano())
	if r.opts.CrashOn != "" && bytes.Contains(msg.Payload, []byte(r.opts.CrashOn)) {
		fmt.Fprintf(r.stderr, "crash-on: message %s contains %q: exiting with code 3\n", msg.UUID, r.opts.CrashOn)
		os.Exit(3)
	}
	h, err := Parse(msg.Payload)
	if err != nil {
		return poison.Invalid(err)
	}
	if d := r.opts.HandlerDelay; d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-msg.Context().Done():
			t.Stop()
			return msg.Context().Err()
		}
	}
	switch h.Msg {
	case PanicMsg:
		var byUser map[int64]int
		//lint:ignore SA5000 the example's deliberate handler bug
		byUser[h.UserID]++ // the bug: a write to a nil map panics
	case TransientMsg:
		n, _ := r.failures.LoadOrStore(msg.UUID, new(atomic.Int32))
		if n.(*atomic.Int32).Add(1) <= 2 {
			return poison.Transient(errors.New("sink busy (simulated): try again"))
		}
	case StuckMsg:
		return poison.Transient(fmt.Errorf("sink times out on user %d every time (simulated --stuck-every)", h.UserID))
	}
	if err := r.sink.Store(withOrderTag(msg.Context(), msg), msg.UUID, h); err != nil {
		return fmt.Errorf("store user %d: %w", h.UserID, err)
	}
	r.count(msg, &r.processed)
	return nil
}

// count adds msg to c once per message UUID, and reports whether it did;
// with --role all only this run's messages count.
func (r *run) count(msg *message.Message, c *atomic.Int64) bool {
	if r.opts.Role == "all" && msg.Metadata.Get(runKey) != r.runID {
		return false
	}
	if _, dup := r.seen.LoadOrStore(msg.UUID, struct{}{}); !dup {
		c.Add(1)
		return true
	}
	return false
}

// letter counts a dead letter the broker accepted and keeps its reason and,
// for the first few, what it was.
func (r *run) letter(topic string, m *message.Message) {
	if r.count(m, &r.deadLettered) {
		r.letters.add(topic, m)
	}
}

func (r *run) accounted() int64 {
	return r.processed.Load() + r.deadLettered.Load() + r.duplicates.Load()
}

func (r *run) waitUntilDone(ctx context.Context) {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if r.opts.Role == "all" && r.accounted() >= r.published.Load() {
			return
		}
		if time.Since(time.Unix(0, r.lastArrival.Load())) > r.opts.Idle {
			return
		}
	}
}

func (r *run) exitCode() int {
	if r.opts.Role != "all" {
		return 0
	}
	if v := r.order.violations.Load(); v > 0 {
		fmt.Fprintf(r.stderr, "error: %d order violations: messages of a key handled out of publish order or concurrently\n", v)
		return 1
	}
	if missing := r.published.Load() - r.accounted(); missing > 0 {
		fmt.Fprintf(r.stderr, "error: %d of %d published messages were neither processed nor dead-lettered\n", missing, r.published.Load())
		return 1
	}
	return 0
}

func (r *run) snapshot() Summary {
	return Summary{
		Broker:            string(r.kind),
		Published:         r.published.Load(),
		Processed:         r.processed.Load(),
		DeadLettered:      r.deadLettered.Load(),
		Retries:           r.retries.Load(),
		OrderViolations:   r.order.violations.Load(),
		DuplicatesSkipped: r.duplicates.Load(),
		ElapsedMS:         time.Since(r.start).Milliseconds(),
		DeadLetterReasons: r.letters.reasons(),
	}
}

func (r *run) summary() {
	s := r.snapshot()
	if r.opts.JSON {
		line, _ := json.Marshal(s)
		fmt.Fprintln(r.stdout, string(line))
		return
	}
	fmt.Fprintf(r.stdout, "%s: published %d, processed %d, dead-lettered %d, duplicates skipped %d, retries %d, order violations %d in %s\n",
		s.Broker, s.Published, s.Processed, s.DeadLettered, s.DuplicatesSkipped, s.Retries, s.OrderViolations, time.Duration(s.ElapsedMS)*time.Millisecond)
	r.incident(r.stdout, s)
}

// progress redraws one status line on stderr while it is a terminal; the
// returned stop is idempotent.
func (r *run) progress() (stop func()) {
	f, ok := r.stderr.(*os.File)
	if !ok || !isTerminal(f) {
		return func() {}
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			s := r.snapshot()
			fmt.Fprintf(f, "\r%s: published %d/%d, processed %d, dead-lettered %d, %.1fs ",
				s.Broker, s.Published, r.opts.Messages, s.Processed, s.DeadLettered, float64(s.ElapsedMS)/1000)
			select {
			case <-done:
				fmt.Fprintln(f)
				return
			case <-t.C:
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(done); <-finished }) }
}

func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
