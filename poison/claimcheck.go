package poison

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"

	"github.com/ThreeDotsLabs/watermill/message"
)

// A dead letter is its original plus the envelope, so it can be larger than
// anything the broker took from the source. When it does not fit, the
// envelope is shrunk first (ShrinkEnvelope), and when even that does not fit,
// the original's payload and metadata move to a claim-check store and the
// letter keeps the envelope and a reference to them (ClaimLetter). The
// hospital reads the claim back (Unclaim), so show and replay see the
// message as it was.

// Metadata keys of a claim-checked or shrunk letter.
const (
	// KeyClaimCheck is the claim-check key under which the original payload
	// and metadata of a letter were stored (see ClaimLetter).
	KeyClaimCheck = "antidote.claim_check"
	// KeyClaimCheckBytes is the size of the original payload in the claim.
	KeyClaimCheckBytes = "antidote.claim_check_bytes"
	// KeyShrunk is "true" on a letter whose stack was dropped and error text
	// cut so that it fits the broker (see ShrinkEnvelope).
	KeyShrunk = "antidote.envelope_shrunk"
)

// ShrunkErrorBytes bounds KeyError on a shrunk letter.
const ShrunkErrorBytes = 256

// What a claim-checked letter keeps of its metadata: the envelope keys up
// to maxKeptValueBytes each, and other entries of at most
// maxKeptEntryBytes (key and value), in key order, up to
// maxKeptOtherBytes in all: the partition key, the idempotency key, the
// producer stay readable (and route the letter as before); a flood of
// entries or a huge one goes into the claim.
const (
	maxKeptValueBytes = 1024
	maxKeptEntryBytes = 256
	maxKeptOtherBytes = 4096
)

// ClaimCheck stores what does not fit in a dead letter. Keys are content
// hashes (ClaimLetter), so Put is idempotent: a letter whose publish failed
// after its claim was stored stores the same key again, never an orphan per
// attempt. Implementations: pgstore.NewClaimCheckStore,
// redisstore.NewClaimCheckStore, claimcheck.NewMemoryStore (tests).
type ClaimCheck interface {
	// Put stores data under key; storing the same key again is a no-op.
	Put(ctx context.Context, key string, data []byte) error
	// Get returns the data stored under key, or an error wrapping
	// ErrClaimNotFound.
	Get(ctx context.Context, key string) ([]byte, error)
	// Delete removes key; a missing key is not an error.
	Delete(ctx context.Context, key string) error
}

// ErrClaimNotFound is wrapped by ClaimCheck.Get for a key it does not hold.
var ErrClaimNotFound = errors.New("poison: claim check not found")

// ShrinkEnvelope returns a copy of letter with its free-text envelope values
// cut to what a letter near the broker's limit can afford: no stack, the
// error text cut to ShrunkErrorBytes, and KeyShrunk set. Payload, metadata
// and the other envelope keys are kept.
func ShrinkEnvelope(letter *message.Message) *message.Message {
	out := letter.Copy()
	out.SetContext(letter.Context())
	delete(out.Metadata, KeyStack)
	if e := out.Metadata.Get(KeyError); len(e) > ShrunkErrorBytes {
		out.Metadata.Set(KeyError, truncate(e, ShrunkErrorBytes))
	}
	out.Metadata.Set(KeyShrunk, "true")
	return out
}

// claim is what a claim check holds for a letter.
type claim struct {
	Payload  []byte            `json:"payload"`
	Metadata map[string]string `json:"metadata"`
}

// keptInClaimedLetter reports whether a metadata key stays in a
// claim-checked letter: the envelope's own keys and the trace context, which
// the hospital lists and groups by without reading the claim.
func keptInClaimedLetter(key string) bool {
	switch key {
	case KeyOriginalTopic, KeyOriginalPartition, KeyOriginalOffset, KeyHandler, KeyConsumerGroup,
		KeyReason, KeyError, KeyErrorType, KeyStack, KeyAttempts, KeyFirstFailedAt, KeyLastFailedAt,
		KeyProducer, KeyReplayedAt, KeyReplayCount, KeyTraceparent, KeyShrunk:
		return true
	}
	return false
}

// ClaimLetter moves letter's payload, and the metadata a small letter cannot
// keep, into a claim: the letter keeps the envelope keys and a few small
// entries (partition key, idempotency key: 4 KiB at most in all), the
// claim takes the rest. It returns the claim's key (a SHA-256 of its
// content), the bytes to store under it, and the letter that refers to it:
// empty payload, the kept keys, KeyClaimCheck and KeyClaimCheckBytes.
// letter is not modified.
func ClaimLetter(letter *message.Message) (key string, data []byte, claimed *message.Message, err error) {
	c := claim{Payload: letter.Payload, Metadata: map[string]string{}}
	claimed = message.NewMessage(letter.UUID, nil)
	claimed.SetContext(letter.Context())
	keys := make([]string, 0, len(letter.Metadata))
	for k := range letter.Metadata {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	other := 0
	for _, k := range keys {
		v := letter.Metadata[k]
		switch {
		case keptInClaimedLetter(k) && len(v) <= maxKeptValueBytes:
			claimed.Metadata.Set(k, v)
		case !keptInClaimedLetter(k) && len(k)+len(v) <= maxKeptEntryBytes && other+len(k)+len(v) <= maxKeptOtherBytes:
			other += len(k) + len(v)
			claimed.Metadata.Set(k, v)
		default:
			c.Metadata[k] = v
		}
	}
	data, err = json.Marshal(c)
	if err != nil {
		return "", nil, nil, fmt.Errorf("poison: encode claim of letter %s: %w", letter.UUID, err)
	}
	sum := sha256.Sum256(data)
	key = "sha256:" + hex.EncodeToString(sum[:])
	claimed.Metadata.Set(KeyClaimCheck, key)
	claimed.Metadata.Set(KeyClaimCheckBytes, strconv.Itoa(len(letter.Payload)))
	return key, data, claimed, nil
}

// Unclaim returns letter as it was before ClaimLetter: payload and metadata
// from data (what the claim check holds under letter's KeyClaimCheck) and
// the envelope from letter, without the claim-check keys. A letter without
// KeyClaimCheck is returned as it is (data is ignored).
func Unclaim(letter *message.Message, data []byte) (*message.Message, error) {
	if letter.Metadata.Get(KeyClaimCheck) == "" {
		return letter, nil
	}
	var c claim
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("poison: claim %s of letter %s is not a claim: %w", letter.Metadata.Get(KeyClaimCheck), letter.UUID, err)
	}
	out := message.NewMessage(letter.UUID, c.Payload)
	out.SetContext(letter.Context())
	for k, v := range c.Metadata {
		out.Metadata.Set(k, v)
	}
	for k, v := range letter.Metadata {
		out.Metadata.Set(k, v)
	}
	delete(out.Metadata, KeyClaimCheck)
	delete(out.Metadata, KeyClaimCheckBytes)
	return out, nil
}

// ResolveClaim reads letter's claim from cc and returns the whole letter
// (Unclaim). A letter without a claim is returned as it is; one with a
// claim but no cc is an error naming the key, so a caller never mistakes
// the empty payload for the message.
func ResolveClaim(ctx context.Context, cc ClaimCheck, letter *message.Message) (*message.Message, error) {
	key := letter.Metadata.Get(KeyClaimCheck)
	if key == "" {
		return letter, nil
	}
	if cc == nil {
		return nil, fmt.Errorf("poison: letter %s keeps its payload in the claim check %s, and no claim-check store is configured", letter.UUID, key)
	}
	data, err := cc.Get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("poison: read claim %s of letter %s: %w", key, letter.UUID, err)
	}
	return Unclaim(letter, data)
}
