package dlq

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/antidote-mq/antidote/hospital"
)

// walk is what a ward read of its DLQ: its dead letters, by ID, read at
// its first use after a refresh and kept until the next, so one treatment
// selects and treats the same letters, and a letter that fails again
// during a replay (back in the DLQ, behind the others) is not replayed
// twice by the same treatment. Hospital refreshes a ward at the start of
// each List, Replay and Purge.
type walk struct {
	h        *Hospital
	dlqTopic string
	// fetch reads the DLQ's letters, IDs set, in ID order (under mu).
	fetch func(context.Context) ([]hospital.Letter, error)

	mu      sync.Mutex // serialises reading and treating
	read    bool
	letters []hospital.Letter // ordered by ID
	at      map[int64]int
}

// forget drops what was read, under w.mu: the next use reads again.
func (w *walk) forget() { w.read, w.letters, w.at = false, nil, nil }

// refresh makes the next use read the DLQ again.
func (w *walk) refresh() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.forget()
}

// release gives back what the ward holds: nothing, but on RabbitMQ.
func (*walk) release() {}

// ensure reads the DLQ once.
func (w *walk) ensure(ctx context.Context) error {
	if w.read {
		return nil
	}
	letters, err := w.fetch(ctx)
	if err != nil {
		return err
	}
	w.letters, w.at, w.read = letters, make(map[int64]int, len(letters)), true
	for i, l := range letters {
		w.at[l.ID] = i
	}
	return nil
}

// page is one page of the letters q selects (hospital.LetterQuery.Match).
func (w *walk) page(q hospital.LetterQuery) hospital.LetterPage {
	limit := hospital.PageLimit(q.Limit)
	sel := make([]hospital.Letter, 0, min(limit+1, len(w.letters)))
	each := func(l hospital.Letter) bool {
		if q.After > 0 && (!q.Newest && l.ID <= q.After || q.Newest && l.ID >= q.After) {
			return true
		}
		if q.Match(l) {
			sel = append(sel, l)
		}
		return len(sel) <= limit
	}
	if q.Newest {
		for i := len(w.letters) - 1; i >= 0 && each(w.letters[i]); i-- {
		}
	} else {
		for i := 0; i < len(w.letters) && each(w.letters[i]); i++ {
		}
	}
	var p hospital.LetterPage
	if len(sel) > limit {
		sel = sel[:limit]
		p.Next = sel[limit-1].ID
	}
	p.Letters = slices.Clone(sel)
	return p
}

// Letters implements hospital.Ward.
func (w *walk) Letters(ctx context.Context, q hospital.LetterQuery) (hospital.LetterPage, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.ensure(ctx); err != nil {
		return hospital.LetterPage{}, err
	}
	return w.page(q), nil
}

// Letter implements hospital.Ward.
func (w *walk) Letter(ctx context.Context, id int64) (hospital.Letter, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.ensure(ctx); err != nil {
		return hospital.Letter{}, err
	}
	i, ok := w.at[id]
	if !ok {
		return hospital.Letter{}, fmt.Errorf("dlq: %s has no letter %d: %w", w.dlqTopic, id, hospital.ErrNotFound)
	}
	return w.letters[i], nil
}

// Groups implements hospital.Ward.
func (w *walk) Groups(ctx context.Context, q hospital.GroupQuery) (hospital.GroupPage, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.ensure(ctx); err != nil {
		return hospital.GroupPage{}, err
	}
	return hospital.PageGroups(hospital.GroupLetters(w.letters, w.h.cfg.Now()), q)
}

// taken is the letter id for a treatment, under w.mu: ErrNotFound when the
// ward never read it, ErrNotDead when it was treated already.
func (w *walk) taken(id int64) (*hospital.Letter, error) {
	i, ok := w.at[id]
	if !ok {
		return nil, fmt.Errorf("dlq: %s has no letter %d: %w", w.dlqTopic, id, hospital.ErrNotFound)
	}
	l := &w.letters[i]
	if l.State != hospital.StateDead {
		return nil, fmt.Errorf("dlq: letter %s of %s is %s: %w", l.UUID, w.dlqTopic, l.State, hospital.ErrNotDead)
	}
	return l, nil
}

// logTreated says who treated which letter: a broker's DLQ has no audit
// table, so this log is its audit.
func (w *walk) logTreated(l hospital.Letter, to hospital.State, actor, detail string) {
	w.h.cfg.Logger.Info("Dead letter treated", map[string]any{"dlq": w.dlqTopic, "uuid": l.UUID, "state": string(to), "actor": actor, "detail": detail})
}
