package hospital

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/antidote-mq/antidote/fingerprint"
)

// ErrNotFound is wrapped by a Store's error for a letter it does not hold.
var ErrNotFound = errors.New("hospital: no such letter")

// ErrNotDead is wrapped by Treat's error for a letter already replayed or
// purged.
var ErrNotDead = errors.New("hospital: letter already treated")

// Ward is where dead letters wait for treatment: the hospital store
// (pgstore.HospitalStore), or a broker's DLQ read directly (dlq.Open). Every
// reading and every treatment of the hospital goes through it, so the CLI
// and the web UI show the same letters in the same groups and treat them
// the same way, whichever holds them. Implementations are safe for
// concurrent use.
type Ward interface {
	// Letter returns the letter with id, or an error wrapping ErrNotFound.
	Letter(ctx context.Context, id int64) (Letter, error)
	// Letters returns one page of the letters q selects, without their
	// payloads, metadata and stacks unless q.Whole (Letter has them).
	Letters(ctx context.Context, q LetterQuery) (LetterPage, error)
	// Groups returns one page of groups.
	Groups(ctx context.Context, q GroupQuery) (GroupPage, error)
	// Treat moves letter id from StateDead to to (StateReplayed or
	// StatePurged): it first takes the letter for itself (a row lock, a
	// delivery held, a fenced transaction), then runs do with the whole
	// letter (a replay publishes it there), then changes its state, counts
	// it out of its group and records the treatment (actor, action,
	// detail). If do fails nothing changes. A letter that is not dead, or
	// that a racing treatment holds, is an error wrapping ErrNotDead, and
	// do does not run: each letter is treated exactly one way. An error
	// wrapping ErrTakenOver means another treatment took the whole ward
	// over: nothing more can be treated through this one.
	Treat(ctx context.Context, id int64, to State, actor, detail string, do func(Letter) error) error
}

// ErrTakenOver is wrapped by Treat's error when another treatment took the
// ward over (a second hospital treating the same Kafka DLQ fences the
// first): the treatment stops; what it treated before stays treated.
var ErrTakenOver = errors.New("hospital: another treatment took over")

// Store keeps letters and their groups: a Ward that ingest fills, with the
// audit and the canaries' bookkeeping. pgstore.HospitalStore is the
// PostgreSQL one. Implementations are safe for concurrent use.
type Store interface {
	Ward
	// Put stores l unless it is stored already: a letter with its
	// Identity, or, when l.Redelivered, one with its Digest. It counts it
	// in its group, in one transaction, and reports whether l was new.
	// Once Put returns nil the letter is durable: the DLQ message may be
	// acked.
	Put(ctx context.Context, l Letter) (inserted bool, err error)
	// ClaimCanary records that group fp's canaries run at consumer
	// version: it reports false when they ran (or run) at that version
	// already, so a group is never canaried twice at one version, however
	// many hospitals run. FinishCanary records the outcome.
	ClaimCanary(ctx context.Context, fp, version string) (bool, error)
	FinishCanary(ctx context.Context, fp, version, outcome string) error
	// LatestVersion is the consumer version of the newest letter of
	// handler that carries one, or "".
	LatestVersion(ctx context.Context, handler string) (string, error)
	// Audit returns the latest audit entries, newest first: limit is
	// clamped as PageLimit; letterID 0 means every letter.
	Audit(ctx context.Context, letterID int64, limit int) ([]AuditEntry, error)
}

// AuditEntry is one treatment: who did what to which letter, when.
type AuditEntry struct {
	ID          int64     `json:"id"`
	At          time.Time `json:"at"`
	Actor       string    `json:"actor"`
	Action      string    `json:"action"`
	LetterID    int64     `json:"letter_id"`
	Fingerprint string    `json:"fingerprint"`
	Detail      string    `json:"detail"`
}

// LetterQuery selects letters. Empty fields select everything; a letter
// is selected when it matches every field that is set.
type LetterQuery struct {
	// State selects letters in that state. If State is empty, every
	// state.
	State State
	// Fingerprint selects one group's letters.
	Fingerprint string
	// UUID, Reason, Handler, OriginalTopic, DLQTopic and Producer select
	// exact values.
	UUID, Reason, Handler, OriginalTopic, DLQTopic, Producer string
	// IDs, UUIDs, Reasons, Handlers and ErrorTypes select letters with
	// any of the values listed.
	IDs                                  []int64
	UUIDs, Reasons, Handlers, ErrorTypes []string
	// FailedSince and FailedUntil bound the letter's last failure time
	// (inclusive); a letter that gives none counts as failed when it was
	// ingested (read, on a broker's DLQ).
	FailedSince, FailedUntil time.Time
	// Whole also returns each letter's payload, metadata and stack (as
	// Letter does): heavier pages, for tools that read every letter.
	Whole bool
	// Newest lists the most recently ingested first. If false, oldest first.
	Newest bool
	// After is the cursor of the previous page (LetterPage.Next); 0 starts
	// at the first page.
	After int64
	// Limit is the page size. If Limit is 0, 50; at most 1000.
	Limit int
}

// Match reports whether q selects l, for wards that select in memory (the
// cursor fields, After, Newest, Limit and Whole, are not about one letter).
func (q LetterQuery) Match(l Letter) bool {
	eq := func(want, got string) bool { return want == "" || want == got }
	in := func(want []string, got string) bool { return len(want) == 0 || slices.Contains(want, got) }
	failed := l.FailedAt()
	return eq(string(q.State), string(l.State)) && eq(q.Fingerprint, l.Fingerprint.ID) && eq(q.UUID, l.UUID) &&
		eq(q.Reason, l.Reason) && eq(q.Handler, l.Handler) && eq(q.OriginalTopic, l.OriginalTopic) &&
		eq(q.DLQTopic, l.DLQTopic) && eq(q.Producer, l.Producer) &&
		(len(q.IDs) == 0 || slices.Contains(q.IDs, l.ID)) && in(q.UUIDs, l.UUID) && in(q.Reasons, l.Reason) &&
		in(q.Handlers, l.Handler) && in(q.ErrorTypes, l.ErrorType) &&
		(q.FailedSince.IsZero() || !failed.Before(q.FailedSince)) && (q.FailedUntil.IsZero() || !failed.After(q.FailedUntil))
}

// LetterPage is one page of letters.
type LetterPage struct {
	Letters []Letter `json:"letters"`
	// Next is the cursor of the next page (LetterQuery.After), 0 when
	// this is the last page.
	Next int64 `json:"next"`
}

// GroupOrder sorts groups.
type GroupOrder string

// The orders of GroupQuery.
const (
	// ByLastSeen: the group that received a letter most recently first.
	ByLastSeen GroupOrder = "last_seen"
	// ByCount: the group with the most letters waiting first.
	ByCount GroupOrder = "count"
	// ByRecent: the group with the most letters in the current and the
	// previous hour first: what is failing now.
	ByRecent GroupOrder = "recent"
)

// RecentHours is how many hours Group.Recent covers.
const RecentHours = 24

// GroupQuery selects groups.
type GroupQuery struct {
	// Reason and Handler select exact values; empty selects all.
	Reason, Handler string
	// WithResolved also lists groups with no letter waiting. If false,
	// only groups with letters in state dead.
	WithResolved bool
	// Order sorts. If Order is empty, ByLastSeen.
	Order GroupOrder
	// Offset skips that many groups (groups are few: a page offset is
	// enough). Limit is the page size: if 0, 50; at most 1000.
	Offset, Limit int
}

// Group is the letters sharing one fingerprint.
type Group struct {
	Fingerprint fingerprint.Fingerprint `json:"fingerprint"`
	// Count is every letter ever ingested into the group; Dead those still
	// waiting.
	Count int64 `json:"count"`
	Dead  int64 `json:"dead"`
	// FirstSeen and LastSeen are when its letters failed: the earliest
	// first failure and the latest last failure (a letter that gives no
	// failure time, or one after it was ingested, counts as failed when it
	// was ingested).
	FirstSeen time.Time `json:"first_seen"`
	LastSeen  time.Time `json:"last_seen"`
	// Example is the ID of its first letter (on a broker's DLQ read
	// directly: of its oldest letter there).
	Example int64 `json:"example"`
	// OriginalTopic is the example's original topic.
	OriginalTopic string `json:"original_topic"`
	// ConsumerVersion is the version of the consumer that sent its latest
	// letter (antidote.consumer_version), or "".
	ConsumerVersion string `json:"consumer_version"`
	// Recent is the group's letters per hour of failure (Letter.FailedAt)
	// over the last RecentHours hours, oldest first, the current hour
	// last: its sparkline.
	Recent []int64 `json:"recent"`
}

// GroupPage is one page of groups.
type GroupPage struct {
	Groups []Group `json:"groups"`
	// Total is how many groups the query selects, over all pages.
	Total int `json:"total"`
}

// PageLimit clamps a page size: 0 is 50, more than 1000 is 1000.
func PageLimit(n int) int {
	switch {
	case n <= 0:
		return 50
	case n > 1000:
		return 1000
	}
	return n
}
