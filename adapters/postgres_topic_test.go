package adapters_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/poison"
	"github.com/antidote-mq/antidote/router"
)

// pgTopicOfLen is a unique topic of exactly n bytes.
func pgTopicOfLen(t *testing.T, n int) string {
	t.Helper()
	topic := "len_" + watermill.NewShortUUID()
	if len(topic) > n {
		t.Fatalf("%d bytes is too short for a unique topic", n)
	}
	return topic + strings.Repeat("x", n-len(topic))
}

// The longest topic the default prefix allows: antidote_queue_<topic>.dlq
// is 63 bytes. It works end to end, its DLQ is a table of its own, and a
// poison message reaches that DLQ through the router.
func TestPostgresTopicAtTheLimit(t *testing.T) {
	b := pgOpen(t, nil)
	limit := 63 - len(b.Config.Postgres.TablePrefix) - len(antidote.DeadLetterSuffix)
	topic := pgTopicOfLen(t, limit)
	dlqTopic := antidote.DLQTopic(topic)
	conn := pgConn(t, b, topic, dlqTopic)
	if len(b.Config.Postgres.TablePrefix+dlqTopic) != 63 {
		t.Fatalf("test setup: %q is not 63 bytes", b.Config.Postgres.TablePrefix+dlqTopic)
	}
	for _, tp := range []string{topic, dlqTopic} {
		if err := b.CheckTopic(tp); err != nil {
			t.Fatalf("CheckTopic(%q): %v", tp, err)
		}
	}
	if adapters.PostgresTable(b.Config.Postgres, topic) == adapters.PostgresTable(b.Config.Postgres, dlqTopic) {
		t.Fatal("the topic and its DLQ share a table")
	}

	r, err := router.New(router.Config{CrashLoopGuard: middleware.CrashLoopGuardConfig{Tracker: poison.MustNewMemoryDeliveryTracker(poison.MemoryDeliveryTrackerConfig{})}, CloseTimeout: 5 * time.Second, DeadLetter: middleware.DeadLetterConfig{Publisher: b.Publisher}})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var processed []string
	r.AddConsumerHandler("h", topic, b.Subscriber, func(m *message.Message) error {
		if string(m.Payload) == "poison" {
			return poison.Permanent(errors.New("cannot parse"))
		}
		mu.Lock()
		processed = append(processed, m.UUID)
		mu.Unlock()
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runDone := make(chan error, 1)
	go func() { runDone <- r.Run(ctx) }()
	<-r.Running()
	if err := b.Publisher.Publish(topic, message.NewMessage("good", []byte("ok")), message.NewMessage("bad", []byte("poison"))); err != nil {
		t.Fatal(err)
	}
	pgWait(t, 30*time.Second, "the good message was not processed and the bad one not dead-lettered", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(processed) == 1 && pgTableExists(t, conn, b, dlqTopic) && pgRows(t, conn, b, dlqTopic) == 1
	})
	cancel()
	if err := <-runDone; err != nil {
		t.Fatal(err)
	}
	if n := pgRows(t, conn, b, topic); n != 0 {
		t.Fatalf("%d rows left in the source table: the letter went back to the source?", n)
	}
	letters := pgReceiveLetters(t, b, dlqTopic, 1)
	if letters[0].UUID != "bad" || letters[0].Metadata.Get(poison.KeyReason) != string(poison.ReasonPermanent) {
		t.Fatalf("letter %s, reason %q", letters[0].UUID, letters[0].Metadata.Get(poison.KeyReason))
	}
	if processed[0] != "good" {
		t.Fatalf("processed %v", processed)
	}
}

// One byte over the limit (and the 48-byte topic whose DLQ table was, once
// truncated, the topic's own table) is refused by Subscribe and Publish
// before anything is created, with an error naming the 63-byte limit.
func TestPostgresTopicOverTheLimitRefused(t *testing.T) {
	b := pgOpen(t, nil)
	limit := 63 - len(b.Config.Postgres.TablePrefix) - len(antidote.DeadLetterSuffix)
	for _, n := range []int{limit + 1, 48, 63 - len(b.Config.Postgres.TablePrefix) + 1, 100} {
		topic := pgTopicOfLen(t, n)
		conn := pgConn(t, b, topic, topic+antidote.DeadLetterSuffix)
		check := func(what string, err error) {
			t.Helper()
			var te *antidote.TopicError
			if !errors.Is(err, antidote.ErrInvalidTopic) || !errors.As(err, &te) {
				t.Fatalf("%d bytes, %s: %v; want a *TopicError", n, what, err)
			}
			if !strings.Contains(err.Error(), "63") || !strings.Contains(err.Error(), strconv.Itoa(limit)) || te.Topic != topic {
				t.Fatalf("%d bytes, %s: %q does not name the 63-byte limit and the longest topic (%d)", n, what, err, limit)
			}
		}
		check("CheckTopic", b.CheckTopic(topic))
		check("Publish", b.Publisher.Publish(topic, message.NewMessage(watermill.NewUUID(), []byte("x"))))
		_, err := b.Subscriber.Subscribe(context.Background(), topic)
		check("Subscribe", err)
		check("SubscribeInitialize", b.Subscriber.(message.SubscribeInitializer).SubscribeInitialize(topic))
		if pgTableExists(t, conn, b, topic) || pgTableExists(t, conn, b, topic+antidote.DeadLetterSuffix) {
			t.Fatalf("%d bytes: a table was created for a refused topic", n)
		}
	}
}

// Topic checks on the publisher, the subscriber and the scheduler: names,
// characters, prefixes, DLQ topics.
func TestPostgresCheckTopic(t *testing.T) {
	b := pgOpen(t, func(p *adapters.PostgresConfig) { p.TablePrefix = "q_" })
	limit := 63 - 2 - 4
	at := strings.Repeat("a", limit)
	for name, v := range map[string]any{"publisher": b.Publisher, "subscriber": b.Subscriber} {
		if _, ok := v.(antidote.NameChecker); !ok {
			t.Fatalf("the %s is not a NameChecker", name)
		}
	}
	sc, ok := b.Scheduler().(antidote.StageChecker)
	if !ok {
		t.Fatal("the scheduler is not a StageChecker")
	}
	checkers := map[string]func(string) error{
		"broker":    b.CheckTopic,
		"scheduler": func(topic string) error { return sc.CheckStages(topic, []time.Duration{time.Second}) },
	}
	for _, tc := range []struct {
		topic, errHas string
	}{
		{"orders", ""},
		{"Orders.v2-eu_west.1", ""},
		{at, ""},
		{at + ".dlq", ""}, // a DLQ topic: its own table fits
		{at + "a", "at most 57 bytes"},
		{at + ".dlq.dlq", "63 bytes"}, // letters of letters do not fit
		{"", "empty"},
		{"a b", "letters, digits, '.', '_' and '-'"},
		{"a/b", "'/'"},
		{`a"b`, "'\"'"},
		{"a:b", "':'"}, // watermill-sql allows ':' and '$'; Antidote keeps to what names need no care
		{"a$b", "'$'"},
		{"caf\u00e9", "'\u00e9'"},
		{"a\x00b", "letters, digits"},
		{"a\xffb", "letters, digits"},
	} {
		for name, c := range checkers {
			err := c(tc.topic)
			if tc.errHas == "" {
				if err != nil {
					t.Errorf("%s.CheckTopic(%q): %v", name, tc.topic, err)
				}
				continue
			}
			if !errors.Is(err, antidote.ErrInvalidTopic) || !strings.Contains(err.Error(), tc.errHas) {
				t.Errorf("%s.CheckTopic(%q): %v; want antidote.ErrInvalidTopic naming %q", name, tc.topic, err, tc.errHas)
			}
		}
	}
}

// PostgreSQL quotes identifiers by doubling '"', not with Go's escapes; for
// every name a topic may have the quoted table name is what it always was,
// so existing tables keep working.
func TestPostgresTableQuoting(t *testing.T) {
	cfg := adapters.PostgresConfig{TablePrefix: "antidote_queue_"}
	for _, topic := range []string{"orders", "Orders.v2-eu_west.1", "a.dlq", "0", strings.Repeat("z", 44)} {
		if got, old := adapters.PostgresTable(cfg, topic), strconv.Quote(cfg.TablePrefix+topic); got != old {
			t.Errorf("PostgresTable(%q) = %s; it was %s", topic, got, old)
		}
	}
	if got := adapters.PostgresTable(cfg, `a"b\c`); got != `"antidote_queue_a""b\c"` {
		t.Errorf("PostgresTable(a\"b\\c) = %s", got)
	}
}
