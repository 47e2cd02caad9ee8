package fingerprint

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
)

// Version is mixed into every ID: a change to how the parts are computed
// bumps it, so letters fingerprinted by different versions never land in
// one group by accident.
const Version = "2"

// Input is what a fingerprint is computed from; every field may be empty.
type Input struct {
	Handler     string // the handler that gave up (antidote.handler)
	Reason      string // the DLQ reason (antidote.reason)
	ErrorType   string // the error's Go type (antidote.error_type)
	Error       string // the final error message (antidote.error)
	Stack       string // a panic's stack, or an error's, in runtime/debug.Stack form
	Payload     []byte
	ContentType string // the payload's content type, when known
	Producer    string // the producer identity (antidote.producer, "<service>/<instance>"), when known
}

// Fingerprint is a letter's group: ID, and the parts it was computed from
// (shown by the hospital so an engineer sees why letters are together).
type Fingerprint struct {
	// ID is 16 hex digits of SHA-256 over Version and the parts below.
	ID string `json:"id"`

	Handler   string `json:"handler"`
	Reason    string `json:"reason"`
	ErrorType string `json:"error_type"`
	// Frame is the first function in application code on the stack
	// (package path and function, no file or line: a redeploy that moves
	// lines keeps the group), or "" without a stack.
	Frame string `json:"frame"`
	// Message is the error message normalized by NormalizeMessage.
	Message string `json:"message"`
	// Shape is the payload's shape (see Shape).
	Shape string `json:"shape"`
	// Producer is the producing service: Input.Producer up to its first
	// '/' ("billing" of "billing/orders-7d9f8b6c5-x2k4p"; a value without
	// '/' is kept whole), trimmed. The instance after the '/' names a
	// process, not a bug, so the replicas of a service share a group.
	Producer string `json:"producer"`
}

// Options tunes what counts as application code. The zero value is ready to
// use.
type Options struct {
	// LibraryPrefixes are extra function-name prefixes that are not
	// application code (frames Frame skips), besides the standard
	// library, Go's runtime, Watermill and Antidote's own packages. If
	// LibraryPrefixes is nil, only those are skipped.
	LibraryPrefixes []string
}

// Of computes in's fingerprint with the zero Options.
func Of(in Input) Fingerprint { return Options{}.Of(in) }

// Of computes in's fingerprint.
func (o Options) Of(in Input) Fingerprint {
	f := Fingerprint{
		Handler:   strings.TrimSpace(in.Handler),
		Reason:    strings.TrimSpace(in.Reason),
		ErrorType: strings.TrimSpace(in.ErrorType),
		Frame:     o.FirstAppFrame(in.Stack),
		Message:   NormalizeMessage(in.Error),
		Shape:     Shape(in.Payload, in.ContentType),
		Producer:  ProducerService(in.Producer),
	}
	h := sha256.New()
	for _, part := range []string{Version, f.Handler, f.Reason, f.ErrorType, f.Frame, f.Message, f.Shape, f.Producer} {
		// Each part is length-prefixed, so no two different part lists
		// hash the same bytes.
		var n [8]byte
		for i, l := 0, len(part); i < 8; i, l = i+1, l>>8 {
			n[i] = byte(l)
		}
		h.Write(n[:])
		h.Write([]byte(part))
	}
	f.ID = hex.EncodeToString(h.Sum(nil)[:8])
	return f
}

// ProducerService is the service part of a producer identity
// "<service>/<instance>" (see idempotency.ProducerID): "billing" of
// "billing/host-a-101", the whole value when it has no '/', trimmed.
func ProducerService(producer string) string {
	service, _, _ := strings.Cut(producer, "/")
	return strings.TrimSpace(service)
}
