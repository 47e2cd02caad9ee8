package hello_test

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/examples/internal/hello"
	"github.com/antidote-mq/antidote/poison"
	"github.com/antidote-mq/antidote/poisontest"
	"github.com/antidote-mq/antidote/router"
)

// recorder is a testing.TB that records what the kit reports instead of
// failing the real test. Methods the kit does not call fall through to the
// embedded real T.
type recorder struct {
	testing.TB
	mu     sync.Mutex
	errors []string
	fatal  []string
}

func (r *recorder) Helper() {}
func (r *recorder) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errors = append(r.errors, fmt.Sprintf(format, args...))
}
func (r *recorder) Fatalf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fatal = append(r.fatal, fmt.Sprintf(format, args...))
}

// The poisontest kit on the examples' real validity rule (hello.Parse);
// the tests live here because examples/internal cannot be imported from
// poisontest.

// store is the examples' sink in miniature: valid writes by UUID.
type store struct {
	mu   sync.Mutex
	rows map[string]hello.Hello
}

func (s *store) handler(msg *message.Message) error {
	h, err := hello.Parse(msg.Payload)
	if err != nil {
		return poison.Invalid(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rows[msg.UUID] = h
	return nil
}

var samples = [][]byte{hello.Payload(1), hello.Payload(42), []byte(`{"user_id":7,"msg":"héllo wörld"}`)}

func TestExamplesHandlerPassesTheKit(t *testing.T) {
	s := &store{rows: map[string]hello.Hello{}}
	// The 10 MB input takes seconds under -race on a loaded CI machine:
	// the bound is for a queue that never moves, not for speed.
	rep := poisontest.Run(t, s.handler, poisontest.WithValid(samples...), poisontest.WithTimeout(30*time.Second))
	t.Logf("report:\n%s", rep)
	if rep.Failed() {
		t.Fatal("the examples' handler broke a promise")
	}
	want := len(poisontest.Battery(nil)) + len(samples)
	if len(rep.Results) != want {
		t.Fatalf("%d results, want %d", len(rep.Results), want)
	}
	byName := map[string]poisontest.Result{}
	for _, r := range rep.Results {
		byName[r.Input] = r
	}
	for _, name := range []string{"truncated JSON", "wrong types", "empty payload", "10 MB payload", "null payload", "deeply nested JSON"} {
		if r := byName[name]; r.Outcome != poisontest.DeadLettered || r.Reason != poison.ReasonPermanent || r.Invocations != 1 {
			t.Errorf("%s: %+v, want dead-lettered permanent after 1 run", name, r)
		}
	}
	if r := byName["handler panic"]; r.Outcome != poisontest.DeadLettered || r.Reason != poison.ReasonPanic {
		t.Errorf("handler panic: %+v", r)
	}
	if r := byName["huge metadata value"]; r.Outcome != poisontest.Processed {
		t.Errorf("huge metadata value with a valid body: %+v, want processed", r)
	}
	// encoding/json turns invalid UTF-8 inside a string into U+FFFD, so the
	// examples' rule accepts that payload: it is processed, not poison.
	if r := byName["invalid UTF-8"]; r.Outcome != poisontest.Processed {
		t.Errorf("invalid UTF-8: %+v, want processed (json replaces bad bytes with U+FFFD)", r)
	}
	// Valid samples, the huge-metadata input (a valid body) and the
	// invalid-UTF-8 one are stored.
	if len(s.rows) != len(samples)+2 {
		t.Errorf("stored %d rows, want %d", len(s.rows), len(samples)+2)
	}
}

func TestBlockingHandlerFailsTheKit(t *testing.T) {
	rec := &recorder{TB: t}
	s := &store{rows: map[string]hello.Hello{}}
	naive := func(msg *message.Message) error {
		if _, err := hello.Parse(msg.Payload); err != nil {
			<-msg.Context().Done() // "wait for someone to fix it": holds the queue
			return msg.Context().Err()
		}
		return s.handler(msg)
	}
	rep := poisontest.Run(rec, naive, poisontest.WithValid(samples[0]), poisontest.WithTimeout(300*time.Millisecond))
	t.Logf("report:\n%s", rep)
	if !rep.Failed() || len(rec.fatal) > 0 {
		t.Fatalf("Failed=%t fatal=%q", rep.Failed(), rec.fatal)
	}
	blocked := 0
	for _, r := range rep.Results {
		if r.Outcome == poisontest.Blocked {
			blocked++
		}
	}
	if blocked != 6 { // the six payloads the rule rejects
		t.Errorf("%d inputs blocked, want 6", blocked)
	}
	if len(rec.errors) != 6 || !strings.Contains(rec.errors[0], `input "truncated JSON": blocked: the queue is blocked`) {
		t.Errorf("reported %d errors: %q", len(rec.errors), rec.errors)
	}
}

func TestValidSampleDeadLetteredFailsTheKit(t *testing.T) {
	rec := &recorder{TB: t}
	strict := func(msg *message.Message) error { return poison.Invalidf("rejects everything") }
	rep := poisontest.Run(rec, strict, poisontest.WithoutBattery(), poisontest.WithValid(samples[0]))
	if len(rep.Results) != 1 || rep.Results[0].Outcome != poisontest.DeadLettered || !rep.Failed() {
		t.Fatalf("report: %s", rep)
	}
	if len(rec.errors) != 1 || !strings.Contains(rec.errors[0], "a valid sample was dead-lettered") {
		t.Errorf("errors: %q", rec.errors)
	}
}

// A naive handler that calls every failure transient ("try again later")
// loops under the default stack: in a quiet stream the breaker cannot tell
// poison from an outage, so it holds the message back and it is delivered
// again and again (up to BreakerConfig.MaxHoldTime, 5 minutes).
func TestTransientForeverHandlerFailsTheKit(t *testing.T) {
	rec := &recorder{TB: t}
	swallow := func(msg *message.Message) error {
		if _, err := hello.Parse(msg.Payload); err != nil {
			return poison.Transient(errors.New("try again later"))
		}
		return nil
	}
	rep := poisontest.Run(rec, swallow,
		poisontest.WithoutBattery(),
		poisontest.WithValid(hello.Payload(1)),
		poisontest.WithInputs(poisontest.Input{Name: "truncated", Payload: []byte(`{"user_id":1`)}),
		poisontest.WithTimeout(2*time.Second))
	t.Logf("report:\n%s", rep)
	if !rep.Failed() || len(rec.errors) != 1 || len(rep.Results) != 2 {
		t.Fatalf("errors %q", rec.errors)
	}
	if r := rep.Results[0]; r.Outcome != poisontest.Processed || r.Problem != "" {
		t.Errorf("valid sample: %+v", r)
	}
	if r := rep.Results[1]; r.Outcome != poisontest.Looped || r.Invocations <= poisontest.DefaultMaxAttempts {
		t.Errorf("truncated: %+v, want looped", r)
	}
	if !strings.Contains(rec.errors[0], `input "truncated": looped: the handler ran`) {
		t.Errorf("error %q", rec.errors[0])
	}
}

// Without the breaker the same transient-forever handler does not loop:
// Retry gives up after the attempts and the input is dead-lettered.
func TestTransientForeverIsDeadLetteredByDefault(t *testing.T) {
	calls := 0
	rep := poisontest.Run(t, func(msg *message.Message) error {
		calls++
		return poison.Transient(errors.New("try again later"))
	}, poisontest.WithoutBattery(), poisontest.WithInputs(poisontest.Input{Name: "x", Payload: []byte(`x`)}), poisontest.WithMaxAttempts(4),
		poisontest.WithRouterConfig(func(c *router.Config) { c.DisableBreaker = true }))
	if r := rep.Results[0]; r.Outcome != poisontest.DeadLettered || r.Reason != poison.ReasonRetriesExhausted || r.Invocations != 4 || calls != 4 {
		t.Errorf("%+v calls=%d", r, calls)
	}
}
