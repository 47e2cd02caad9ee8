package matrix_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/devkafka"
	"github.com/antidote-mq/antidote/idempotency"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/pgstore"
	"github.com/antidote-mq/antidote/poison"
	"github.com/antidote-mq/antidote/router"
)

// outcome is how a published message must end.
type outcome string

const (
	processed outcome = "processed"
	dead      outcome = "dead-lettered"
	refused   outcome = "refused at publish"
)

// idKey carries the case message's identity through every broker; the
// payload cannot (some cases have none, some are all padding).
const idKey = "matrix.id"

// The stack's timings (see stack) and the bounds of "nothing loops hot":
// a message held by the breaker runs at most its attempts once per
// backoff until MaxHoldTime ends the hold.
const (
	attempts            = 2
	holdBackoff         = 200 * time.Millisecond
	maxHold             = 4 * time.Second
	maxRunsPerMessage   = attempts * (int(maxHold/holdBackoff) + 3)
	maxErrorLogsPerCase = 60
)

// kinds are the brokers the matrix runs on.
var kinds = []adapters.Kind{adapters.KindMemory, adapters.KindKafka, adapters.KindAMQP, adapters.KindPostgres}

// stores are the durable pieces of the stack, shared by a run's router
// incarnations as they are by a service's processes: crash-loop tracker,
// idempotency store and claim check, all on PostgreSQL.
type stores struct {
	tracker poison.DeliveryTracker
	idem    idempotency.Store
	claims  poison.ClaimCheck
}

func openStores(t *testing.T) stores {
	t.Helper()
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testenv.PostgresURL(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	suffix := strings.ToLower(watermill.NewShortUUID())
	tables := []string{"matrix_deliveries_" + suffix, "matrix_idem_" + suffix, "matrix_claims_" + suffix}
	t.Cleanup(func() {
		for _, tb := range tables {
			_, _ = pool.Exec(context.Background(), "DROP TABLE IF EXISTS "+tb)
		}
	})
	tr, err := pgstore.NewDeliveryTracker(ctx, pgstore.DeliveryTrackerConfig{Pool: pool, Table: tables[0]})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Close() })
	idem, err := pgstore.NewIdempotencyStore(ctx, pgstore.IdempotencyStoreConfig{Pool: pool, Table: tables[1]})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = idem.Close() })
	cc, err := pgstore.NewClaimCheckStore(ctx, pgstore.ClaimCheckStoreConfig{Pool: pool, Table: tables[2]})
	if err != nil {
		t.Fatal(err)
	}
	return stores{tracker: tr, idem: idem, claims: cc}
}

// brokerConfig is each broker with limits small enough to test at cheaply
// (1 MiB messages everywhere; Kafka's is its default) and a PostgreSQL ack
// deadline shorter than the breaker's hold.
func brokerConfig(t *testing.T, kind adapters.Kind, kafka []string) adapters.Config {
	t.Helper()
	cfg := adapters.Config{Broker: kind}
	switch kind {
	case adapters.KindKafka:
		cfg.Kafka = adapters.KafkaConfig{Brokers: kafka, ConsumerGroup: "matrix", NackResendSleep: 50 * time.Millisecond, Partitions: 4}
	case adapters.KindAMQP:
		cfg.AMQP = adapters.AMQPConfig{URL: testenv.AMQPURL(t), MaxMessageBytes: 1 << 20}
	case adapters.KindPostgres:
		cfg.Postgres = adapters.PostgresConfig{URL: testenv.PostgresURL(t), PollInterval: 10 * time.Millisecond,
			ResendInterval: 100 * time.Millisecond, AckDeadline: time.Second, MaxMessageBytes: 1 << 20}
	}
	return cfg
}

// sharedKafka is one embedded Kafka cluster for the whole package: the
// processes of a service restart, their broker does not.
var (
	kafkaOnce sync.Once
	kafkaAddr []string
	kafkaErr  error
)

func embeddedKafka(t *testing.T) []string {
	kafkaOnce.Do(func() {
		var k *devkafka.Broker
		if k, kafkaErr = devkafka.Start(devkafka.Config{Partitions: 4}); kafkaErr == nil {
			kafkaAddr = k.Addrs()
		}
	})
	if kafkaErr != nil {
		t.Fatal(kafkaErr)
	}
	return kafkaAddr
}

// errorCounter counts error log lines.
type errorCounter struct {
	watermill.NopLogger
	n atomic.Int64
}

func (l *errorCounter) Error(string, error, watermill.LogFields)         { l.n.Add(1) }
func (l *errorCounter) With(watermill.LogFields) watermill.LoggerAdapter { return l }

// run is one pass of a set of messages through the stack on one broker.
type run struct {
	t      *testing.T
	kind   adapters.Kind
	cfg    adapters.Config
	topic  string
	stores stores
	logs   errorCounter
	// sigterm: the consumer shuts down (router closed, broker closed: what
	// SIGTERM does to the examples) while each case is in its handler for
	// the first time, and a new one starts.
	sigterm bool
	// dlqWrap decorates the DLQ publisher (fault injection).
	dlqWrap func(message.Publisher) message.Publisher
	// onStart is called once the first consumer runs.
	onStart func(b *adapters.Broker)

	mu          sync.Mutex
	behave      map[string]string // id -> ok, reject, stuck, panic
	runs        map[string]int    // over the whole run
	lifeRuns    map[string]int    // in the current consumer's life
	maxLifeRuns map[string]int    // the most in any one life
	processed   map[string]int
	letters     map[string][]poison.Letter
	badLetters  []string
	refusedErr  map[string]error
	interrupted map[string]bool
	restart     chan string
	restarts    int
}

func newRun(t *testing.T, kind adapters.Kind, st stores) *run {
	var kafka []string
	if kind == adapters.KindKafka {
		kafka = embeddedKafka(t)
	}
	return &run{
		t: t, kind: kind, cfg: brokerConfig(t, kind, kafka), stores: st,
		topic:  "matrix_" + strings.ToLower(watermill.NewShortUUID()),
		behave: map[string]string{}, runs: map[string]int{}, lifeRuns: map[string]int{}, maxLifeRuns: map[string]int{}, processed: map[string]int{},
		letters: map[string][]poison.Letter{}, refusedErr: map[string]error{}, interrupted: map[string]bool{},
		restart: make(chan string, 1),
	}
}

func (r *run) open(ctx context.Context, group string) *adapters.Broker {
	r.t.Helper()
	cfg := r.cfg
	if group != "" {
		cfg.Kafka.ConsumerGroup = group
	}
	b, err := adapters.Open(ctx, cfg, nil)
	if err != nil {
		r.t.Fatal(err)
	}
	return b
}

// handle is the service's handler: each message does what its case says.
func (r *run) handle(m *message.Message) error {
	id := m.Metadata.Get(idKey)
	r.mu.Lock()
	r.runs[id]++
	r.lifeRuns[id]++
	r.maxLifeRuns[id] = max(r.maxLifeRuns[id], r.lifeRuns[id])
	behave := r.behave[id]
	first := r.runs[id] == 1
	interrupt := r.sigterm && first && !r.interrupted[id] && id != "sentinel"
	if interrupt {
		r.interrupted[id] = true
	}
	r.mu.Unlock()
	for k, v := range m.Metadata {
		if !validUTF8(k) || !validUTF8(v) {
			return poison.Permanent(fmt.Errorf("the metadata rule is broken: %q=%q reached the handler", k, v))
		}
	}
	if interrupt {
		// SIGTERM while the message is in the handler: ask for a restart
		// and wait until shutdown cancels the message.
		select {
		case r.restart <- id:
		default:
		}
		<-m.Context().Done()
		return m.Context().Err()
	}
	switch behave {
	case "reject":
		return poison.Permanent(errors.New("order rejected: " + strings.Repeat("details ", 40)))
	case "stuck":
		return poison.Transient(errors.New("inventory service times out on this order, every time"))
	case "panic":
		var nilMap map[string]int
		//lint:ignore SA5000 a real runtime panic is the case
		nilMap[id]++
	case "":
		return poison.Permanent(fmt.Errorf("unknown case id %q", id))
	}
	r.mu.Lock()
	r.processed[id]++
	r.mu.Unlock()
	return nil
}

// stack builds the router every consumer incarnation runs.
func (r *run) stack(b *adapters.Broker) *message.Router {
	r.t.Helper()
	var dlqPub message.Publisher = b.Publisher
	if r.dlqWrap != nil {
		dlqPub = r.dlqWrap(dlqPub)
	}
	rt, err := router.New(router.Config{
		CloseTimeout:   10 * time.Second,
		Logger:         &r.logs,
		DeadLetter:     middleware.DeadLetterConfig{Publisher: dlqPub, ClaimCheck: r.stores.claims, PublishTimeout: 3 * time.Second, FailedPublishPause: 200 * time.Millisecond},
		CrashLoopGuard: middleware.CrashLoopGuardConfig{Tracker: r.stores.tracker},
		Idempotency:    &middleware.IdempotencyConfig{Store: r.stores.idem},
		Retry:          middleware.RetryConfig{MaxAttempts: attempts, InitialInterval: 10 * time.Millisecond, MaxInterval: 50 * time.Millisecond},
		Breaker:        middleware.BreakerConfig{Backoff: holdBackoff, MaxHoldTime: maxHold},
	})
	if err != nil {
		r.t.Fatal(err)
	}
	rt.AddConsumerHandler("matrix", r.topic, b.Subscriber, r.handle)
	return rt
}

// consume runs consumer incarnations until ctx ends; each restart request
// shuts the current one down (router and broker) and starts another, as a
// supervisor restarts a process after SIGTERM. The memory broker lives in
// one process, so there it is one consumer and one broker throughout.
func (r *run) consume(ctx context.Context, shared *adapters.Broker) <-chan struct{} {
	done := make(chan struct{})
	started := make(chan struct{})
	go func() {
		defer close(done)
		first := true
		for {
			b := shared
			if b == nil {
				b = r.open(context.Background(), "")
			}
			rt := r.stack(b)
			rctx, cancel := context.WithCancel(ctx)
			runDone := make(chan error, 1)
			go func() { runDone <- rt.Run(rctx) }()
			select {
			case <-rt.Running():
			case err := <-runDone:
				r.t.Errorf("router: %v", err)
				cancel()
				return
			}
			if first {
				first = false
				if r.onStart != nil {
					r.onStart(b)
				}
				close(started)
			}
			var id string
			select {
			case <-ctx.Done():
			case id = <-r.restart:
			}
			cancel()
			if err := <-runDone; err != nil {
				r.t.Errorf("router: %v", err)
			}
			if b != shared {
				_ = b.Close()
			}
			if id == "" {
				return
			}
			r.mu.Lock()
			r.restarts++
			clear(r.lifeRuns)
			r.mu.Unlock()
		}
	}()
	select {
	case <-started:
	case <-done:
	}
	return done
}

// readDLQ collects the letters of the run's DLQ topic: each must be a
// readable envelope, claim-checked ones resolved whole.
func (r *run) readDLQ(ctx context.Context, b *adapters.Broker) {
	r.t.Helper()
	ch, err := b.LetterSubscriber().Subscribe(ctx, antidote.DLQTopic(r.topic))
	if err != nil {
		r.t.Fatal(err)
	}
	go func() {
		for m := range ch {
			whole, err := poison.ResolveClaim(context.Background(), r.stores.claims, m)
			var l poison.Letter
			if err == nil {
				l, err = poison.ReadEnvelope(whole)
			}
			r.mu.Lock()
			if err != nil {
				r.badLetters = append(r.badLetters, fmt.Sprintf("%s: %v", m.UUID, err))
			} else {
				id := l.Metadata.Get(idKey)
				r.letters[id] = append(r.letters[id], l)
			}
			r.mu.Unlock()
			m.Ack()
		}
	}()
}

// publish publishes one case message, remembering a refusal.
func (r *run) publish(pub message.Publisher, id, behave string, m *message.Message) {
	r.mu.Lock()
	r.behave[id] = behave
	r.mu.Unlock()
	if err := pub.Publish(r.topic, m); err != nil {
		r.mu.Lock()
		r.refusedErr[id] = err
		r.mu.Unlock()
	}
}

// settled reports whether every published message has an outcome.
func (r *run) settled() (bool, []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var open []string
	for id := range r.behave {
		if r.refusedErr[id] == nil && r.processed[id] == 0 && len(r.letters[id]) == 0 {
			open = append(open, id)
		}
	}
	return len(open) == 0, open
}

func (r *run) waitSettled(limit time.Duration) {
	r.t.Helper()
	deadline := time.Now().Add(limit)
	for {
		ok, open := r.settled()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			r.mu.Lock()
			detail := make([]string, 0, len(open))
			for _, id := range open {
				detail = append(detail, fmt.Sprintf("%s (ran %d times)", id, r.runs[id]))
			}
			r.mu.Unlock()
			r.t.Fatalf("%s: not settled within %s, the queue is blocked or a message is lost: %s", r.kind, limit, strings.Join(detail, ", "))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func validUTF8(s string) bool { return strings.ToValidUTF8(s, "\uFFFD") == s }
