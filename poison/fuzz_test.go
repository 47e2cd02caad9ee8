package poison_test

import (
	"bytes"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/poison"
)

// FuzzReadEnvelope feeds arbitrary metadata values to ReadEnvelope. present
// is a bit mask choosing which keys exist (bit order as in keys below), so
// both "absent" and "present but empty" are explored. Properties:
//   - it never panics;
//   - an error is ErrNotEnvelope or an *EnvelopeError naming a key;
//   - a successful parse is consistent (non-negative counts, UTC times,
//     payload copied) and survives a round trip through Envelope.
//
// The seed corpus is in testdata/fuzz/FuzzReadEnvelope.
func FuzzReadEnvelope(f *testing.F) {
	f.Add(uint16(0x1ff), "retries_exhausted", "3", "42", "2", "0",
		"2024-05-01T10:00:00.123456789Z", "2024-05-01T10:00:01Z", "2024-05-02T00:00:00+02:00", []byte(`{"user_id":1`))
	f.Add(uint16(0x001), "permanent", "", "", "", "", "", "", "", []byte{})

	keys := []string{
		poison.KeyReason, poison.KeyOriginalPartition, poison.KeyOriginalOffset,
		poison.KeyAttempts, poison.KeyReplayCount, poison.KeyFirstFailedAt,
		poison.KeyLastFailedAt, poison.KeyReplayedAt,
	}
	f.Fuzz(func(t *testing.T, present uint16, reason, partition, offset, attempts, replays, first, last, replayedAt string, payload []byte) {
		values := []string{reason, partition, offset, attempts, replays, first, last, replayedAt}
		msg := message.NewMessage("fuzz-uuid", payload)
		for i, k := range keys {
			if present&(1<<i) != 0 {
				msg.Metadata.Set(k, values[i])
			}
		}
		if present&(1<<8) != 0 {
			msg.Metadata.Set(poison.KeyOriginalTopic, reason) // any text is a fine topic
		}

		l, err := poison.ReadEnvelope(msg)
		if err != nil {
			var envErr *poison.EnvelopeError
			switch {
			case errors.Is(err, poison.ErrNotEnvelope):
				if msg.Metadata.Get(poison.KeyReason) != "" {
					t.Fatalf("ErrNotEnvelope although %s=%q", poison.KeyReason, msg.Metadata.Get(poison.KeyReason))
				}
			case errors.As(err, &envErr):
				if envErr.Key == "" {
					t.Fatalf("EnvelopeError without key: %v", err)
				}
			default:
				t.Fatalf("unexpected error type %T: %v", err, err)
			}
			return
		}

		if l.Reason == "" || string(l.Reason) != reason {
			t.Fatalf("reason %q, want %q", l.Reason, reason)
		}
		if !bytes.Equal(l.Payload, payload) || l.UUID != "fuzz-uuid" {
			t.Fatalf("payload or UUID changed")
		}
		if len(payload) > 0 {
			msg.Payload[0]++
			if l.Payload[0] == msg.Payload[0] {
				t.Fatalf("Letter.Payload aliases the message payload")
			}
		}
		if l.OriginalPartition < 0 || l.OriginalOffset < 0 || l.Attempts < 0 || l.ReplayCount < 0 {
			t.Fatalf("negative number parsed: %+v", l)
		}
		if l.HasOffset {
			if mustInt(t, partition) != int64(l.OriginalPartition) || mustInt(t, offset) != l.OriginalOffset {
				t.Fatalf("partition/offset %q/%q parsed as %d/%d", partition, offset, l.OriginalPartition, l.OriginalOffset)
			}
		}
		for _, tm := range []time.Time{l.FirstFailedAt, l.LastFailedAt, l.ReplayedAt} {
			if !tm.IsZero() && tm.Location() != time.UTC {
				t.Fatalf("time not UTC: %v", tm)
			}
		}

		// Round trip: what was read, written again, reads back the same.
		again := poison.Envelope(message.NewMessage(l.UUID, l.Payload), l.Origin(), poison.Failure{
			Reason: l.Reason, Attempts: l.Attempts, FirstFailedAt: l.FirstFailedAt, LastFailedAt: l.LastFailedAt,
		})
		l2, err := poison.ReadEnvelope(again)
		if err != nil {
			t.Fatalf("re-reading a written envelope: %v", err)
		}
		if l2.Origin() != l.Origin() || l2.Reason != l.Reason || l2.Attempts != l.Attempts ||
			!l2.FirstFailedAt.Equal(l.FirstFailedAt) || !l2.LastFailedAt.Equal(l.LastFailedAt) {
			t.Fatalf("round trip changed the letter:\n%+v\n%+v", l, l2)
		}
	})
}

func mustInt(t *testing.T, s string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatalf("%q accepted but not an integer: %v", s, err)
	}
	return n
}

// FuzzEnvelopeReadsBack: whatever a consumed message carries in the keys
// ReadEnvelope parses, the letter Envelope makes of it reads back without
// error, and a dropped value is kept under KeyMalformed.
func FuzzEnvelopeReadsBack(f *testing.F) {
	f.Add("3", "-1", "yesterday", "x", "7")
	f.Add("", "", "", "", "")
	f.Fuzz(func(t *testing.T, attempts, replays, replayedAt, partition, offset string) {
		m := message.NewMessage("u", []byte("p"))
		for k, v := range map[string]string{
			poison.KeyAttempts: attempts, poison.KeyReplayCount: replays, poison.KeyReplayedAt: replayedAt,
			poison.KeyOriginalPartition: partition, poison.KeyOriginalOffset: offset,
		} {
			if v != "" {
				m.Metadata.Set(k, v)
			}
		}
		letter := poison.Envelope(m, poison.Origin{Topic: "t"}, poison.Failure{Reason: poison.ReasonPermanent})
		if _, err := poison.ReadEnvelope(letter); err != nil {
			t.Fatalf("letter does not read back: %v (metadata %q)", err, letter.Metadata)
		}
	})
}
