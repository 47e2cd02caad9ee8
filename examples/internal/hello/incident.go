package hello

import (
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/internal/textcut"
	"github.com/antidote-mq/antidote/poison"
)

// sampleLetters is how many dead letters the human summary shows; the
// rest are counted, and `antidote dlq list` shows them all.
const sampleLetters = 5

// letterLog is what reached the DLQ, for the summary: every letter's
// reason, and the first few letters themselves.
type letterLog struct {
	mu       sync.Mutex
	topic    string
	byReason map[string]int64
	sample   []sampleLetter
}

type sampleLetter struct {
	seq                  int // the message's number in its run, 0 when unknown
	reason, payload, err string
}

func (l *letterLog) add(topic string, m *message.Message) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.topic = topic
	if l.byReason == nil {
		l.byReason = map[string]int64{}
	}
	reason := m.Metadata.Get(poison.KeyReason)
	l.byReason[reason]++
	if len(l.sample) < sampleLetters {
		key := m.Metadata.Get(keyMetadata)
		seq, _ := strconv.Atoi(key[strings.LastIndexByte(key, '/')+1:])
		l.sample = append(l.sample, sampleLetter{seq: seq, reason: reason, payload: shown(m.Payload, 44), err: m.Metadata.Get(poison.KeyError)})
	}
}

// reasons is a copy of the counts by reason, nil when there are none.
func (l *letterLog) reasons() map[string]int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.byReason) == 0 {
		return nil
	}
	return maps.Clone(l.byReason)
}

// shown is a payload as the summary prints it: as is when it is short,
// printable UTF-8 text, else quoted; cut to about n bytes.
func shown(p []byte, n int) string {
	s := string(p)
	if !utf8.ValidString(s) || strings.ContainsFunc(s, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		s = strconv.Quote(s)
	}
	return textcut.Truncate(s, n, "…")
}

// exampleDirs are the examples' directories by broker, for the commands the
// summary suggests.
var exampleDirs = map[adapters.Kind]string{adapters.KindKafka: "kafka", adapters.KindAMQP: "rabbitmq", adapters.KindPostgres: "postgres"}

// incident tells, after the counts, what happened to the poison pills and
// what to run next to see them in the hospital. A clean run (nothing
// poison published, nothing dead-lettered) adds nothing.
func (r *run) incident(w io.Writer, s Summary) {
	var pills Pills
	if r.opts.Input == "" && r.opts.Role != "consumer" {
		pills = CountPills(r.opts.Messages, r.opts.PoisonEvery, r.opts.StuckEvery)
	}
	if pills.Total() == 0 && s.DeadLettered == 0 {
		return
	}
	fmt.Fprintln(w)
	if pills.Total() > 0 {
		var kinds []string
		for k, n := range pills.Kinds {
			if n > 0 {
				kinds = append(kinds, fmt.Sprintf("%d %s", n, KindNames[k]))
			}
		}
		if pills.Stuck > 0 {
			kinds = append(kinds, fmt.Sprintf("%d failing on every attempt (--stuck-every %d)", pills.Stuck, r.opts.StuckEvery))
		}
		how := "--poison-every 0 for a clean run"
		if r.opts.PoisonEvery > 0 {
			how = fmt.Sprintf("--poison-every %d; %s", r.opts.PoisonEvery, how)
		}
		fmt.Fprintf(w, "The flood carried %d poison %s (%s): %s.\n", pills.Total(), plural(pills.Total(), "pill"), how, strings.Join(kinds, ", "))
	}
	if r.opts.Role == "producer" {
		fmt.Fprintf(w, "They wait in %q with the rest; the consumer dead-letters them:\n  go run ./examples/%s --role consumer --topic %s\n",
			r.opts.Topic, exampleDirs[r.kind], shellQuote(r.opts.Topic))
		return
	}
	if s.DeadLettered == 0 {
		fmt.Fprintln(w, "None was dead-lettered.")
		return
	}
	r.letters.mu.Lock()
	sample, topic := slices.Clone(r.letters.sample), r.letters.topic
	r.letters.mu.Unlock()
	reasons := s.DeadLetterReasons
	var byReason []string
	order := slices.Sorted(maps.Keys(reasons))
	slices.SortStableFunc(order, func(a, b string) int { return int(reasons[b] - reasons[a]) })
	for _, reason := range order {
		byReason = append(byReason, fmt.Sprintf("%s %d", reason, reasons[reason]))
	}
	fmt.Fprintf(w, "%d dead-lettered to %q (%s), each with its reason, error and origin in its metadata:\n",
		s.DeadLettered, topic, strings.Join(byReason, ", "))
	slices.SortStableFunc(sample, func(a, b sampleLetter) int { return a.seq - b.seq })
	width, rwidth := 0, 0
	for _, l := range sample {
		width = max(width, utf8.RuneCountInString(l.payload))
		rwidth = max(rwidth, len(l.reason))
	}
	for _, l := range sample {
		fmt.Fprintf(w, "  %-*s  %s%s  %s\n", rwidth, l.reason, l.payload, strings.Repeat(" ", width-utf8.RuneCountInString(l.payload)), textcut.Truncate(l.err, 100, "…"))
	}
	if more := s.DeadLettered - int64(len(sample)); more > 0 {
		fmt.Fprintf(w, "  … and %d more\n", more)
	}
	if r.opts.DLQOut != "" {
		fmt.Fprintf(w, "Each letter is in %s too (--dlq-out).\n", r.opts.DLQOut)
	}
	r.nextSteps(w)
}

// nextSteps prints the commands that show this run's dead letters in the
// hospital, for its broker: `antidote dlq` reads the DLQ on the broker,
// `antidote hospital` ingests it into a PostgreSQL store and serves the web
// UI. The letters of an in-process broker went with the process, so then it
// says how to run on one that outlives it first.
func (r *run) nextSteps(w io.Writer) {
	dir, ok := exampleDirs[r.kind]
	if !ok || r.broker == nil {
		fmt.Fprintf(w, "The %s broker's DLQ went with this process (--dlq-out FILE keeps the letters); go run ./examples/kafka shows them in the hospital.\n", r.kind)
		return
	}
	common := " --broker " + string(r.kind)
	if r.opts.Config != "" {
		common += " --config " + shellQuote(r.opts.Config)
	}
	if r.broker.Embedded {
		fmt.Fprintln(w, "\nThey were in the embedded broker, gone with this process. To see them in the hospital, run on a broker that outlives the run:")
		fmt.Fprintln(w, "  go run ./cmd/antidote devkafka &")
		fmt.Fprintln(w, "  export ANTIDOTE_KAFKA_BROKERS=127.0.0.1:9092")
		fmt.Fprintf(w, "  go run ./examples/%s%s\n", dir, shellArgs(r.args))
		fmt.Fprintln(w, "then, in the same shell, the causes, one line each, and each letter:")
	} else {
		fmt.Fprintln(w, "\nSee them in the hospital (in this shell: the same ANTIDOTE_* settings). The causes, one line each, and each letter:")
	}
	fmt.Fprintf(w, "  go run ./cmd/antidote dlq group%s --topic %s\n", common, shellQuote(r.opts.Topic))
	fmt.Fprintf(w, "  go run ./cmd/antidote dlq list%s --topic %s\n", common, shellQuote(r.opts.Topic))
	store := "'" + r.broker.Config.Postgres.URL + "'"
	switch {
	case os.Getenv("ANTIDOTE_POSTGRES_URL") != "":
		store = `"$ANTIDOTE_POSTGRES_URL"`
	case adapters.Redact(r.broker.Config.Postgres.URL) != r.broker.Config.Postgres.URL:
		// Not a password on the terminal: the reader puts it back.
		store = "'" + adapters.Redact(r.broker.Config.Postgres.URL) + "'"
	}
	taken := "copies them"
	if r.kind != adapters.KindKafka {
		taken = "moves them"
	}
	fmt.Fprintf(w, "Into the hospital's store, a PostgreSQL database (ingest %s from %q), and its web UI on http://127.0.0.1:8080:\n", taken, r.letters.topic)
	fmt.Fprintf(w, "  ANTIDOTE_HOSPITAL_URL=%s go run ./cmd/antidote hospital ingest%s --topics %s\n", store, common, shellQuote(r.opts.Topic))
	fmt.Fprintf(w, "  ANTIDOTE_HOSPITAL_URL=%s go run ./cmd/antidote hospital serve%s\n", store, common)
}

func plural(n int, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}

// shellArgs is args as a shell command line's tail (" --a b"), or "".
func shellArgs(args []string) string {
	var b strings.Builder
	for _, a := range args {
		b.WriteString(" " + shellQuote(a))
	}
	return b.String()
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && !strings.ContainsFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:=,@%+", r))
	}) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
