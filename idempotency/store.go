package idempotency

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"
)

// Status is the outcome of a Claim.
type Status int

const (
	// StatusClaimed: the caller now holds the key until its lease ends and
	// must Complete it (success) or Release it (failure).
	StatusClaimed Status = iota + 1
	// StatusCompleted: the key was processed before (and its retention has
	// not passed): the message is a duplicate. Claim.Result is what the
	// completing Complete stored.
	StatusCompleted
	// StatusInProgress: another live claim holds the key; do not process it
	// now. Claim.LeaseLeft says how long that claim lasts at most.
	StatusInProgress
)

// String returns "claimed", "completed" or "in_progress".
func (s Status) String() string {
	switch s {
	case StatusClaimed:
		return "claimed"
	case StatusCompleted:
		return "completed"
	case StatusInProgress:
		return "in_progress"
	default:
		return fmt.Sprintf("Status(%d)", int(s))
	}
}

// Claim is what Store.Claim returns. Pass it back unchanged to Complete or
// Release.
type Claim struct {
	// Key is the claimed key.
	Key string
	// Status says whether the caller holds the key.
	Status Status
	// Token identifies the holder (StatusClaimed only): Complete and Release
	// act only while the key is still held by this token, so a consumer
	// that overran its lease cannot complete or release a key another
	// consumer has claimed since.
	Token string
	// Result is what Complete stored (StatusCompleted only); nil if nothing.
	Result []byte
	// LeaseLeft is how long the holding claim lasts at most
	// (StatusInProgress only); 0 when the store cannot tell.
	LeaseLeft time.Duration
}

// Errors of Store operations. Stores wrap them, so test with errors.Is.
var (
	// ErrClaimLost: Complete found the key held (or completed) by another
	// token. The caller's lease expired and another consumer claimed the
	// key since, so the message may have been processed twice. Raise the
	// lease above the slowest handler.
	ErrClaimLost = errors.New("idempotency: claim lost: another consumer claimed the key after this claim's lease expired")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("idempotency: store is closed")
	// ErrNotClaimed: Complete or Release was given a Claim whose Status is
	// not StatusClaimed.
	ErrNotClaimed = errors.New("idempotency: claim is not held (Status is not StatusClaimed)")
)

// Store remembers idempotency keys: which are claimed by a consumer working
// on them and which are completed. Implementations are safe for concurrent
// use; the shared ones (PostgreSQL, Redis) also across processes.
type Store interface {
	// Claim tries to take key for lease. It returns StatusClaimed (the
	// caller holds it), StatusCompleted (a duplicate) or StatusInProgress
	// (another live claim holds it). A claim whose lease has ended (its
	// holder died, or overran) and a completion whose retention has passed
	// count as absent, so Claim takes them over.
	Claim(ctx context.Context, key string, lease time.Duration) (Claim, error)
	// Complete marks c's key completed and stores result (may be nil) with
	// it, for the store's retention. It succeeds while the key is still held
	// by c, even past its lease as long as nobody claimed it since, and
	// returns an error wrapping ErrClaimLost when another claim took over.
	// Completing the same claim twice is not an error.
	Complete(ctx context.Context, c Claim, result []byte) error
	// Release gives c's key back so it can be claimed again at once: the
	// handler failed and its retry must run. Releasing a claim that is no
	// longer held does nothing and is not an error.
	Release(ctx context.Context, c Claim) error
	// Close releases what the store owns (never a pool or client passed in
	// its config) and waits for its background work. Afterwards every
	// method returns an error wrapping ErrClosed. Idempotent.
	Close() error
}

// TxStore is a Store that can also claim a key, run the handler and complete
// the key in one database transaction (pgstore.IdempotencyStore does; its
// handler reaches the transaction with pgstore.TxFromContext).
type TxStore interface {
	Store
	RunTx(ctx context.Context, key string, fn func(ctx context.Context) (result []byte, err error)) (Claim, error)
}

// DefaultRetention is how long a completed key is remembered when a store's
// config leaves Retention zero. A copy arriving later than this after the
// first was completed is processed again.
const DefaultRetention = 24 * time.Hour

// NewToken returns a random 128-bit claim token in hex, for Store
// implementations (Claim.Token).
func NewToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(b[:])
}

// CheckLease reports a lease a Store cannot honour (under 1ms). Store
// implementations call it first in Claim.
func CheckLease(lease time.Duration) error {
	if lease < time.Millisecond {
		return fmt.Errorf("idempotency: lease %s is too short; use at least 1ms (and more than the slowest handler takes)", lease)
	}
	return nil
}

// CheckClaimed reports, wrapping ErrNotClaimed, a Claim that Complete or
// Release must refuse: one whose Status is not StatusClaimed, or without a
// Token. Store implementations call it first in Complete and Release.
func CheckClaimed(c Claim) error {
	if c.Status != StatusClaimed || c.Token == "" {
		return fmt.Errorf("%w: key %q has status %s", ErrNotClaimed, c.Key, c.Status)
	}
	return nil
}

func validRetention(typ string, d time.Duration) error {
	if d < 0 || (d > 0 && d < time.Millisecond) {
		return fmt.Errorf("idempotency: %s.Retention is %s; set it to at least 1ms, or 0 for the default %s", typ, d, DefaultRetention)
	}
	return nil
}

// ctxErr lets stores fail fast on a cancelled context with a wrapped error.
func ctxErr(ctx context.Context, op, key string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("idempotency: %s %q: %w", op, key, err)
	}
	return nil
}
