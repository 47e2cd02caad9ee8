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
	"strings"

	"github.com/ThreeDotsLabs/watermill/message"
)

// A dead letter is its original plus the envelope, so it can be larger than
// anything the broker took from the source. When it does not fit, the
// envelope is shrunk first (ShrinkEnvelope), and when even that does not fit,
// the original's payload and metadata move to a claim-check store and the
// letter keeps the envelope and a reference to them (ClaimLetter). The
// hospital reads the claim back (Unclaim), so show and replay see the
// message as it was.
//
// The reference travels in the letter's metadata, which anyone who can
// write to the DLQ controls entirely, UUID included (a raw client, a
// misconfigured bridge); the claim store's content they do not control. So
// the claim itself names the letter it was made for: its UUID and the
// envelope fields every letter of that message from that handler carries
// alike (boundKeys), and Unclaim reads it only into a letter that carries
// them all. A reference copied into another letter resolves to nothing
// (ErrClaimMismatch), unless that letter copies the UUID and every bound
// field as well, in which case it is, by all the hospital can know, a
// letter of the same message, failed in the same handler from the same
// topic (and position) for the same reason, and the payload is that
// message's. The binding is no signature over the rest of the letter:
// metadata outside the bound fields may differ (what the claim holds wins
// over it), and a forger who can read the victim's letter can copy it
// whole.

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

// ErrClaimMismatch is wrapped by Unclaim and ResolveClaim when the claim a
// letter refers to was not made for that letter (another UUID, or other
// bound envelope fields: a reference copied from another letter), is not
// the claim its key names, or names no letter at all (written before
// claims were bound to their letter: Antidote has had no release that
// wrote those, so they are refused rather than trusted). Nothing of such
// a claim is returned.
var ErrClaimMismatch = errors.New("poison: claim check made for another letter")

// boundKeys are the envelope fields a claim is bound to, beside the
// letter's UUID: the same on every letter DeadLetter writes for a message
// in one handler, so a message redelivered after its letter's publish
// failed makes the same claim again (same key: Put stores nothing new).
// The failure times and attempts are not bound for that reason: they are
// stamped anew on each redelivery. None of these is touched by
// ShrinkEnvelope, which may run before ClaimLetter.
var boundKeys = []string{KeyOriginalTopic, KeyOriginalPartition, KeyOriginalOffset, KeyHandler, KeyConsumerGroup, KeyReason}

// bindable is how a bound value is compared: with the metadata rule
// applied (each invalid UTF-8 sequence is U+FFFD, as every adapter delivers
// metadata) and NUL as U+FFFD (as the hospital store keeps text), so a
// letter read back through a broker or the store still matches its claim.
func bindable(s string) string {
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
}

// binding is what a claim of letter is bound to: the bound fields as
// letter carries them (absent: "").
func binding(letter *message.Message) map[string]string {
	b := make(map[string]string, len(boundKeys))
	for _, k := range boundKeys {
		b[k] = bindable(letter.Metadata.Get(k))
	}
	return b
}

// claimKey is the key of a claim's content.
func claimKey(data []byte) string {
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:])
}

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
	// Letter and Bound name the letter the claim was made for: its UUID
	// and its bound fields (boundKeys), as bindable() gives them.
	Letter   string            `json:"letter"`
	Bound    map[string]string `json:"bound"`
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
// claim takes the rest. The claim also names the letter it is for (its
// UUID and bound envelope fields, see ErrClaimMismatch), so it is read back
// only into that letter. It returns the claim's key (a SHA-256 of its
// content: the same letter claimed again gets the same key), the bytes to
// store under it, and the letter that refers to it: empty payload, the
// kept keys, KeyClaimCheck and KeyClaimCheckBytes. letter is not modified.
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
	// Bound to what the claimed letter carries: a bound value too long to
	// stay in it went into the claim, and the letter is bound to its
	// absence.
	c.Letter, c.Bound = bindable(letter.UUID), binding(claimed)
	data, err = json.Marshal(c)
	if err != nil {
		return "", nil, nil, fmt.Errorf("poison: encode claim of letter %s: %w", letter.UUID, err)
	}
	key = claimKey(data)
	claimed.Metadata.Set(KeyClaimCheck, key)
	claimed.Metadata.Set(KeyClaimCheckBytes, strconv.Itoa(len(letter.Payload)))
	return key, data, claimed, nil
}

// Unclaim returns letter as it was before ClaimLetter: payload and metadata
// from data (what the claim check holds under letter's KeyClaimCheck) and
// the envelope from letter, without the claim-check keys. A letter without
// KeyClaimCheck is returned as it is (data is ignored). A claim that was
// not made for letter (see ErrClaimMismatch) is an error wrapping
// ErrClaimMismatch that names the letter, the key and the letter the claim
// was made for; nothing of the claim is returned.
func Unclaim(letter *message.Message, data []byte) (*message.Message, error) {
	key := letter.Metadata.Get(KeyClaimCheck)
	if key == "" {
		return letter, nil
	}
	if got := claimKey(data); got != key {
		return nil, fmt.Errorf("poison: letter %s refers to claim %s, but what the store holds under that key is another claim (its content hashes to %s): not read: %w", letter.UUID, key, got, ErrClaimMismatch)
	}
	var c claim
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("poison: claim %s of letter %s is not a claim: %w", key, letter.UUID, err)
	}
	if err := c.check(letter, key); err != nil {
		return nil, err
	}
	out := message.NewMessage(letter.UUID, c.Payload)
	out.SetContext(letter.Context())
	// The two are disjoint in a letter ClaimLetter made; where a letter
	// written by someone else overlaps, the claim (which they cannot write)
	// wins.
	for k, v := range letter.Metadata {
		out.Metadata.Set(k, v)
	}
	for k, v := range c.Metadata {
		out.Metadata.Set(k, v)
	}
	delete(out.Metadata, KeyClaimCheck)
	delete(out.Metadata, KeyClaimCheckBytes)
	return out, nil
}

// check reports whether c was made for letter: the same UUID and bound
// fields.
func (c claim) check(letter *message.Message, key string) error {
	if c.Letter == "" {
		return fmt.Errorf("poison: letter %s refers to claim %s, which names no letter it was made for (written before claims were bound to their letter): refused, not read: %w", letter.UUID, key, ErrClaimMismatch)
	}
	if uuid := bindable(letter.UUID); uuid != c.Letter {
		return fmt.Errorf("poison: letter %s refers to claim %s, which was made for another letter (%s): its payload is not this letter's, not read: %w", letter.UUID, key, c.Letter, ErrClaimMismatch)
	}
	for _, k := range boundKeys {
		if got := bindable(letter.Metadata.Get(k)); got != c.Bound[k] {
			return fmt.Errorf("poison: letter %s refers to claim %s, which was made for another letter of that UUID (its %s was %q, this letter's is %q): not read: %w", letter.UUID, key, k, c.Bound[k], got, ErrClaimMismatch)
		}
	}
	return nil
}

// ResolveClaim reads letter's claim from cc and returns the whole letter
// (Unclaim). A letter without a claim is returned as it is; one with a
// claim but no cc is an error naming the key, so a caller never mistakes
// the empty payload for the message. A claim that is gone wraps
// ErrClaimNotFound (from cc); one made for another letter wraps
// ErrClaimMismatch.
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
