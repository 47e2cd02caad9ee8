package web

import (
	"context"
	"errors"
	"maps"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/hospital"
	"github.com/antidote-mq/antidote/poison"
)

// APIClaimCheck is what the letter page and GET /api/letters/{id} say of
// a letter stored with its payload still in the claim-check store (it was
// ingested without the store configured): whether it was read from there.
type APIClaimCheck struct {
	// Key is the letter's poison.KeyClaimCheck.
	Key string `json:"key"`
	// Resolved is set when the payload and metadata shown were read from
	// Config.ClaimCheck.
	Resolved bool `json:"resolved"`
	// Problem says why they were not: no claim-check store configured,
	// the claim gone, or the claim made for another letter (the letter is
	// then shown as stored, without that claim's payload).
	Problem string `json:"problem,omitempty"`
	// Mismatch is set when the claim was made for another letter
	// (poison.ErrClaimMismatch): a reference copied into this one.
	Mismatch bool `json:"mismatch,omitempty"`
}

// resolveClaim returns l whole when its payload is still in the claim
// check, read through Config.ClaimCheck (poison.ResolveClaim, so a claim
// made for another letter is never read into this one), and what came of
// it; a letter without a claim is returned as it is, with nil. A claim
// that cannot be read leaves l as stored: the page still shows the rest
// of the letter.
func (s *server) resolveClaim(ctx context.Context, l hospital.Letter) (hospital.Letter, *APIClaimCheck) {
	key := l.Metadata[poison.KeyClaimCheck]
	if key == "" {
		return l, nil
	}
	c := &APIClaimCheck{Key: key}
	if s.cfg.ClaimCheck == nil {
		c.Problem = "its payload is in the claim check " + key + ", and this hospital has no claim-check store configured (antidote hospital serve --claim-check postgres|redis)"
		return l, c
	}
	m := message.NewMessage(l.UUID, l.Payload)
	m.Metadata = maps.Clone(l.Metadata)
	whole, err := poison.ResolveClaim(ctx, s.cfg.ClaimCheck, m)
	if err != nil {
		c.Problem, c.Mismatch = err.Error(), errors.Is(err, poison.ErrClaimMismatch)
		s.cfg.Logger.Info("Hospital letter's claim check not read", watermill.LogFields{"letter": l.ID, "uuid": l.UUID, "claim_check": key, "err": err.Error()})
		return l, c
	}
	c.Resolved = true
	l.Payload, l.Metadata = whole.Payload, maps.Clone(whole.Metadata)
	return l, c
}
