package matrix_test

import (
	"context"
	"errors"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/router"
)

// faultyPublisher fails (refusing) or stalls past the DeadLetter publish
// timeout (slow) for the first n publishes of letters.
type faultyPublisher struct {
	message.Publisher
	n       int64
	slow    time.Duration
	calls   atomic.Int64
	faults  atomic.Int64
	refused atomic.Int64
}

func (p *faultyPublisher) Publish(topic string, msgs ...*message.Message) error {
	if p.calls.Add(1) <= p.n {
		p.faults.Add(1)
		if p.slow > 0 {
			time.Sleep(p.slow) // then publishes anyway: a letter that arrives after its timeout
		} else {
			return errors.New("DLQ refuses (simulated)")
		}
	}
	err := p.Publisher.Publish(topic, msgs...)
	if err != nil {
		p.refused.Add(1) // the broker's own refusal
	}
	return err
}

// fault is a DLQ in trouble while the consumer runs.
type fault struct {
	name string
	// wrap decorates the DLQ publisher; nil: none.
	wrap func() *faultyPublisher
	// deleteDLQ deletes the DLQ (queue, table, topic) once the first letter
	// is in, before the rest are published.
	deleteDLQ bool
	// full: RabbitMQ only, on a private node: the DLQ queue holds one
	// message and refuses publishes past it (max-length 1,
	// overflow reject-publish) until a reader makes room.
	full bool
}

var faults = []fault{
	{name: "DLQ refusing", wrap: func() *faultyPublisher { return &faultyPublisher{n: 6} }},
	{name: "DLQ slow (past the publish timeout)", wrap: func() *faultyPublisher { return &faultyPublisher{n: 3, slow: 4 * time.Second} }},
	{name: "DLQ deleted while consuming", deleteDLQ: true},
	{name: "DLQ full (RabbitMQ reject-publish)", full: true, wrap: func() *faultyPublisher { return &faultyPublisher{} }},
}

// TestMatrixFaults: with the DLQ refusing, slow or deleted while the
// consumer runs, every rejected message still ends in the DLQ (a slow
// publish may land twice: a duplicate, never a loss), every healthy one is
// processed once, nothing is lost and nothing loops hot.
func TestMatrixFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("runs every broker; skipped with -short")
	}
	st := openStores(t)
	for _, kind := range brokersFromEnv(t) {
		for _, f := range faults {
			if f.deleteDLQ && kind == adapters.KindMemory {
				continue // nothing to delete: gochannel has no queues
			}
			if f.full && kind != adapters.KindAMQP {
				continue // a queue that refuses publishes when full is RabbitMQ's
			}
			t.Run(string(kind)+"/"+f.name, func(t *testing.T) {
				r := newRun(t, kind, st)
				var fp *faultyPublisher
				if f.wrap != nil {
					fp = f.wrap()
					r.dlqWrap = func(p message.Publisher) message.Publisher { fp.Publisher = p; return fp }
				}
				if f.full {
					rabbit := testenv.StartRabbitMQ(t)
					r.cfg.AMQP.URL = rabbit.URL
					if err := rabbit.SetPolicy("matrix-full", `^`+regexp.QuoteMeta(antidote.DLQTopic(r.topic))+`$`,
						`{"max-length":1,"overflow":"reject-publish"}`); err != nil {
						t.Fatal(err)
					}
				}
				var first, rest []mcase
				first = append(first, mcase{name: "rejected before", behave: "reject", build: plain()})
				for i := 0; i < 5; i++ {
					rest = append(rest, mcase{name: "rejected", behave: "reject", build: plain()}, mcase{name: "healthy", behave: "ok", build: plain()})
				}
				runFault(t, r, f, fp, first, rest)
				if fp != nil && fp.faults.Load() == 0 && fp.refused.Load() == 0 {
					t.Errorf("%s: the fault never happened", kind)
				}
			})
		}
	}
}

func runFault(t *testing.T, r *run, f fault, fp *faultyPublisher, first, rest []mcase) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	prod := r.open(ctx, "")
	defer prod.Close()
	var shared *adapters.Broker
	if r.kind == adapters.KindMemory {
		shared = prod
	}
	reader := prod
	if r.kind == adapters.KindKafka {
		reader = r.open(ctx, "matrix-dlq-"+r.topic)
		defer reader.Close()
	}
	rctx, stopReader := context.WithCancel(ctx)
	defer stopReader()
	r.readDLQ(rctx, reader)
	done := r.consume(ctx, shared)

	ids := map[string]mcase{}
	publish := func(prefix string, cs []mcase) {
		for i, c := range cs {
			id := prefix + string(rune('a'+i))
			ids[id] = c
			r.publish(prod.Publisher, id, c.behave, c.build(t, prod, r.topic, id))
		}
	}
	publish("f", first)
	r.waitSettled(2 * time.Minute)
	if f.deleteDLQ {
		// The operator deletes the DLQ, letters and all; what was in it is
		// gone by their hand. Every later letter must arrive in the DLQ
		// that the next publish creates again.
		stopReader()
		deleteDLQ(t, r, prod)
		if r.kind == adapters.KindKafka {
			reader = r.open(ctx, "matrix-dlq-after-"+r.topic)
			defer reader.Close()
		}
	}
	if f.full {
		// The first letter fills the DLQ; stop reading until the broker
		// has refused some of the next ones.
		stopReader()
	}
	publish("r", rest)
	if f.full {
		deadline := time.Now().Add(time.Minute)
		for fp.refused.Load() < 3 {
			if time.Now().After(deadline) {
				t.Fatalf("the full DLQ refused %d publishes, want 3", fp.refused.Load())
			}
			time.Sleep(20 * time.Millisecond)
		}
		r.readDLQ(ctx, reader) // room again
	}
	if f.deleteDLQ {
		// Read the DLQ anew once the letters are due in it.
		waitRan(t, r, rest)
		r.readDLQ(ctx, reader)
	}
	r.waitSettled(2 * time.Minute)
	cancel()
	<-done

	r.mu.Lock()
	defer r.mu.Unlock()
	for _, bad := range r.badLetters {
		t.Errorf("%s: a letter is not a readable envelope: %s", r.kind, bad)
	}
	for id, c := range ids {
		got, detail := r.outcomeOf(id)
		if want := c.outcome(r.kind); got != want {
			t.Errorf("%s: %s %s: %s (%s), want %s", r.kind, id, c.name, got, detail, want)
		}
		if got == processed && r.processed[id] != 1 {
			t.Errorf("%s: %s processed %d times", r.kind, id, r.processed[id])
		}
		if n := r.maxLifeRuns[id]; n > maxRunsPerMessage {
			t.Errorf("%s: %s ran %d times: looping", r.kind, id, n)
		}
	}
	t.Logf("%s, %s: %d error log lines", r.kind, f.name, r.logs.n.Load())
}

// waitRan waits until every message of cs ran at least once.
func waitRan(t *testing.T, r *run, cs []mcase) {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		r.mu.Lock()
		ran := 0
		for id, behave := range r.behave {
			if strings.HasPrefix(id, "r") && (r.runs[id] > 0 || behave == "") {
				ran++
			}
		}
		r.mu.Unlock()
		if ran == len(cs) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: only %d of %d messages ran", r.kind, ran, len(cs))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// deleteDLQ deletes the run's DLQ by the broker's own means.
func deleteDLQ(t *testing.T, r *run, b *adapters.Broker) {
	t.Helper()
	dlq := antidote.DLQTopic(r.topic)
	switch r.kind {
	case adapters.KindAMQP:
		conn, err := amqp091.Dial(testenv.AMQPURL(t))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ch, err := conn.Channel()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ch.QueueDelete(dlq, false, false, false); err != nil {
			t.Fatal(err)
		}
	case adapters.KindPostgres:
		conn, err := pgx.Connect(context.Background(), testenv.PostgresURL(t))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(context.Background(), "DROP TABLE "+adapters.PostgresTable(b.Config.Postgres, dlq)); err != nil {
			t.Fatal(err)
		}
	case adapters.KindKafka:
		admin, err := sarama.NewClusterAdmin(b.Config.Kafka.Brokers, sarama.NewConfig())
		if err != nil {
			t.Fatal(err)
		}
		defer admin.Close()
		if err := admin.DeleteTopic(dlq); err != nil {
			t.Fatal(err)
		}
	}
}

// TestMatrixTopicNames: on each broker the longest topic whose every
// derived name fits runs end to end (a message processed, one dead-lettered
// into its DLQ), and one byte more is refused when the consumer starts and
// at Publish, naming the limit.
func TestMatrixTopicNames(t *testing.T) {
	if testing.Short() {
		t.Skip("runs every broker; skipped with -short")
	}
	st := openStores(t)
	for _, kind := range brokersFromEnv(t) {
		if kind == adapters.KindMemory {
			continue // no names to run out of
		}
		t.Run(string(kind), func(t *testing.T) {
			r := newRun(t, kind, st)
			b := r.open(context.Background(), "")
			defer b.Close()
			probe := message.NewMessage("probe", []byte("x"))
			longest := r.topic
			for b.CheckMessage(longest+"x", probe) == nil {
				longest += "x"
			}
			over := longest + "x"
			if err := b.Publisher.Publish(over, probe); !errors.Is(err, antidote.ErrInvalidTopic) {
				t.Fatalf("Publish to a topic one byte over (%d bytes): %v", len(over), err)
			}
			rt, err := router.New(router.Config{DeadLetter: middleware.DeadLetterConfig{Publisher: b.Publisher},
				CrashLoopGuard: middleware.CrashLoopGuardConfig{Tracker: st.tracker}, CloseTimeout: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			rt.AddConsumerHandler("h", over, b.Subscriber, func(*message.Message) error { return nil })
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := rt.Run(ctx); !errors.Is(err, antidote.ErrInvalidTopic) {
				t.Fatalf("a consumer of a topic one byte over started: %v", err)
			}
			r.topic = longest
			runCases(t, r, []mcase{
				{name: "healthy, on the longest topic", behave: "ok", build: plain()},
				{name: "rejected, on the longest topic", behave: "reject", build: plain()},
			})
			t.Logf("%s: the longest topic has %d bytes", kind, len(longest))
		})
	}
}
