package pgstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/antidote-mq/antidote/fingerprint"
	"github.com/antidote-mq/antidote/hospital"
)

// DefaultHospitalTable is the name prefix of a HospitalStore's tables
// (<prefix>_letters, <prefix>_groups) when the config leaves Table empty.
const DefaultHospitalTable = "antidote_hospital"

// HospitalStoreConfig configures NewHospitalStore. Set exactly one of Pool
// and URL.
type HospitalStoreConfig struct {
	// Pool is an existing pgx pool; the store never closes it. If Pool is
	// nil, URL must be set.
	Pool *pgxpool.Pool
	// URL is a connection string; the store opens its own pool and closes
	// it on Close. If URL is empty, Pool must be set.
	URL string
	// Table is the prefix of the store's two tables, optionally
	// schema-qualified. If Table is empty, "antidote_hospital".
	Table string
	// SkipCreateTable skips the migrations NewHospitalStore applies
	// (creating the tables, upgrading those of an older version:
	// HospitalStore.Migrate), for teams that apply them themselves (antidote
	// migrate, or HospitalStore.Migrations in their own tool). If false, the zero
	// value, the store migrates on start, which needs CREATE privilege.
	SkipCreateTable bool
}

func (c *HospitalStoreConfig) setDefaults() {
	if c.Table == "" {
		c.Table = DefaultHospitalTable
	}
}

// Validate reports every field that cannot work, in field order.
func (c HospitalStoreConfig) Validate() error {
	errs := validateDB("HospitalStoreConfig", c.Pool, c.URL, c.Table, DefaultHospitalTable)
	// The longest derived name, <table>_letters_fingerprint, must fit
	// PostgreSQL's 63 bytes.
	parts := strings.Split(c.Table, ".")
	if name := parts[len(parts)-1]; len(name)+len("_letters_fingerprint") > 63 {
		errs = append(errs, fmt.Errorf("pgstore: HospitalStoreConfig.Table %q is too long: %q would exceed PostgreSQL's 63-byte names; use at most %d bytes", c.Table, name+"_letters_fingerprint", 63-len("_letters_fingerprint")))
	}
	return errors.Join(errs...)
}

// HospitalStore is a hospital.Store in PostgreSQL: one row per letter
// (unique by identity, so an ingest redelivery stores nothing twice) and one
// per group, updated in the letter's transaction, so listing groups reads a
// small table however many letters there are. Safe for concurrent use by
// many ingesters.
type HospitalStore struct {
	t                                      *table
	letters, group, audit, rates, canaries string // sanitized identifiers
	lettersName                            string
}

// NewHospitalStore fills cfg's defaults, validates it, opens a pool when
// cfg.URL is set and creates the tables unless cfg.SkipCreateTable.
func NewHospitalStore(ctx context.Context, cfg HospitalStoreConfig) (*HospitalStore, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	t, err := openTable(ctx, "hospital store", "HospitalStoreConfig", cfg.Pool, cfg.URL, cfg.Table, "", -1)
	if err != nil {
		return nil, err
	}
	parts := strings.Split(cfg.Table, ".")
	with := func(suffix string) string {
		p := append([]string(nil), parts...)
		p[len(p)-1] += suffix
		return pgx.Identifier(p).Sanitize()
	}
	s := &HospitalStore{t: t, letters: with("_letters"), group: with("_groups"), audit: with("_audit"), rates: with("_rates"), canaries: with("_canaries"), lettersName: parts[len(parts)-1] + "_letters"}
	if err := t.setUp(ctx, cfg.SkipCreateTable, "hospital", "antidote.hospital", cfg.Table+"_letters", s.steps()); err != nil {
		return nil, err
	}
	return s, nil
}

// steps are the versions of the store's schema.
func (s *HospitalStore) steps() []Migration {
	idx := func(suffix string) string { return pgx.Identifier{s.lettersName + suffix}.Sanitize() }
	v1 := `CREATE TABLE IF NOT EXISTS ` + s.letters + ` (
  id               BIGSERIAL PRIMARY KEY,
  identity         TEXT NOT NULL UNIQUE,
  broker           TEXT NOT NULL,
  dlq_topic        TEXT NOT NULL,
  format           TEXT NOT NULL,
  uuid             TEXT NOT NULL,
  original_topic   TEXT NOT NULL,
  handler          TEXT NOT NULL,
  consumer_group   TEXT NOT NULL,
  reason           TEXT NOT NULL,
  error            TEXT NOT NULL,
  error_type       TEXT NOT NULL,
  stack            TEXT NOT NULL,
  producer         TEXT NOT NULL,
  consumer_version TEXT NOT NULL,
  attempts         INTEGER NOT NULL,
  first_failed_at  TIMESTAMPTZ,
  last_failed_at   TIMESTAMPTZ,
  fingerprint      TEXT NOT NULL,
  payload          BYTEA NOT NULL,
  metadata         BYTEA NOT NULL,
  problem          TEXT NOT NULL,
  state            TEXT NOT NULL DEFAULT 'dead',
  ingested_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
  treated_at       TIMESTAMPTZ,
  treated_by       TEXT NOT NULL DEFAULT '',
  digest           TEXT NOT NULL DEFAULT ''
);
ALTER TABLE ` + s.letters + ` ADD COLUMN IF NOT EXISTS digest TEXT NOT NULL DEFAULT '';
CREATE INDEX IF NOT EXISTS ` + idx("_digest") + ` ON ` + s.letters + ` (digest);
CREATE INDEX IF NOT EXISTS ` + idx("_fingerprint") + ` ON ` + s.letters + ` (fingerprint, id);
CREATE INDEX IF NOT EXISTS ` + idx("_state") + ` ON ` + s.letters + ` (state, id);
CREATE INDEX IF NOT EXISTS ` + idx("_uuid") + ` ON ` + s.letters + ` (uuid, id);
CREATE TABLE IF NOT EXISTS ` + s.group + ` (
  fingerprint    TEXT PRIMARY KEY,
  handler        TEXT NOT NULL,
  reason         TEXT NOT NULL,
  error_type     TEXT NOT NULL,
  frame          TEXT NOT NULL,
  message        TEXT NOT NULL,
  shape          TEXT NOT NULL,
  producer       TEXT NOT NULL,
  count          BIGINT NOT NULL,
  dead           BIGINT NOT NULL,
  first_seen     TIMESTAMPTZ NOT NULL,
  last_seen      TIMESTAMPTZ NOT NULL,
  example        BIGINT NOT NULL,
  original_topic TEXT NOT NULL,
  consumer_version TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS ` + s.canaries + ` (
  fingerprint TEXT NOT NULL,
  version     TEXT NOT NULL,
  started_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
  outcome     TEXT NOT NULL DEFAULT '',
  PRIMARY KEY (fingerprint, version)
);
CREATE TABLE IF NOT EXISTS ` + s.rates + ` (
  fingerprint TEXT NOT NULL,
  hour        TIMESTAMPTZ NOT NULL,
  count       BIGINT NOT NULL,
  PRIMARY KEY (fingerprint, hour)
);
CREATE TABLE IF NOT EXISTS ` + s.audit + ` (
  id          BIGSERIAL PRIMARY KEY,
  at          TIMESTAMPTZ NOT NULL DEFAULT now(),
  actor       TEXT NOT NULL,
  action      TEXT NOT NULL,
  letter_id   BIGINT NOT NULL,
  fingerprint TEXT NOT NULL,
  detail      TEXT NOT NULL
)`
	// Columns added after their tables were first created, by a CREATE
	// TABLE IF NOT EXISTS that left existing tables without them.
	v2 := `ALTER TABLE ` + s.letters + ` ADD COLUMN IF NOT EXISTS treated_at TIMESTAMPTZ;
ALTER TABLE ` + s.letters + ` ADD COLUMN IF NOT EXISTS treated_by TEXT NOT NULL DEFAULT '';
ALTER TABLE ` + s.group + ` ADD COLUMN IF NOT EXISTS consumer_version TEXT NOT NULL DEFAULT ''`
	return []Migration{
		{Version: 1, Description: "create the tables (the schema before versions)", SQL: v1},
		{Version: 2, Description: "add the columns tables of the first schemas lack (letters.treated_at, letters.treated_by, groups.consumer_version)", SQL: v2},
	}
}

// CreateTableSQL returns the SQL of every migration (Migrations), which
// creates the tables or brings those of any earlier version up to date,
// for teams that apply schema changes themselves. It records no version:
// antidote migrate (or Migrate) does.
func (s *HospitalStore) CreateTableSQL() string { return s.t.schema.SQL() }

// Migrations returns every version of the store's schema, for its
// configured table, in order.
func (s *HospitalStore) Migrations() []Migration { return s.t.migrations() }

// PendingMigrations returns the migrations not applied to the table yet,
// changing nothing (no lock taken, no table created): what Migrate would
// apply now. An error wrapping ErrSchemaTooNew says the table is newer
// than this version of Antidote.
func (s *HospitalStore) PendingMigrations(ctx context.Context) ([]Migration, error) {
	return s.t.pending(ctx)
}

// Migrate applies the pending migrations, in one transaction under the
// advisory lock the store takes on start, and returns them (none when
// the table is current). The constructor does this unless SkipCreateTable.
func (s *HospitalStore) Migrate(ctx context.Context) ([]Migration, error) { return s.t.migrate(ctx) }

// text makes s storable in a TEXT column: PostgreSQL refuses NUL bytes
// and invalid UTF-8, which a foreign producer's letter may carry; refusing
// the letter would stall ingest on it.
func text(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	return strings.ReplaceAll(s, "\x00", "\uFFFD")
}

func nullTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// Put implements hospital.Store.
func (s *HospitalStore) Put(ctx context.Context, l hospital.Letter) (bool, error) {
	md, err := json.Marshal(l.Metadata)
	if err != nil {
		return false, fmt.Errorf("pgstore: hospital store: encode metadata of %s: %w", l.UUID, err)
	}
	if l.Metadata == nil {
		md = []byte("{}")
	}
	payload := l.Payload
	if payload == nil {
		payload = []byte{}
	}
	state := l.State
	if state == "" {
		state = hospital.StateDead
	}
	f := l.Fingerprint
	dead := 0
	if state == hospital.StateDead {
		dead = 1
	}
	// One statement (data-modifying CTEs), so one round trip and one
	// implicit transaction: the letter, its group's counts and its hour's
	// rate change together or not at all. A letter stored before (an
	// ingest redelivery) inserts no row, and the group and rate CTEs then
	// see none. A group's first and last seen, and its rates, go by when
	// its letters failed ($16, $17), never later than their ingest.
	sql := `WITH ins AS (
  INSERT INTO ` + s.letters + ` (identity, broker, dlq_topic, format, uuid, original_topic, handler,
    consumer_group, reason, error, error_type, stack, producer, consumer_version, attempts, first_failed_at, last_failed_at,
    fingerprint, payload, metadata, problem, state, digest)
  SELECT $1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20,$21,$22,$31
  WHERE NOT $32 OR NOT EXISTS (SELECT 1 FROM ` + s.letters + ` WHERE digest = $31)
  ON CONFLICT (identity) DO NOTHING
  RETURNING id, ingested_at,
    LEAST(COALESCE($16::timestamptz, $17::timestamptz, ingested_at), ingested_at) AS first_at,
    LEAST(COALESCE($17::timestamptz, ingested_at), ingested_at) AS failed_at
), grp AS (
  INSERT INTO ` + s.group + ` AS g (fingerprint, handler, reason, error_type, frame, message, shape, producer,
    count, dead, first_seen, last_seen, example, original_topic, consumer_version)
  SELECT $18, $23, $24, $25, $26, $27, $28, $29, 1, $30, first_at, failed_at, id, $6, $14 FROM ins
  ON CONFLICT (fingerprint) DO UPDATE SET count = g.count + 1, dead = g.dead + EXCLUDED.dead,
    first_seen = LEAST(g.first_seen, EXCLUDED.first_seen),
    last_seen = GREATEST(g.last_seen, EXCLUDED.last_seen),
    consumer_version = CASE WHEN EXCLUDED.consumer_version <> '' THEN EXCLUDED.consumer_version ELSE g.consumer_version END
), rate AS (
  INSERT INTO ` + s.rates + ` AS r (fingerprint, hour, count)
  SELECT $18, date_trunc('hour', failed_at), 1 FROM ins
  ON CONFLICT (fingerprint, hour) DO UPDATE SET count = r.count + 1
)
SELECT count(*) FROM ins`
	args := []any{text(l.Identity), text(l.Broker), text(l.DLQTopic), text(string(l.Format)), text(l.UUID), text(l.OriginalTopic), text(l.Handler),
		text(l.ConsumerGroup), text(l.Reason), text(l.Error), text(l.ErrorType), text(l.Stack), text(l.Producer), text(l.ConsumerVersion),
		l.Attempts, nullTime(l.FirstFailedAt), nullTime(l.LastFailedAt), f.ID, payload, md, text(l.Problem), string(state),
		text(f.Handler), text(f.Reason), text(f.ErrorType), text(f.Frame), text(f.Message), text(f.Shape), text(f.Producer), dead,
		text(l.Digest), l.Redelivered && l.Digest != ""}
	var n int
	if l.Redelivered && l.Digest != "" {
		// A redelivery's twin may be being stored right now by the
		// ingester whose connection dropped: wait for it, by digest.
		err = pgx.BeginFunc(ctx, s.t.pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, l.Digest); err != nil {
				return err
			}
			return tx.QueryRow(ctx, sql, args...).Scan(&n)
		})
	} else {
		err = s.t.pool.QueryRow(ctx, sql, args...).Scan(&n)
	}
	if err != nil {
		return false, fmt.Errorf("pgstore: hospital store: put letter %s (%s): %w", text(l.UUID), text(l.Identity), err)
	}
	return n == 1, nil
}

const letterColumns = `id, identity, broker, dlq_topic, format, uuid, original_topic, handler, consumer_group, reason, error,
  error_type, producer, consumer_version, attempts, first_failed_at, last_failed_at, fingerprint, problem, state, ingested_at, digest`

func scanLetter(row pgx.Row, extra ...any) (hospital.Letter, error) {
	var l hospital.Letter
	var first, last *time.Time
	var format, state string
	dest := append([]any{&l.ID, &l.Identity, &l.Broker, &l.DLQTopic, &format, &l.UUID, &l.OriginalTopic, &l.Handler,
		&l.ConsumerGroup, &l.Reason, &l.Error, &l.ErrorType, &l.Producer, &l.ConsumerVersion, &l.Attempts, &first, &last,
		&l.Fingerprint.ID, &l.Problem, &state, &l.IngestedAt, &l.Digest}, extra...)
	if err := row.Scan(dest...); err != nil {
		return l, err
	}
	l.Format, l.State = hospital.Format(format), hospital.State(state)
	if first != nil {
		l.FirstFailedAt = *first
	}
	if last != nil {
		l.LastFailedAt = *last
	}
	return l, nil
}

// Letter implements hospital.Store: the whole letter, with its payload,
// metadata, stack and the parts of its fingerprint.
func (s *HospitalStore) Letter(ctx context.Context, id int64) (hospital.Letter, error) {
	return s.letterIn(ctx, s.t.pool, id)
}

type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

func (s *HospitalStore) letterIn(ctx context.Context, q querier, id int64) (hospital.Letter, error) {
	var md []byte
	var stack string
	var f fingerprint.Fingerprint
	row := q.QueryRow(ctx, `SELECT `+prefixed("l.", letterColumns)+`, l.stack, l.payload, l.metadata,
  g.handler, g.reason, g.error_type, g.frame, g.message, g.shape, g.producer
FROM `+s.letters+` l JOIN `+s.group+` g ON g.fingerprint = l.fingerprint WHERE l.id = $1`, id)
	var payload []byte
	l, err := scanLetter(row, &stack, &payload, &md, &f.Handler, &f.Reason, &f.ErrorType, &f.Frame, &f.Message, &f.Shape, &f.Producer)
	if errors.Is(err, pgx.ErrNoRows) {
		return hospital.Letter{}, fmt.Errorf("pgstore: hospital store: letter %d: %w", id, hospital.ErrNotFound)
	}
	if err != nil {
		return hospital.Letter{}, fmt.Errorf("pgstore: hospital store: letter %d: %w", id, err)
	}
	f.ID = l.Fingerprint.ID
	l.Fingerprint, l.Stack, l.Payload = f, stack, payload
	if err := json.Unmarshal(md, &l.Metadata); err != nil {
		return l, fmt.Errorf("pgstore: hospital store: letter %d: metadata: %w", id, err)
	}
	return l, nil
}

func prefixed(p, cols string) string {
	fields := strings.Split(cols, ",")
	for i, f := range fields {
		fields[i] = p + strings.TrimSpace(f)
	}
	return strings.Join(fields, ", ")
}

// Letters implements hospital.Store. Pages are keyset-paginated on id, so
// a page costs the same at the start and the end of a million letters.
func (s *HospitalStore) Letters(ctx context.Context, q hospital.LetterQuery) (hospital.LetterPage, error) {
	limit := hospital.PageLimit(q.Limit)
	var where []string
	var args []any
	eq := func(col, v string) {
		if v != "" {
			args = append(args, v)
			where = append(where, col+" = $"+strconv.Itoa(len(args)))
		}
	}
	eq("state", string(q.State))
	eq("fingerprint", q.Fingerprint)
	eq("uuid", q.UUID)
	eq("reason", q.Reason)
	eq("handler", q.Handler)
	eq("original_topic", q.OriginalTopic)
	eq("dlq_topic", q.DLQTopic)
	eq("producer", q.Producer)
	anyOf := func(col string, v any, n int) {
		if n > 0 {
			args = append(args, v)
			where = append(where, col+" = ANY($"+strconv.Itoa(len(args))+")")
		}
	}
	anyOf("id", q.IDs, len(q.IDs))
	anyOf("uuid", q.UUIDs, len(q.UUIDs))
	anyOf("reason", q.Reasons, len(q.Reasons))
	anyOf("handler", q.Handlers, len(q.Handlers))
	anyOf("error_type", q.ErrorTypes, len(q.ErrorTypes))
	// hospital.Letter.FailedAt: the last failure, never after the ingest.
	const failedAt = "LEAST(COALESCE(last_failed_at, ingested_at), ingested_at)"
	if !q.FailedSince.IsZero() {
		args = append(args, q.FailedSince)
		where = append(where, failedAt+" >= $"+strconv.Itoa(len(args)))
	}
	if !q.FailedUntil.IsZero() {
		args = append(args, q.FailedUntil)
		where = append(where, failedAt+" <= $"+strconv.Itoa(len(args)))
	}
	order := "ASC"
	if q.Newest {
		order = "DESC"
	}
	if q.After > 0 {
		args = append(args, q.After)
		op := ">"
		if q.Newest {
			op = "<"
		}
		where = append(where, "id "+op+" $"+strconv.Itoa(len(args)))
	}
	cols := letterColumns
	if q.Whole {
		cols += `, stack, payload, metadata`
	}
	sql := `SELECT ` + cols + ` FROM ` + s.letters
	if len(where) > 0 {
		sql += ` WHERE ` + strings.Join(where, " AND ")
	}
	sql += ` ORDER BY id ` + order + ` LIMIT ` + strconv.Itoa(limit+1)
	rows, err := s.t.pool.Query(ctx, sql, args...)
	if err != nil {
		return hospital.LetterPage{}, fmt.Errorf("pgstore: hospital store: list letters: %w", err)
	}
	defer rows.Close()
	var page hospital.LetterPage
	for rows.Next() {
		var extra []any
		var md []byte
		var stack string
		var payload []byte
		if q.Whole {
			extra = []any{&stack, &payload, &md}
		}
		l, err := scanLetter(rows, extra...)
		if err != nil {
			return hospital.LetterPage{}, fmt.Errorf("pgstore: hospital store: list letters: %w", err)
		}
		if q.Whole {
			l.Stack, l.Payload = stack, payload
			if err := json.Unmarshal(md, &l.Metadata); err != nil {
				return hospital.LetterPage{}, fmt.Errorf("pgstore: hospital store: letter %d: metadata: %w", l.ID, err)
			}
		}
		page.Letters = append(page.Letters, l)
	}
	if err := rows.Err(); err != nil {
		return hospital.LetterPage{}, fmt.Errorf("pgstore: hospital store: list letters: %w", err)
	}
	if len(page.Letters) > limit {
		page.Letters = page.Letters[:limit]
		page.Next = page.Letters[limit-1].ID
	}
	return page, nil
}

// Groups implements hospital.Store.
func (s *HospitalStore) Groups(ctx context.Context, q hospital.GroupQuery) (hospital.GroupPage, error) {
	limit := hospital.PageLimit(q.Limit)
	var where []string
	var args []any
	if !q.WithResolved {
		where = append(where, "dead > 0")
	}
	if q.Reason != "" {
		args = append(args, q.Reason)
		where = append(where, "reason = $"+strconv.Itoa(len(args)))
	}
	if q.Handler != "" {
		args = append(args, q.Handler)
		where = append(where, "handler = $"+strconv.Itoa(len(args)))
	}
	cond := ""
	if len(where) > 0 {
		cond = ` WHERE ` + strings.Join(where, " AND ")
	}
	var order string
	switch q.Order {
	case hospital.ByLastSeen, "":
		order = "last_seen DESC, fingerprint"
	case hospital.ByCount:
		order = "dead DESC, last_seen DESC, fingerprint"
	case hospital.ByRecent:
		order = `(SELECT coalesce(sum(r.count), 0) FROM ` + s.rates + ` r WHERE r.fingerprint = g.fingerprint
  AND r.hour >= date_trunc('hour', now()) - interval '1 hour') DESC, last_seen DESC, fingerprint`
	default:
		return hospital.GroupPage{}, fmt.Errorf("pgstore: hospital store: group order %q is not %s, %s or %s", q.Order, hospital.ByLastSeen, hospital.ByCount, hospital.ByRecent)
	}
	var page hospital.GroupPage
	if err := s.t.pool.QueryRow(ctx, `SELECT count(*) FROM `+s.group+cond, args...).Scan(&page.Total); err != nil {
		return page, fmt.Errorf("pgstore: hospital store: count groups: %w", err)
	}
	rows, err := s.t.pool.Query(ctx, `SELECT fingerprint, handler, reason, error_type, frame, message, shape, producer, count, dead,
  first_seen, last_seen, example, original_topic, consumer_version FROM `+s.group+` g`+cond+` ORDER BY `+order+
		` LIMIT `+strconv.Itoa(limit)+` OFFSET `+strconv.Itoa(max(0, q.Offset)), args...)
	if err != nil {
		return page, fmt.Errorf("pgstore: hospital store: list groups: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var g hospital.Group
		f := &g.Fingerprint
		if err := rows.Scan(&f.ID, &f.Handler, &f.Reason, &f.ErrorType, &f.Frame, &f.Message, &f.Shape, &f.Producer,
			&g.Count, &g.Dead, &g.FirstSeen, &g.LastSeen, &g.Example, &g.OriginalTopic, &g.ConsumerVersion); err != nil {
			return page, fmt.Errorf("pgstore: hospital store: list groups: %w", err)
		}
		page.Groups = append(page.Groups, g)
	}
	if err := rows.Err(); err != nil {
		return page, fmt.Errorf("pgstore: hospital store: list groups: %w", err)
	}
	rows.Close()
	return page, s.fillRecent(ctx, page.Groups)
}

// fillRecent sets each group's Recent: its letters per hour over the last
// hospital.RecentHours hours, oldest first, from the rates table (one row
// per group and hour, kept by Put), so it costs the same at a million
// letters.
func (s *HospitalStore) fillRecent(ctx context.Context, groups []hospital.Group) error {
	if len(groups) == 0 {
		return nil
	}
	fps := make([]string, len(groups))
	at := make(map[string]int, len(groups))
	for i := range groups {
		fps[i] = groups[i].Fingerprint.ID
		at[fps[i]] = i
		groups[i].Recent = make([]int64, hospital.RecentHours)
	}
	rows, err := s.t.pool.Query(ctx, `SELECT fingerprint, (extract(epoch from date_trunc('hour', now()) - hour) / 3600)::int, count
FROM `+s.rates+` WHERE fingerprint = ANY($1) AND hour > date_trunc('hour', now()) - make_interval(hours => $2)`, fps, hospital.RecentHours)
	if err != nil {
		return fmt.Errorf("pgstore: hospital store: group rates: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var fp string
		var ago int
		var n int64
		if err := rows.Scan(&fp, &ago, &n); err != nil {
			return fmt.Errorf("pgstore: hospital store: group rates: %w", err)
		}
		if i, ok := at[fp]; ok && ago >= 0 && ago < hospital.RecentHours {
			groups[i].Recent[hospital.RecentHours-1-ago] = n
		}
	}
	return rows.Err()
}

// Treat implements hospital.Store.
func (s *HospitalStore) Treat(ctx context.Context, id int64, to hospital.State, actor, detail string, do func(hospital.Letter) error) error {
	if to != hospital.StateReplayed && to != hospital.StatePurged {
		return fmt.Errorf("pgstore: hospital store: treat letter %d: state %q is not %s or %s", id, to, hospital.StateReplayed, hospital.StatePurged)
	}
	return pgx.BeginFunc(ctx, s.t.pool, func(tx pgx.Tx) error {
		// The row lock makes a racing Treat of the same letter wait here,
		// then find it treated: a letter is replayed or purged, never both.
		var state string
		err := tx.QueryRow(ctx, `SELECT state FROM `+s.letters+` WHERE id = $1 FOR UPDATE`, id).Scan(&state)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("pgstore: hospital store: letter %d: %w", id, hospital.ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("pgstore: hospital store: lock letter %d: %w", id, err)
		}
		if hospital.State(state) != hospital.StateDead {
			return fmt.Errorf("pgstore: hospital store: letter %d is %s: %w", id, state, hospital.ErrNotDead)
		}
		l, err := s.letterIn(ctx, tx, id)
		if err != nil {
			return err
		}
		if do != nil {
			if err := do(l); err != nil {
				return err
			}
		}
		if _, err := tx.Exec(ctx, `UPDATE `+s.letters+` SET state = $2, treated_at = now(), treated_by = $3 WHERE id = $1`, id, string(to), text(actor)); err != nil {
			return fmt.Errorf("pgstore: hospital store: mark letter %d %s: %w", id, to, err)
		}
		if _, err := tx.Exec(ctx, `UPDATE `+s.group+` SET dead = dead - 1 WHERE fingerprint = $1`, l.Fingerprint.ID); err != nil {
			return fmt.Errorf("pgstore: hospital store: count letter %d out of its group: %w", id, err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO `+s.audit+` (actor, action, letter_id, fingerprint, detail) VALUES ($1, $2, $3, $4, $5)`,
			text(actor), string(to), id, l.Fingerprint.ID, text(detail)); err != nil {
			return fmt.Errorf("pgstore: hospital store: audit letter %d: %w", id, err)
		}
		return nil
	})
}

// Audit implements hospital.Store.
func (s *HospitalStore) Audit(ctx context.Context, letterID int64, limit int) ([]hospital.AuditEntry, error) {
	sql := `SELECT id, at, actor, action, letter_id, fingerprint, detail FROM ` + s.audit
	args := []any{}
	if letterID != 0 {
		sql += ` WHERE letter_id = $1`
		args = append(args, letterID)
	}
	rows, err := s.t.pool.Query(ctx, sql+` ORDER BY id DESC LIMIT `+strconv.Itoa(hospital.PageLimit(limit)), args...)
	if err != nil {
		return nil, fmt.Errorf("pgstore: hospital store: audit: %w", err)
	}
	defer rows.Close()
	var out []hospital.AuditEntry
	for rows.Next() {
		var e hospital.AuditEntry
		if err := rows.Scan(&e.ID, &e.At, &e.Actor, &e.Action, &e.LetterID, &e.Fingerprint, &e.Detail); err != nil {
			return nil, fmt.Errorf("pgstore: hospital store: audit: %w", err)
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

// ClaimCanary implements hospital.Store.
func (s *HospitalStore) ClaimCanary(ctx context.Context, fp, version string) (bool, error) {
	tag, err := s.t.pool.Exec(ctx, `INSERT INTO `+s.canaries+` (fingerprint, version) VALUES ($1, $2) ON CONFLICT DO NOTHING`, fp, text(version))
	if err != nil {
		return false, fmt.Errorf("pgstore: hospital store: claim canary of %s at %s: %w", fp, text(version), err)
	}
	return tag.RowsAffected() == 1, nil
}

// FinishCanary implements hospital.Store.
func (s *HospitalStore) FinishCanary(ctx context.Context, fp, version, outcome string) error {
	if _, err := s.t.pool.Exec(ctx, `UPDATE `+s.canaries+` SET outcome = $3 WHERE fingerprint = $1 AND version = $2`, fp, text(version), text(outcome)); err != nil {
		return fmt.Errorf("pgstore: hospital store: finish canary of %s at %s: %w", fp, text(version), err)
	}
	return nil
}

// LatestVersion implements hospital.Store.
func (s *HospitalStore) LatestVersion(ctx context.Context, handler string) (string, error) {
	var v string
	err := s.t.pool.QueryRow(ctx, `SELECT consumer_version FROM `+s.letters+` WHERE handler = $1 AND consumer_version <> '' ORDER BY id DESC LIMIT 1`, handler).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("pgstore: hospital store: latest version of %s: %w", handler, err)
	}
	return v, nil
}

// Close closes the pool if the store opened it (never a Pool passed in the
// config). Idempotent.
func (s *HospitalStore) Close() error {
	s.t.close()
	return nil
}

var _ hospital.Store = (*HospitalStore)(nil)
