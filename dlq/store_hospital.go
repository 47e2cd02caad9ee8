package dlq

import (
	"context"
	"errors"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/hospital"
)

// hospitalStore reads the letters a hospital store holds (ingested from
// the DLQ by hospital.Ingest) instead of the broker's DLQ: listing pages
// through rows (oldest ingested first) without touching the broker, and
// replays and purges are the store's row-locked state changes
// (Hospital.Replay and Purge call hospital.Replay and Purge).
type hospitalStore struct{ s hospital.Store }

func (hospitalStore) close() error { return nil }

var errResolveInStore = errors.New("dlq: a store-backed hospital resolves letters with hospital.Replay and Purge, not while listing")

// visit pages through the dead letters ingested from dlqTopic.
func (h hospitalStore) visit(ctx context.Context, dlqTopic string, fn func(*message.Message) (bool, error)) error {
	return h.each(ctx, dlqTopic, func(_ int64, m *message.Message) error {
		resolve, err := fn(m)
		if err == nil && resolve {
			err = errResolveInStore
		}
		return err
	})
}

// each calls fn with every dead letter of dlqTopic as the message it was in
// the DLQ, and its row id; errStop ends it early without an error.
func (h hospitalStore) each(ctx context.Context, dlqTopic string, fn func(id int64, m *message.Message) error) error {
	q := hospital.LetterQuery{State: hospital.StateDead, DLQTopic: dlqTopic, Whole: true, Limit: 500}
	for {
		page, err := h.s.Letters(ctx, q)
		if err != nil {
			return err
		}
		for _, l := range page.Letters {
			m := message.NewMessage(l.UUID, l.Payload)
			for k, v := range l.Metadata {
				m.Metadata.Set(k, v)
			}
			if err := fn(l.ID, m); err != nil {
				if errors.Is(err, errStop) {
					return nil
				}
				return err
			}
		}
		if page.Next == 0 {
			return nil
		}
		q.After = page.Next
	}
}

// ids are the dead letters of dlqTopic that f selects.
func (h hospitalStore) ids(ctx context.Context, dlqTopic string, f Filter) ([]int64, error) {
	var out []int64
	err := h.each(ctx, dlqTopic, func(id int64, m *message.Message) error {
		if f.Match(read(m)) {
			out = append(out, id)
		}
		return nil
	})
	return out, err
}
