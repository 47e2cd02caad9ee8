package outbox

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/idempotency"
	"github.com/antidote-mq/antidote/throttle"
)

// RelayConfig configures NewRelay.
type RelayConfig struct {
	// Pool reaches the database of the outbox. Required.
	Pool *pgxpool.Pool
	// Outbox is the table to relay. Required (New).
	Outbox *Outbox
	// SkipCreateTables skips the migrations NewRelay applies (creating the
	// tables, upgrading older ones: Outbox.Migrate), for teams that apply
	// them themselves (antidote migrate, or Outbox.Migrations in their own
	// tool). If false, the zero value, NewRelay migrates the tables on
	// start, which needs CREATE privilege on their schema.
	SkipCreateTables bool
	// Publisher sends the rows: a broker's publisher, optionally wrapped
	// (telemetry.NewPublisher for send spans, throttle.BackpressurePublisher
	// to pause while consumers lag). Required.
	Publisher message.Publisher
	// Service names the relay in the producer identity stamped on every
	// message ("<Service>/<Instance>", poison.KeyProducer), which a
	// consumer's flood guard and the hospital report. Required.
	Service string
	// Instance tells relays apart. If Instance is empty, "<hostname>-<pid>".
	Instance string
	// BatchSize is how many rows one round claims. If 0, 100. Rows are
	// published one by one and each is marked on its own; the batch only
	// bounds one claim. A key with many rows waiting is claimed up to a
	// batch at a time, its rows published in order.
	BatchSize int
	// PollInterval is the pause when nothing is pending. If 0, 200ms.
	PollInterval time.Duration
	// Lease is how long claimed rows stay this relay's without a word from
	// it: the relay renews it every Lease/4 while it works, so a dead
	// relay's rows (and the later rows of their keys) wait at most Lease
	// for another relay. If 0, 10s. Shorter: a dead relay's keys wait
	// less, but a relay that cannot reach the database for Lease/2 stops
	// its round. A publish starts only with Lease/2 of it left, and its
	// message's context is cancelled if the lease may have run out.
	Lease time.Duration
	// MaxAttempts bounds the tries of one row (decode, publish, mark)
	// before it goes to the dead-letter table. If 0, 5. A row the broker
	// refuses for a limit (too large, invalid topic) goes at once.
	MaxAttempts int
	// RetryBackoff is the pause before a failed row's next try, doubled
	// per attempt up to 64 times it. If 0, 1s. The later rows of its key
	// wait for it; other keys and keyless rows go on.
	RetryBackoff time.Duration
	// BackpressurePause is the pause after the publisher refused for
	// backpressure (throttle.ErrBackpressure): the round stops and gives
	// its rows back. If 0, 1s.
	BackpressurePause time.Duration
	// Retention is how long sent rows stay in the table (their message
	// ids keep refusing duplicates meanwhile). If 0, an hour.
	Retention time.Duration
	// Logger. If nil, nothing is logged.
	Logger watermill.LoggerAdapter
	// MeterProvider for the relay's metrics. If nil, none.
	MeterProvider metric.MeterProvider
}

func (c *RelayConfig) setDefaults() {
	if c.Instance == "" {
		host, _ := os.Hostname()
		c.Instance = host + "-" + strconv.Itoa(os.Getpid())
	}
	if c.BatchSize == 0 {
		c.BatchSize = 100
	}
	if c.PollInterval == 0 {
		c.PollInterval = 200 * time.Millisecond
	}
	if c.Lease == 0 {
		c.Lease = 10 * time.Second
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = 5
	}
	if c.RetryBackoff == 0 {
		c.RetryBackoff = time.Second
	}
	if c.BackpressurePause == 0 {
		c.BackpressurePause = time.Second
	}
	if c.Retention == 0 {
		c.Retention = time.Hour
	}
	if c.Logger == nil {
		c.Logger = watermill.NopLogger{}
	}
	if c.MeterProvider == nil {
		c.MeterProvider = metricnoop.NewMeterProvider()
	}
}

// Validate names every field that cannot work, in field order.
func (c RelayConfig) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("outbox: RelayConfig."+format, args...))
	}
	if c.Pool == nil {
		bad("Pool is nil; pass the pgx pool of the outbox's database")
	}
	if c.Outbox == nil {
		bad("Outbox is nil; pass outbox.New's")
	}
	if c.Publisher == nil {
		bad("Publisher is nil; pass the broker's publisher (adapters.Open)")
	}
	if err := (idempotency.ProducerConfig{Service: c.Service}).Validate(); err != nil {
		bad("Service: %v", err)
	}
	if c.BatchSize < 1 {
		bad("BatchSize %d is less than 1", c.BatchSize)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"PollInterval", c.PollInterval}, {"Lease", c.Lease}, {"RetryBackoff", c.RetryBackoff}, {"BackpressurePause", c.BackpressurePause}, {"Retention", c.Retention}} {
		if d.v < 0 {
			bad("%s %s is negative", d.name, d.v)
		}
	}
	if c.Lease > 0 && c.Lease < time.Second {
		bad("Lease %s is under 1s: claimed rows would go to other relays mid-publish; use e.g. 10s", c.Lease)
	}
	if c.MaxAttempts < 1 {
		bad("MaxAttempts %d is less than 1", c.MaxAttempts)
	}
	return errors.Join(errs...)
}

// Relay sends an outbox's rows. Build it with NewRelay; run it with Run.
type Relay struct {
	cfg      RelayConfig
	pub      message.Publisher // cfg.Publisher under the producer stamp
	id       string            // locked_by
	o        *Outbox
	attempts map[int64]int // tries of rows whose failures could not be recorded
	mu       sync.Mutex

	published, deadLettered metric.Int64Counter
	lastSweep               time.Time
	// cursor is where the next scan of keys starts (key_hash order): keys
	// take turns. It starts at random, so relays start apart.
	cursor []byte
}

// NewRelay validates cfg (after defaults) and migrates the outbox tables
// (creates them, upgrades older ones) unless cfg.SkipCreateTables.
func NewRelay(ctx context.Context, cfg RelayConfig) (*Relay, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	// The producer identity and the idempotency key (the message id, which
	// survives a re-send) on every message.
	pub, err := idempotency.NewPublisher(cfg.Publisher, idempotency.ProducerConfig{Service: cfg.Service, Instance: cfg.Instance,
		Key: func(m *message.Message) (string, error) { return m.UUID, nil }})
	if err != nil {
		return nil, err
	}
	r := &Relay{cfg: cfg, pub: pub, id: idempotency.ProducerID(cfg.Service, cfg.Instance), o: cfg.Outbox, attempts: map[int64]int{}, cursor: make([]byte, sha256.Size)}
	_, _ = rand.Read(r.cursor)
	if !cfg.SkipCreateTables {
		if err := r.o.CreateTables(ctx, cfg.Pool); err != nil {
			return nil, err
		}
	}
	if err := r.metrics(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *Relay) metrics() error {
	m := r.cfg.MeterProvider.Meter(antidote.TracerName)
	var err error
	if r.published, err = m.Int64Counter("antidote.outbox.published", metric.WithDescription("Outbox rows published and marked sent")); err != nil {
		return err
	}
	if r.deadLettered, err = m.Int64Counter("antidote.outbox.dead_lettered", metric.WithDescription("Outbox rows moved to the dead-letter table")); err != nil {
		return err
	}
	pending, err := m.Int64ObservableGauge("antidote.outbox.pending", metric.WithDescription("Outbox rows not sent yet"))
	if err != nil {
		return err
	}
	oldest, err := m.Float64ObservableGauge("antidote.outbox.oldest_pending_age", metric.WithUnit("s"), metric.WithDescription("Age of the oldest row not sent yet"))
	if err != nil {
		return err
	}
	_, err = m.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		st, err := r.Stats(ctx)
		if err != nil {
			return err
		}
		o.ObserveInt64(pending, st.Pending)
		o.ObserveFloat64(oldest, st.OldestPending.Seconds())
		return nil
	}, pending, oldest)
	return err
}

// Stats is the outbox's state.
type Stats struct {
	Pending       int64         // rows not sent yet
	OldestPending time.Duration // age of the oldest of them (0 when none)
	Dead          int64         // rows in the dead-letter table
}

// Stats reads the outbox's state.
func (r *Relay) Stats(ctx context.Context) (Stats, error) {
	var st Stats
	var age *float64
	err := r.cfg.Pool.QueryRow(ctx, `SELECT count(*), extract(epoch from now() - min(created_at)) FROM `+r.o.table+` WHERE sent_at IS NULL`).Scan(&st.Pending, &age)
	if err != nil {
		return st, fmt.Errorf("outbox: stats: %w", err)
	}
	if age != nil {
		st.OldestPending = time.Duration(*age * float64(time.Second))
	}
	if err := r.cfg.Pool.QueryRow(ctx, `SELECT count(*) FROM `+r.o.dead).Scan(&st.Dead); err != nil {
		return st, fmt.Errorf("outbox: stats: %w", err)
	}
	return st, nil
}

// Run relays until ctx is done. Errors of one round (the database away) are
// logged and the round is tried again after PollInterval; Run returns nil
// when ctx ends.
func (r *Relay) Run(ctx context.Context) error {
	for {
		n, err := r.RunOnce(ctx)
		if ctx.Err() != nil {
			return nil
		}
		var pause time.Duration
		switch {
		case errors.Is(err, throttle.ErrBackpressure):
			pause = r.cfg.BackpressurePause
		case err != nil:
			r.cfg.Logger.Error("Outbox relay round failed; trying again", err, nil)
			pause = r.cfg.PollInterval
		case n.Claimed == 0:
			pause = r.cfg.PollInterval
		}
		if pause > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(pause):
			}
		}
	}
}

// Round is what one RunOnce did.
type Round struct {
	Claimed, Published, Failed, DeadLettered int
}

type claimed struct {
	id        int64
	key       []byte // key_hash; nil: keyless
	messageID string
	topic     string
	payload   []byte
	metadata  []byte
	attempts  int
}

// RunOnce claims up to BatchSize due rows and relays them one by one: each
// published row is marked sent on its own; a failed one is retried later or
// dead-lettered. A row that failed and waits for its retry holds the later
// rows of its key (given back unsent); a dead-lettered one does not. It
// returns an error wrapping throttle.ErrBackpressure when the publisher
// refused for backpressure (the rows not sent are given back).
func (r *Relay) RunOnce(ctx context.Context) (Round, error) {
	var round Round
	r.sweep(ctx)
	claimedAt := time.Now() // before the lease is set: the lease surely lasts Lease from here
	rows, err := r.claim(ctx)
	if err != nil {
		return round, err
	}
	round.Claimed = len(rows)
	if len(rows) == 0 {
		return round, nil
	}
	bg := context.WithoutCancel(ctx)
	lease := r.hold(ctx, claimedAt, rows)
	// Each published row is marked by its own statement, in publish order,
	// by a marker beside the publishing loop: the next publish does not
	// wait for the last mark's round trip. At most markAhead rows are
	// published and not yet marked (what a crash would send again).
	marks := make(chan claimed, markAhead)
	var mu sync.Mutex
	markerDone := make(chan struct{})
	go func() {
		defer close(markerDone)
		for row := range marks {
			err := r.mark(bg, row)
			mu.Lock()
			if err == nil {
				round.Published++
			} else {
				// Published but not marked: it goes back for a retry, and
				// its key's later rows go on. They were published after its
				// first copy; the retry's is a duplicate, its id the same.
				round.Failed++
				if r.fail(bg, row, err) {
					round.DeadLettered++
				}
			}
			mu.Unlock()
		}
	}()
	finish := func(rest []claimed, err error) (Round, error) {
		close(marks)
		<-markerDone
		lease.stop()
		r.release(bg, rest)
		return round, err
	}
	// The rows are in id order, so each key's are in its order. A key
	// whose row failed and waits for a retry is stopped for the round: its
	// later rows go back unsent, behind it.
	var held []claimed
	stopped := map[string]bool{}
	for i, row := range rows {
		if row.key != nil && stopped[string(row.key)] {
			held = append(held, row)
			continue
		}
		if ctx.Err() != nil || !lease.publishable() {
			return finish(append(held, rows[i:]...), ctx.Err())
		}
		// A row whose failures could not even be recorded is left after
		// its tries: it waits in the table (its lease runs out), and so
		// do the later rows of its key.
		r.mu.Lock()
		tries := r.attempts[row.id]
		r.mu.Unlock()
		if tries >= r.cfg.MaxAttempts {
			if row.key != nil {
				stopped[string(row.key)] = true
			}
			continue
		}
		lease.started(row.id)
		err := r.publish(lease.ctx, row)
		switch {
		case err == nil:
			marks <- row
		case errors.Is(err, throttle.ErrBackpressure):
			return finish(append(held, rows[i:]...), err)
		default:
			mu.Lock()
			round.Failed++
			dead := r.fail(bg, row, err)
			if dead {
				round.DeadLettered++
			}
			mu.Unlock()
			if !dead && row.key != nil {
				stopped[string(row.key)] = true
			}
		}
	}
	return finish(held, nil)
}

// markAhead bounds the rows published and not yet marked sent.
const markAhead = 32

const (
	claimCols = `id, key_hash, message_id, topic, payload, metadata, attempts`
	// ready: due and leased by nobody (or a lease that ran out).
	ready = `next_attempt_at <= now() AND (locked_until IS NULL OR locked_until < now())`
)

// Claiming. Keyless rows are claimed oldest first, as before keys. A keyed
// row is claimed only as its key's head (the key's oldest unsent row: every
// row before it was sent or dead-lettered), ready, together with the ready
// rows right after it, by one relay: so no relay holds a row of a key while
// another holds an earlier one, and a dead relay's rows go out before any
// later row of their keys. Heads are found by walking the keys (a skip scan
// of the (key_hash, id) index from a cursor), not the rows: a key with a
// million rows behind a held or failed head costs one index probe per
// round, not a million.

// scanSQL visits up to $2 keys after $1 and says whether each head is
// ready; with keyless, it adds up to $3 ready keyless rows, oldest first.
func (r *Relay) scanSQL(keyless bool) string {
	t := r.o.table
	q := `WITH RECURSIVE k(key_hash, id, next_attempt_at, locked_until, n) AS (
  (SELECT key_hash, id, next_attempt_at, locked_until, 1 FROM ` + t + `
   WHERE sent_at IS NULL AND key_hash > $1 ORDER BY key_hash, id LIMIT 1)
  UNION ALL
  (SELECT x.*, k.n + 1 FROM k CROSS JOIN LATERAL (
     SELECT key_hash, id, next_attempt_at, locked_until FROM ` + t + `
     WHERE sent_at IS NULL AND key_hash > k.key_hash ORDER BY key_hash, id LIMIT 1) x
   WHERE k.n < $2))
SELECT key_hash, id, ` + ready + ` FROM k`
	if keyless {
		q += `
UNION ALL
(SELECT NULL, id, true FROM ` + t + ` WHERE sent_at IS NULL AND key_hash IS NULL AND ` + ready + ` ORDER BY id LIMIT $3)`
	}
	return q
}

// leaseSQL leases the rows the condition picks ($1 this relay, $2 the
// lease in seconds) and returns them.
func (r *Relay) leaseSQL(where string) string {
	return `UPDATE ` + r.o.table + ` SET locked_by = $1, locked_until = now() + make_interval(secs => $2) WHERE ` + where + ` RETURNING ` + claimCols
}

// headsSQL leases the rows of $3 still ready. SKIP LOCKED: a head another
// relay is claiming right now is its.
func (r *Relay) headsSQL() string {
	return r.leaseSQL(`id IN (SELECT id FROM ` + r.o.table + ` WHERE id = ANY($3) AND sent_at IS NULL AND ` + ready + ` FOR UPDATE SKIP LOCKED)`)
}

// tailsSQL leases, behind each head $3 of key $4, up to $5 rows of the key
// in order up to the first that is not ready (a running AND over them).
func (r *Relay) tailsSQL() string {
	return r.leaseSQL(`sent_at IS NULL AND id IN (
  SELECT s.id FROM unnest($3::bigint[], $4::bytea[]) AS h(id, key) CROSS JOIN LATERAL (
    SELECT id, bool_and(` + ready + `) OVER (ORDER BY id) AS free FROM (
      SELECT id, next_attempt_at, locked_until FROM ` + r.o.table + ` WHERE key_hash = h.key AND sent_at IS NULL AND id > h.id ORDER BY id LIMIT $5) x) s
  WHERE s.free)`)
}

// claim leases up to BatchSize rows: ready keyless rows and key heads,
// oldest first, then the rows behind the heads. In id order.
func (r *Relay) claim(ctx context.Context) ([]claimed, error) {
	b := r.cfg.BatchSize
	visit := 2 * b // keys one scan visits: some have a held or failed head
	type candidate struct {
		id  int64
		key []byte
	}
	var cands []candidate
	// Scan keys from the cursor until something is ready or every key
	// was visited once (past the end and round to where it began).
	origin, passedEnd := r.cursor, false
	for first := true; ; first = false {
		args := []any{r.cursor, visit}
		if first {
			args = append(args, b)
		}
		rows, err := r.cfg.Pool.Query(ctx, r.scanSQL(first), args...)
		if err != nil {
			return nil, fmt.Errorf("outbox: claim rows of %s: %w", r.o.table, err)
		}
		var (
			key     []byte
			id      int64
			ok      bool
			visited int
			last    []byte
		)
		_, err = pgx.ForEachRow(rows, []any{&key, &id, &ok}, func() error {
			if key != nil {
				visited++
				if bytes.Compare(key, last) > 0 {
					last = bytes.Clone(key)
				}
			}
			if ok {
				cands = append(cands, candidate{id: id, key: bytes.Clone(key)})
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("outbox: claim rows of %s: %w", r.o.table, err)
		}
		done := len(cands) > 0
		if visited < visit { // the last key: the next scan starts over
			r.cursor = []byte{}
			done = done || len(origin) == 0 || passedEnd
			passedEnd = true
		} else {
			r.cursor = last
			done = done || passedEnd && bytes.Compare(last, origin) >= 0
		}
		if done {
			break
		}
	}
	if len(cands) == 0 {
		return nil, nil
	}
	slices.SortFunc(cands, func(a, b candidate) int { return cmp.Compare(a.id, b.id) })
	ids := make([]int64, 0, min(len(cands), b))
	for _, c := range cands[:min(len(cands), b)] {
		ids = append(ids, c.id)
	}
	out, err := r.collect(ctx, r.headsSQL(), r.id, r.cfg.Lease.Seconds(), ids)
	if err != nil {
		return nil, err
	}
	// The rest of the batch: the ready rows right behind each head.
	var heads []int64
	var keys [][]byte
	for _, c := range out {
		if c.key != nil {
			heads, keys = append(heads, c.id), append(keys, c.key)
		}
	}
	if len(heads) > 0 {
		if per := (b - len(out)) / len(heads); per > 0 {
			tails, err := r.collect(ctx, r.tailsSQL(), r.id, r.cfg.Lease.Seconds(), heads, keys, per)
			if err != nil {
				// The heads are claimed: relay them alone.
				r.cfg.Logger.Error("Outbox relay could not claim the rows behind its key heads; relaying the heads alone", err, nil)
			}
			out = append(out, tails...)
		}
	}
	slices.SortFunc(out, func(a, b claimed) int { return cmp.Compare(a.id, b.id) })
	return out, nil
}

func (r *Relay) collect(ctx context.Context, q string, args ...any) ([]claimed, error) {
	rows, err := r.cfg.Pool.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("outbox: claim rows of %s: %w", r.o.table, err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (claimed, error) {
		var c claimed
		err := row.Scan(&c.id, &c.key, &c.messageID, &c.topic, &c.payload, &c.metadata, &c.attempts)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("outbox: claim rows of %s: %w", r.o.table, err)
	}
	return out, nil
}

// holding is a round's lease: renewed every Lease/4 while the round works.
type holding struct {
	r      *Relay
	ctx    context.Context // cancelled once the lease may have run out
	cancel context.CancelFunc
	ids    []int64
	mu     sync.Mutex
	until  time.Time      // the lease surely holds till then (timed from before the statement that set it)
	unsent map[int64]bool // claimed, publish not started: must still be this relay's
	lost   bool
	quit   chan struct{}
	done   chan struct{}
}

func (r *Relay) hold(ctx context.Context, from time.Time, rows []claimed) *holding {
	h := &holding{r: r, until: from.Add(r.cfg.Lease), unsent: make(map[int64]bool, len(rows)), quit: make(chan struct{}), done: make(chan struct{})}
	h.ctx, h.cancel = context.WithCancel(ctx)
	for _, c := range rows {
		h.ids = append(h.ids, c.id)
		h.unsent[c.id] = true
	}
	go h.run()
	return h
}

func (h *holding) run() {
	defer close(h.done)
	tick := time.NewTicker(h.r.cfg.Lease / 4)
	defer tick.Stop()
	for {
		h.mu.Lock()
		expire := time.NewTimer(time.Until(h.until))
		h.mu.Unlock()
		select {
		case <-h.quit:
			expire.Stop()
			return
		case <-expire.C:
			h.expired("its lease ran out unrenewed (the database out of reach, or the process stalled)")
			return
		case <-tick.C:
			expire.Stop()
			if why := h.renew(); why != "" {
				h.expired(why)
				return
			}
		}
	}
}

// expired: another relay may have the rows now. Stop publishing and
// cancel the publish in flight (for publishers that honour the message's
// context).
func (h *holding) expired(why string) {
	h.mu.Lock()
	h.lost = true
	h.mu.Unlock()
	h.cancel()
	h.r.cfg.Logger.Error("Outbox relay stops its round: "+why, nil, watermill.LogFields{"lease": h.r.cfg.Lease.String()})
}

// renew extends the lease; it says why not once the lease may have run out
// or another relay holds a row this one has not published yet.
func (h *holding) renew() string {
	start := time.Now()
	h.mu.Lock()
	until := h.until
	h.mu.Unlock()
	ctx, cancel := context.WithDeadline(context.WithoutCancel(h.ctx), until)
	defer cancel()
	rows, err := h.r.cfg.Pool.Query(ctx, `UPDATE `+h.r.o.table+` SET locked_until = now() + make_interval(secs => $3)
WHERE id = ANY($1) AND locked_by = $2 AND sent_at IS NULL RETURNING id`, h.ids, h.r.id, h.r.cfg.Lease.Seconds())
	var kept []int64
	if err == nil {
		kept, err = pgx.CollectRows(rows, pgx.RowTo[int64])
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if err != nil {
		if time.Now().Before(h.until) {
			h.r.cfg.Logger.Error("Outbox relay could not renew its lease; trying again", err, nil)
			return ""
		}
		return fmt.Sprintf("its lease ran out unrenewed: %v", err)
	}
	h.until = start.Add(h.r.cfg.Lease)
	// Rows leave unsent before their publish starts: one still in it now
	// was in it during the statement, so it must have been renewed.
	still := make(map[int64]bool, len(kept))
	for _, id := range kept {
		still[id] = true
	}
	for id := range h.unsent {
		if !still[id] {
			return fmt.Sprintf("row %d it has not published is not its any more (another relay took it after its lease ran out)", id)
		}
	}
	return ""
}

// publishable: the lease has at least half of it left for the next publish.
func (h *holding) publishable() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return !h.lost && time.Until(h.until) >= h.r.cfg.Lease/2
}

func (h *holding) started(id int64) {
	h.mu.Lock()
	delete(h.unsent, id)
	h.mu.Unlock()
}

func (h *holding) stop() {
	close(h.quit)
	<-h.done
	h.cancel()
}

// permanentError is a failure more tries cannot fix.
type permanentError struct{ error }

func (e permanentError) Unwrap() error { return e.error }

// publish sends one row.
func (r *Relay) publish(ctx context.Context, row claimed) error {
	md := map[string]string{}
	if err := json.Unmarshal(row.metadata, &md); err != nil {
		return permanentError{fmt.Errorf("its metadata is not a JSON object of strings: %v", err)}
	}
	msg := message.NewMessage(row.messageID, row.payload)
	for k, v := range md {
		msg.Metadata.Set(k, v)
	}
	// The send continues the trace of the business transaction.
	msg.SetContext(propagation.TraceContext{}.Extract(ctx, antidote.MetadataCarrier(msg.Metadata)))
	if err := r.pub.Publish(row.topic, msg); err != nil {
		if errors.Is(err, throttle.ErrBackpressure) {
			return err
		}
		if antidote.IsLimit(err) {
			return permanentError{fmt.Errorf("the broker refuses it: %w", err)}
		}
		return fmt.Errorf("publish to %q: %w", row.topic, err)
	}
	return nil
}

// mark marks one published row sent, by a statement of its own.
func (r *Relay) mark(ctx context.Context, row claimed) error {
	tag, err := r.cfg.Pool.Exec(ctx, `UPDATE `+r.o.table+` SET sent_at = now(), locked_by = NULL, locked_until = NULL WHERE id = $1 AND locked_by = $2`, row.id, r.id)
	if err != nil {
		return fmt.Errorf("published, but could not be marked sent (it will be sent again; consumers skip the copy by its id): %w", err)
	}
	if tag.RowsAffected() == 0 {
		r.cfg.Logger.Info("Outbox row was published after its lease ran out; another relay may send it too", watermill.LogFields{"row": row.id, "message_id": row.messageID})
	}
	r.published.Add(ctx, 1)
	return nil
}

// fail records a failed try of row, or moves row to the dead-letter table
// once it is permanent or out of tries; it reports the latter.
func (r *Relay) fail(ctx context.Context, row claimed, cause error) bool {
	attempts := row.attempts + 1
	var perm permanentError
	if !errors.As(cause, &perm) && attempts < r.cfg.MaxAttempts {
		backoff := r.cfg.RetryBackoff << min(attempts-1, 6)
		_, err := r.cfg.Pool.Exec(ctx, `UPDATE `+r.o.table+` SET attempts = $2, last_error = $3, next_attempt_at = now() + make_interval(secs => $4),
  locked_by = NULL, locked_until = NULL WHERE id = $1`, row.id, attempts, cause.Error(), backoff.Seconds())
		if err == nil {
			r.cfg.Logger.Error("Outbox row failed; trying it again later", cause, watermill.LogFields{"row": row.id, "message_id": row.messageID, "attempt": attempts})
			return false
		}
		// The row cannot even be updated (the cause of a failed mark,
		// often): it goes to the dead-letter table now.
		cause = fmt.Errorf("%w; recording the failure failed too: %v", cause, err)
	}
	reason := fmt.Sprintf("after %d attempt(s): %v", attempts, cause)
	err := pgx.BeginFunc(ctx, r.cfg.Pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO `+r.o.dead+` (id, message_id, topic, payload, metadata, created_at, attempts, reason)
SELECT id, message_id, topic, payload, metadata, created_at, $2, $3 FROM `+r.o.table+` WHERE id = $1 ON CONFLICT (id) DO NOTHING`, row.id, attempts, reason)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return nil // dead-lettered before (a relay died in between)
		}
		_, err = tx.Exec(ctx, `DELETE FROM `+r.o.table+` WHERE id = $1`, row.id)
		return err
	})
	if err != nil {
		// Not even that: remember the tries here, so this relay stops
		// sending the row after MaxAttempts, and say so loudly.
		r.mu.Lock()
		r.attempts[row.id] = attempts
		r.mu.Unlock()
		r.cfg.Logger.Error("Outbox row cannot be dead-lettered; this relay leaves it after its tries", err, watermill.LogFields{"row": row.id, "message_id": row.messageID, "reason": reason})
		return false
	}
	r.deadLettered.Add(ctx, 1)
	r.cfg.Logger.Error("Outbox row dead-lettered", errors.New(reason), watermill.LogFields{"row": row.id, "message_id": row.messageID, "dead_table": r.o.dead})
	return true
}

// release gives claimed rows back at once, for the next round or relay.
func (r *Relay) release(ctx context.Context, rows []claimed) {
	if len(rows) == 0 {
		return
	}
	ids := make([]int64, len(rows))
	for i, c := range rows {
		ids[i] = c.id
	}
	if _, err := r.cfg.Pool.Exec(ctx, `UPDATE `+r.o.table+` SET locked_by = NULL, locked_until = NULL WHERE id = ANY($1) AND locked_by = $2 AND sent_at IS NULL`, ids, r.id); err != nil {
		r.cfg.Logger.Error("Outbox relay could not give claimed rows back; they return after the lease", err, nil)
	}
}

// sweep deletes sent rows past Retention, at most once a minute.
func (r *Relay) sweep(ctx context.Context) {
	if time.Since(r.lastSweep) < time.Minute {
		return
	}
	r.lastSweep = time.Now()
	if _, err := r.cfg.Pool.Exec(ctx, `DELETE FROM `+r.o.table+` WHERE sent_at < now() - make_interval(secs => $1)`, r.cfg.Retention.Seconds()); err != nil {
		r.cfg.Logger.Error("Outbox relay could not delete old sent rows", err, nil)
	}
}
