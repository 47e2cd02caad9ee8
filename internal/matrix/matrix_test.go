package matrix_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/poison"
)

// mcase is one row of the matrix: a message, what the handler does with
// it, and how it must end on each broker.
type mcase struct {
	name   string
	behave string // ok, reject, stuck, panic
	build  func(t *testing.T, b *adapters.Broker, topic, id string) *message.Message
	// want is the outcome on kind; the default follows behave: ok is
	// processed, anything else dead-lettered.
	want map[adapters.Kind]outcome
	// reason of the letter when dead-lettered; default by behave.
	reason poison.Reason
}

func (c mcase) outcome(kind adapters.Kind) outcome {
	if o, ok := c.want[kind]; ok {
		return o
	}
	if c.behave == "ok" {
		return processed
	}
	return dead
}

func (c mcase) wantReason() poison.Reason {
	switch {
	case c.reason != "":
		return c.reason
	case c.behave == "stuck":
		return poison.ReasonRetriesExhausted
	case c.behave == "panic":
		return poison.ReasonPanic
	default:
		return poison.ReasonPermanent
	}
}

func msg(id string, payload []byte, md ...string) *message.Message {
	m := message.NewMessage(watermill.NewUUID(), payload)
	m.Metadata.Set(idKey, id)
	for i := 0; i+1 < len(md); i += 2 {
		m.Metadata.Set(md[i], md[i+1])
	}
	return m
}

func plain(md ...string) func(*testing.T, *adapters.Broker, string, string) *message.Message {
	return func(_ *testing.T, _ *adapters.Broker, _, id string) *message.Message {
		return msg(id, []byte(`{"order":1}`), md...)
	}
}

// atLimit is the largest payload b takes for topic (the memory broker has
// no limit: 4 MiB); over adds bytes to it.
func atLimit(over int) func(*testing.T, *adapters.Broker, string, string) *message.Message {
	return func(t *testing.T, b *adapters.Broker, topic, id string) *message.Message {
		m := msg(id, nil)
		if b.Kind == adapters.KindMemory {
			m.Payload = bytes.Repeat([]byte{'m'}, 4<<20+over)
			return m
		}
		fits := func(n int) bool {
			m.Payload = make([]byte, n)
			return b.CheckMessage(topic, m) == nil
		}
		lo, hi := 0, 1<<20+1 // every limit here is 1 MiB
		if !fits(lo) || fits(hi) {
			t.Fatalf("%s: cannot bracket the size limit", b.Kind)
		}
		for hi-lo > 1 {
			if mid := (lo + hi) / 2; fits(mid) {
				lo = mid
			} else {
				hi = mid
			}
		}
		m.Payload = bytes.Repeat([]byte{'p'}, lo+over)
		return m
	}
}

func manyEntries(n int) func(*testing.T, *adapters.Broker, string, string) *message.Message {
	return func(_ *testing.T, _ *adapters.Broker, _, id string) *message.Message {
		m := msg(id, []byte("x"))
		for i := 0; i < n; i++ {
			m.Metadata.Set(fmt.Sprintf("k%05d", i), "v")
		}
		return m
	}
}

// withUUID gives the message a UUID made by f from a prefix unique to the
// run and case (the stores are shared: equal UUIDs would be one message to
// the idempotency store).
func withUUID(f func(prefix string) string) func(*testing.T, *adapters.Broker, string, string) *message.Message {
	return func(_ *testing.T, _ *adapters.Broker, topic, id string) *message.Message {
		m := msg(id, []byte("x"))
		m.UUID = f(topic + "/" + id + "/")
		return m
	}
}

func hugeUUID(prefix string) string { return prefix + kb100[len(prefix):] }

var (
	mb       = strings.Repeat("v", 1_000_000)
	kb100    = strings.Repeat("i", 100_000)
	kafka    = adapters.KindKafka
	amqp     = adapters.KindAMQP
	postgres = adapters.KindPostgres
)

// cases is the matrix. A refusal must wrap antidote.ErrMessageTooLarge or
// antidote.ErrInvalidTopic (checked below), except where noted.
var cases = []mcase{
	{name: "plain message", behave: "ok", build: plain()},
	{name: "empty payload", behave: "ok", build: func(_ *testing.T, _ *adapters.Broker, _, id string) *message.Message { return msg(id, nil) }},
	{name: "poison: rejected", behave: "reject", build: plain()},
	{name: "poison: handler panics", behave: "panic", build: plain()},
	{name: "poison: transient on every attempt, held past every deadline", behave: "stuck", build: plain()},

	// Sizes. Each broker's limit is 1 MiB here (Kafka's default).
	{name: "payload at the size limit", behave: "ok", build: atLimit(0)},
	{name: "payload at the size limit, rejected (its letter is larger than the limit)", behave: "reject", build: atLimit(0)},
	{name: "payload one byte over the size limit", behave: "ok", build: atLimit(1),
		want: map[adapters.Kind]outcome{kafka: refused, amqp: refused, postgres: refused}},

	// Metadata counts and sizes.
	{name: "0 metadata entries", behave: "ok", build: plain()},
	{name: "1 metadata entry", behave: "ok", build: plain("a", "b")},
	{name: "10,000 metadata entries", behave: "ok", build: manyEntries(10_000),
		want: map[adapters.Kind]outcome{amqp: refused}}, // AMQP headers: over what a consumer reads back
	{name: "10,000 metadata entries, rejected", behave: "reject", build: manyEntries(10_000),
		want: map[adapters.Kind]outcome{amqp: refused}},
	{name: "a 1 MB metadata value, rejected", behave: "reject", build: plain("big", mb),
		want: map[adapters.Kind]outcome{amqp: refused}}, // AMQP headers must fit one frame
	{name: "a 300-byte metadata key", behave: "ok", build: plain(strings.Repeat("k", 300), "v"),
		want: map[adapters.Kind]outcome{amqp: refused}}, // AMQP field names are at most 255 bytes

	// Invalid UTF-8 and NUL (the handler checks the metadata rule).
	{name: "invalid UTF-8 and NUL in metadata keys and values", behave: "ok",
		build: plain("k\xff\x00", "v\xfe\x00w", "nul\x00", "\x00")},
	{name: "invalid UTF-8 and NUL in metadata, rejected", behave: "reject",
		build: plain("k\xff\x00", "v\xfe\x00w")},
	{name: "invalid UTF-8 in the UUID", behave: "ok", build: withUUID(func(p string) string { return p + "\xff\xfe" }),
		want: map[adapters.Kind]outcome{}},

	// Identity fields of 100 KB.
	{name: "a 100 KB UUID", behave: "ok", build: withUUID(hugeUUID),
		want: map[adapters.Kind]outcome{amqp: refused, postgres: refused}},
	{name: "a 100 KB UUID, rejected", behave: "reject", build: withUUID(hugeUUID),
		want: map[adapters.Kind]outcome{amqp: refused, postgres: refused}},
	{name: "a 100 KB idempotency key", behave: "ok", build: func(_ *testing.T, _ *adapters.Broker, topic, id string) *message.Message {
		return msg(id, []byte("x"), poison.KeyIdempotencyKey, hugeUUID(topic+"/"+id+"/")) // unique per run: the store is shared
	},
		want: map[adapters.Kind]outcome{amqp: refused}},
	{name: "a 100 KB partition key", behave: "ok", build: plain("partition_key", kb100),
		want: map[adapters.Kind]outcome{amqp: refused}},
	{name: "no UUID", behave: "ok", build: withUUID(func(string) string { return "" })},

	// Malformed values in the metadata Antidote or Watermill reads.
	{name: "antidote.attempts malformed", behave: "reject", build: plain(poison.KeyAttempts, "-99999999999999999999")},
	{name: "antidote.retry_stage malformed", behave: "stuck", build: plain("antidote.retry_stage", "x")},
	{name: "antidote.retry_stage beyond the last stage", behave: "ok", build: plain("antidote.retry_stage", "2147483648")},
	{name: "antidote.retry_due and retry_topic malformed", behave: "ok", build: plain(antidote.MetadataRetryDue, "9999-99-99", antidote.MetadataRetryTopic, "elsewhere")},
	{name: "antidote.replay_count and replayed_at malformed", behave: "reject", build: plain(poison.KeyReplayCount, "-1", poison.KeyReplayedAt, "yesterday")},
	{name: "antidote.reason on an ordinary message", behave: "ok", build: plain(poison.KeyReason, "permanent", poison.KeyOriginalOffset, "x")},
	{name: "antidote.claim_check on an ordinary message", behave: "ok", build: plain(poison.KeyClaimCheck, "sha256:nothing")},
	// A decoder key from a producer is foreign (antidote.foreign.undecodable): handled.
	{name: "antidote.undecodable set by a producer", behave: "ok", build: plain(antidote.MetadataUndecodable, "spoofed")},
	{name: "traceparent, tracestate and baggage malformed", behave: "ok", build: plain("traceparent", "00-zz-zz-zz", "tracestate", "==,,", "baggage", "%%%;;=")},
	{name: "Watermill's delay keys malformed", behave: "ok", build: plain("_watermill_delayed_until", "2024-13-45T99:99:99Z", "_watermill_delayed_for", "forever\x00")},
	{name: "x-delivery-count malformed", behave: "ok", build: plain("x-delivery-count", "-7")},
	{name: "Watermill's UUID header as a metadata key", behave: "ok", build: plain("_watermill_message_uuid", "forged"),
		want: map[adapters.Kind]outcome{kafka: refused}}, // watermill-kafka refuses the reserved key, naming it
}

// TestMatrix runs every case on every broker, once plainly and once with
// the consumer shut down (router and broker closed, as SIGTERM does) while
// each case is in its handler for the first time. ANTIDOTE_MATRIX_BROKERS
// picks brokers (default all four).
func TestMatrix(t *testing.T) {
	if testing.Short() {
		t.Skip("runs every broker; skipped with -short")
	}
	st := openStores(t)
	for _, kind := range brokersFromEnv(t) {
		for _, sigterm := range []bool{false, true} {
			name := string(kind)
			if sigterm {
				if kind == adapters.KindMemory {
					continue // its messages live in the process SIGTERM ends
				}
				name += "/sigterm"
			}
			t.Run(name, func(t *testing.T) {
				r := newRun(t, kind, st)
				r.sigterm = sigterm
				runCases(t, r, cases)
			})
		}
	}
}

func brokersFromEnv(t *testing.T) []adapters.Kind {
	v := os.Getenv("ANTIDOTE_MATRIX_BROKERS")
	if v == "" {
		return kinds
	}
	var out []adapters.Kind
	for _, s := range strings.Split(v, ",") {
		out = append(out, adapters.Kind(strings.TrimSpace(s)))
	}
	return out
}

// runCases publishes one message per case, then a sentinel, and checks the
// invariant for each.
func runCases(t *testing.T, r *run, cs []mcase) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	prod := r.open(ctx, "")
	defer prod.Close()
	var shared *adapters.Broker
	if r.kind == adapters.KindMemory {
		shared = prod // one process: producer, consumer and DLQ share it
	}
	reader := prod
	if r.kind == adapters.KindKafka {
		reader = r.open(ctx, "matrix-dlq-"+r.topic)
		defer reader.Close()
	}
	r.readDLQ(ctx, reader)
	done := r.consume(ctx, shared)

	only := os.Getenv("ANTIDOTE_MATRIX_CASES") // a substring of case names, for debugging
	ids := map[string]mcase{}
	for i, c := range cs {
		if only != "" && !strings.Contains(c.name, only) {
			continue
		}
		id := fmt.Sprintf("c%02d", i)
		ids[id] = c
		r.publish(prod.Publisher, id, c.behave, c.build(t, prod, r.topic, id))
	}
	r.publish(prod.Publisher, "sentinel", "ok", msg("sentinel", []byte("sentinel")))
	r.waitSettled(3 * time.Minute)
	cancel()
	<-done

	r.mu.Lock()
	defer r.mu.Unlock()
	for _, bad := range r.badLetters {
		t.Errorf("%s: a letter is not a readable envelope: %s", r.kind, bad)
	}
	if r.processed["sentinel"] != 1 {
		t.Errorf("%s: the sentinel was processed %d times", r.kind, r.processed["sentinel"])
	}
	var rows []string
	for id, c := range ids {
		want := c.outcome(r.kind)
		got, detail := r.outcomeOf(id)
		if got != want {
			t.Errorf("%s: %q: %s (%s), want %s", r.kind, c.name, got, detail, want)
			continue
		}
		switch got {
		case processed:
			if n := r.processed[id]; n != 1 {
				t.Errorf("%s: %q: processed %d times, want exactly once", r.kind, c.name, n)
			}
		case dead:
			l := r.letters[id][0]
			if l.Reason != c.wantReason() {
				t.Errorf("%s: %q: letter reason %q, want %q", r.kind, c.name, l.Reason, c.wantReason())
			}
			// A restart can come between a letter's publish and the ack of
			// its original: then it is dead-lettered again (a duplicate
			// letter, never a loss).
			if n := len(r.letters[id]); n != 1 && (!r.sigterm || n > r.restarts+1) {
				t.Errorf("%s: %q: %d letters, want 1 (at most 1 per restart with SIGTERM)", r.kind, c.name, n)
			}
		case refused:
			err := r.refusedErr[id]
			clear := errors.Is(err, antidote.ErrMessageTooLarge) || errors.Is(err, antidote.ErrInvalidTopic) ||
				strings.Contains(err.Error(), "reserved")
			if !clear {
				t.Errorf("%s: %q: refused with an error that names no limit: %v", r.kind, c.name, err)
			}
		}
		// A consumer that restarts forgets its holds (they are in memory),
		// so the bound is per consumer life.
		if n := r.maxLifeRuns[id]; n > maxRunsPerMessage {
			t.Errorf("%s: %q: the handler ran %d times in one consumer's life: looping", r.kind, c.name, n)
		}
		rows = append(rows, fmt.Sprintf("%-70s %s %s", c.name, got, detail))
	}
	if n := r.logs.n.Load(); n > int64(maxErrorLogsPerCase*len(cs)) {
		t.Errorf("%s: %d error log lines for %d cases: looping", r.kind, n, len(cs))
	}
	sort.Strings(rows)
	t.Logf("%s (sigterm %t, %d restarts, %d error log lines):\n%s", r.kind, r.sigterm, r.restarts, r.logs.n.Load(), strings.Join(rows, "\n"))
	if r.sigterm && r.restarts == 0 {
		t.Errorf("%s: the consumer was never shut down mid-handler", r.kind)
	}
}

// outcomeOf is how id ended, with a detail for the report.
func (r *run) outcomeOf(id string) (outcome, string) {
	switch {
	case r.refusedErr[id] != nil && r.runs[id] == 0:
		msg := r.refusedErr[id].Error()
		if len(msg) > 160 {
			msg = msg[:160] + "..."
		}
		return refused, msg
	case r.processed[id] > 0 && len(r.letters[id]) == 0:
		return processed, fmt.Sprintf("ran %d", r.runs[id])
	case r.processed[id] == 0 && len(r.letters[id]) > 0:
		l := r.letters[id][0]
		how := ""
		if l.Metadata.Get(poison.KeyShrunk) == "true" {
			how = ", shrunk"
		}
		return dead, fmt.Sprintf("%s, ran %d, %d letter(s)%s", l.Reason, r.runs[id], len(r.letters[id]), how)
	default:
		return outcome(fmt.Sprintf("inconsistent (processed %d, letters %d, refused %v)", r.processed[id], len(r.letters[id]), r.refusedErr[id])), ""
	}
}
