package outbox

import (
	"context"
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
	// bounds one claim.
	BatchSize int
	// PollInterval is the pause when nothing is pending. If 0, 200ms.
	PollInterval time.Duration
	// Lease is how long claimed rows stay this relay's: a relay that dies
	// leaves them to the others after it. If 0, a minute. A round stops
	// claiming work past half of it, so a slow publish never outlives it.
	Lease time.Duration
	// MaxAttempts bounds the tries of one row (decode, publish, mark)
	// before it goes to the dead-letter table. If 0, 5. A row the broker
	// refuses for a limit (too large, invalid topic) goes at once.
	MaxAttempts int
	// RetryBackoff is the pause before a failed row's next try, doubled
	// per attempt up to 64 times it. If 0, 1s. Rows behind it go on.
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
		c.Lease = time.Minute
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
		bad("Lease %s is under 1s: claimed rows would go to other relays mid-publish; use e.g. 1m", c.Lease)
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
}

// NewRelay validates cfg (after defaults) and creates the outbox tables if
// they do not exist.
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
	r := &Relay{cfg: cfg, pub: pub, id: idempotency.ProducerID(cfg.Service, cfg.Instance), o: cfg.Outbox, attempts: map[int64]int{}}
	if err := r.o.CreateTables(ctx, cfg.Pool); err != nil {
		return nil, err
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
	messageID string
	topic     string
	payload   []byte
	metadata  []byte
	attempts  int
}

// RunOnce claims up to BatchSize due rows and relays them one by one: each
// published row is marked sent on its own; a failed one is retried later or
// dead-lettered. It returns an error wrapping throttle.ErrBackpressure when
// the publisher refused for backpressure (the rows not sent are given back).
func (r *Relay) RunOnce(ctx context.Context) (Round, error) {
	var round Round
	r.sweep(ctx)
	rows, err := r.claim(ctx)
	if err != nil {
		return round, err
	}
	round.Claimed = len(rows)
	// Each published row is marked by its own statement, in publish order,
	// by a marker beside the publishing loop: the next publish does not
	// wait for the last mark's round trip. At most markAhead rows are
	// published and not yet marked (what a crash would send again).
	marks := make(chan claimed, markAhead)
	var mu sync.Mutex
	markerDone := make(chan struct{})
	bg := context.WithoutCancel(ctx)
	go func() {
		defer close(markerDone)
		for row := range marks {
			err := r.mark(bg, row)
			mu.Lock()
			if err == nil {
				round.Published++
			} else {
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
		r.release(bg, rest)
		return round, err
	}
	start := time.Now()
	for i, row := range rows {
		if ctx.Err() != nil || time.Since(start) > r.cfg.Lease/2 {
			return finish(rows[i:], ctx.Err())
		}
		err := r.publish(ctx, row)
		switch {
		case err == nil:
			marks <- row
		case errors.Is(err, throttle.ErrBackpressure):
			return finish(rows[i:], err)
		default:
			mu.Lock()
			round.Failed++
			if r.fail(bg, row, err) {
				round.DeadLettered++
			}
			mu.Unlock()
		}
	}
	return finish(nil, nil)
}

// markAhead bounds the rows published and not yet marked sent.
const markAhead = 32

func (r *Relay) claim(ctx context.Context) ([]claimed, error) {
	q := `UPDATE ` + r.o.table + ` SET locked_by = $1, locked_until = now() + make_interval(secs => $2)
WHERE id IN (SELECT id FROM ` + r.o.table + ` WHERE sent_at IS NULL AND next_attempt_at <= now()
  AND (locked_until IS NULL OR locked_until < now()) ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED)
RETURNING id, message_id, topic, payload, metadata, attempts`
	rows, err := r.cfg.Pool.Query(ctx, q, r.id, r.cfg.Lease.Seconds(), r.cfg.BatchSize)
	if err != nil {
		return nil, fmt.Errorf("outbox: claim rows of %s: %w", r.o.table, err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (claimed, error) {
		var c claimed
		err := row.Scan(&c.id, &c.messageID, &c.topic, &c.payload, &c.metadata, &c.attempts)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("outbox: claim rows of %s: %w", r.o.table, err)
	}
	slices.SortFunc(out, func(a, b claimed) int { return int(a.id - b.id) })
	// Rows whose failures could not even be recorded are skipped once they
	// used up their tries: they wait in the table, claimed by nobody.
	r.mu.Lock()
	defer r.mu.Unlock()
	kept := out[:0]
	for _, c := range out {
		if n := r.attempts[c.id]; n >= r.cfg.MaxAttempts {
			continue
		}
		kept = append(kept, c)
	}
	return kept, nil
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
