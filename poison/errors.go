package poison

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime/debug"
	"syscall"
)

// Class says whether retrying a failed message can help.
type Class int

const (
	// ClassUnknown means the classifier has no opinion. The Retry middleware
	// treats it like transient but only up to its attempt limit, so an
	// unrecognised error costs a few retries, never an endless loop.
	ClassUnknown Class = iota
	// ClassTransient means the failure is about the environment (network,
	// database, timeouts), not the message: retrying later may succeed.
	ClassTransient
	// ClassPermanent means the message itself is bad (undecodable, invalid,
	// makes the handler panic): retrying cannot help, dead-letter it now.
	ClassPermanent
)

// String returns "unknown", "transient" or "permanent".
func (c Class) String() string {
	switch c {
	case ClassUnknown:
		return "unknown"
	case ClassTransient:
		return "transient"
	case ClassPermanent:
		return "permanent"
	default:
		return fmt.Sprintf("Class(%d)", int(c))
	}
}

// marker is implemented by every error type of this package that carries an
// explicit class. The outermost marker in an error chain decides, so a caller
// can override a verdict made deeper down (Transient(Permanent(err)) is
// transient).
type marker interface {
	error
	poisonClass() Class
}

// classified is the wrapper returned by Permanent and Transient. It is
// transparent: Error, errors.Is and errors.As see the wrapped error.
type classified struct {
	err   error
	class Class
}

func (e *classified) Error() string      { return e.err.Error() }
func (e *classified) Unwrap() error      { return e.err }
func (e *classified) poisonClass() Class { return e.class }

// Permanent marks err as permanent: retrying cannot help, so Retry gives up
// at once and DeadLetter records reason "permanent". The message text and
// errors.Is/As still see err. Permanent(nil) is nil, so it is safe to write
// `return poison.Permanent(err)` unconditionally.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &classified{err: err, class: ClassPermanent}
}

// Transient marks err as transient: the environment failed, not the message,
// so Retry retries it (still bounded by its attempt limit). Transient(nil) is
// nil.
func Transient(err error) error {
	if err == nil {
		return nil
	}
	return &classified{err: err, class: ClassTransient}
}

// ValidationError says a message decoded fine but its content breaks the
// handler's rules (a missing field, a value out of range). It is permanent:
// the same bytes will fail the same way on every delivery.
type ValidationError struct {
	Err error
}

// Error returns "invalid message: " followed by the cause.
func (e *ValidationError) Error() string {
	if e.Err == nil {
		return "invalid message"
	}
	return "invalid message: " + e.Err.Error()
}

// Unwrap returns the cause.
func (e *ValidationError) Unwrap() error      { return e.Err }
func (e *ValidationError) poisonClass() Class { return ClassPermanent }

// Invalid wraps err in a *ValidationError, which the default classifier
// treats as permanent. Invalid(nil) is nil.
func Invalid(err error) error {
	if err == nil {
		return nil
	}
	return &ValidationError{Err: err}
}

// Invalidf is Invalid(fmt.Errorf(format, args...)), for the common
// `return poison.Invalidf("user_id must be > 0, got %d", id)`.
func Invalidf(format string, args ...any) error {
	return &ValidationError{Err: fmt.Errorf(format, args...)}
}

// Reason says why a message was dead-lettered. It is written to the DLQ
// envelope under KeyReason so the DLQ tooling can group letters by cause.
type Reason string

const (
	// ReasonPermanent: the handler failed with a permanent error.
	ReasonPermanent Reason = "permanent"
	// ReasonRetriesExhausted: the error was transient or unknown and every
	// allowed attempt (or the max elapsed time) was used up.
	ReasonRetriesExhausted Reason = "retries_exhausted"
	// ReasonCrashLoop: the message was delivered too many times without ever
	// completing, most likely because it kills the process; the crash-loop
	// guard dead-lettered it without running the handler again.
	ReasonCrashLoop Reason = "crash_loop"
	// ReasonUndecodable: the payload could not be decoded at all.
	ReasonUndecodable Reason = "undecodable"
	// ReasonPanic: the handler panicked (see KeyStack for where).
	ReasonPanic Reason = "panic"
	// ReasonFloodGuard: the flood detector rejected the message because its
	// producer was re-sending the same messages far too often.
	ReasonFloodGuard Reason = "rejected_by_flood_guard"
)

// reasoned is the wrapper returned by WithReason.
type reasoned struct {
	err    error
	reason Reason
}

func (e *reasoned) Error() string { return e.err.Error() }
func (e *reasoned) Unwrap() error { return e.err }

// A reason means the decision to dead-letter is already made, so retrying
// would only delay it.
func (e *reasoned) poisonClass() Class { return ClassPermanent }

// WithReason attaches an explicit dead-letter reason to err. DeadLetter uses
// it instead of inferring one, e.g. WithReason(err, ReasonUndecodable) from a
// decoder. The error is also classified permanent by the default classifier
// (a reason means "dead-letter this"); wrap it in Transient to override.
// WithReason(nil, r) is nil.
func WithReason(err error, r Reason) error {
	if err == nil {
		return nil
	}
	return &reasoned{err: err, reason: r}
}

// ReasonOf returns the reason attached by the outermost WithReason in err's
// chain, or "" when there is none.
func ReasonOf(err error) Reason {
	var r *reasoned
	if errors.As(err, &r) {
		return r.reason
	}
	return ""
}

// PanicError is what middleware.Recover returns when the handler panics.
// It is classified permanent by default: code that panics on a message will
// panic on it again. Stack is debug.Stack() taken inside the deferred
// recover, so it shows the panicking frame.
type PanicError struct {
	Value any
	Stack []byte
}

// NewPanicError captures the current goroutine's stack; call it from the
// deferred function that recovered v.
func NewPanicError(v any) *PanicError {
	return &PanicError{Value: v, Stack: debug.Stack()}
}

// Error returns "panic: " followed by the panic value.
func (e *PanicError) Error() string { return fmt.Sprintf("panic: %v", e.Value) }

// Unwrap returns the panic value when it is an error (panic(err)), so
// errors.Is/As can still find it.
func (e *PanicError) Unwrap() error {
	if err, ok := e.Value.(error); ok {
		return err
	}
	return nil
}

func (e *PanicError) poisonClass() Class { return ClassPermanent }

// Classifier decides whether an error is permanent, transient or unknown.
type Classifier interface {
	Classify(err error) Class
}

// ClassifierFunc adapts a function to Classifier.
type ClassifierFunc func(err error) Class

// Classify calls f(err).
func (f ClassifierFunc) Classify(err error) Class { return f(err) }

// Chain returns a classifier that asks each classifier in order and returns
// the first answer that is not ClassUnknown. Nil entries are skipped. The
// first classifier with an opinion decides, even over Permanent/Transient
// markers (those are only rules of DefaultClassifier), so return ClassUnknown
// for anything you do not recognise. Put your own rules first and
// DefaultClassifier last:
//
//	poison.Chain(myRules, poison.DefaultClassifier())
func Chain(cs ...Classifier) Classifier {
	list := make([]Classifier, 0, len(cs))
	for _, c := range cs {
		if c != nil {
			list = append(list, c)
		}
	}
	return ClassifierFunc(func(err error) Class {
		for _, c := range list {
			if class := c.Classify(err); class != ClassUnknown {
				return class
			}
		}
		return ClassUnknown
	})
}

// DefaultClassifier returns the built-in rules, checked in this order:
//
//  1. Explicit markers: the outermost of Permanent, Transient, WithReason
//     (permanent), Invalid / *ValidationError (permanent), *UndecodableError
//     (permanent) and *PanicError
//     (permanent) in the chain wins.
//  2. Permanent: errors about the bytes of the message — *json.SyntaxError,
//     *json.UnmarshalTypeError, *json.InvalidUnmarshalError,
//     *json.UnsupportedTypeError, *json.UnsupportedValueError,
//     *xml.SyntaxError, base64.CorruptInputError.
//  3. Transient: errors about the environment — context.DeadlineExceeded,
//     os.ErrDeadlineExceeded, any net.Error, io.ErrUnexpectedEOF, the
//     syscall errors ECONNREFUSED, ECONNRESET, ECONNABORTED, EPIPE,
//     ETIMEDOUT, EHOSTUNREACH, ENETUNREACH, any error whose
//     SafeToRetry() reports true (pgx: nothing reached the server; this
//     covers pgconn.Timeout and pgconn.SafeToRetry), and any SQL error
//     whose SQLState() (pgx's *pgconn.PgError, lib/pq's *pq.Error) is class 08
//     (connection exception) or 53 (insufficient resources), 40001
//     (serialization failure), 40P01 (deadlock), 55P03 (lock not available),
//     57014 (query canceled, e.g. statement_timeout), 57P01-57P03 (server
//     shutting down / cannot connect now).
//  4. Anything else is ClassUnknown.
//
// Trade-off: io.ErrUnexpectedEOF is transient because it usually means a
// connection was cut, but json.Decoder also returns it for a truncated
// document; such a message costs its retries before it is dead-lettered
// (reason retries_exhausted). Mark decode errors Permanent (or use
// json.Unmarshal, which returns *json.SyntaxError) to skip that. Other
// PostgreSQL errors (constraint violations, bad data) are left unknown,
// since e.g. a foreign-key violation can heal once the parent row arrives.
func DefaultClassifier() Classifier { return defaultClassifier{} }

type defaultClassifier struct{}

// Connection-level errnos: the peer or the network failed, not the message.
var transientErrnos = []syscall.Errno{
	syscall.ECONNREFUSED,
	syscall.ECONNRESET,
	syscall.ECONNABORTED,
	syscall.EPIPE,
	syscall.ETIMEDOUT,
	syscall.EHOSTUNREACH,
	syscall.ENETUNREACH,
}

func (defaultClassifier) Classify(err error) Class {
	if err == nil {
		return ClassUnknown
	}
	var m marker
	if errors.As(err, &m) {
		return m.poisonClass()
	}
	if isPermanentDecodeError(err) {
		return ClassPermanent
	}
	if isTransient(err) {
		return ClassTransient
	}
	return ClassUnknown
}

func isPermanentDecodeError(err error) bool {
	var (
		syntax      *json.SyntaxError
		unmarshal   *json.UnmarshalTypeError
		invalid     *json.InvalidUnmarshalError
		unsupType   *json.UnsupportedTypeError
		unsupValue  *json.UnsupportedValueError
		xmlSyntax   *xml.SyntaxError
		base64Input base64.CorruptInputError
	)
	return errors.As(err, &syntax) ||
		errors.As(err, &unmarshal) ||
		errors.As(err, &invalid) ||
		errors.As(err, &unsupType) ||
		errors.As(err, &unsupValue) ||
		errors.As(err, &xmlSyntax) ||
		errors.As(err, &base64Input)
}

func isTransient(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, os.ErrDeadlineExceeded) ||
		errors.Is(err, io.ErrUnexpectedEOF) {
		return true
	}
	for _, errno := range transientErrnos {
		if errors.Is(err, errno) {
			return true
		}
	}
	// Duck-typed, so no database driver is compiled into this package.
	var sqlErr interface{ SQLState() string }
	if errors.As(err, &sqlErr) && transientSQLState(sqlErr.SQLState()) {
		return true
	}
	var retryable interface{ SafeToRetry() bool }
	if errors.As(err, &retryable) && retryable.SafeToRetry() {
		return true
	}
	var netErr net.Error
	return errors.As(err, &netErr)
}

func transientSQLState(code string) bool {
	if len(code) != 5 {
		return false
	}
	switch code[:2] {
	case "08", // connection_exception
		"53": // insufficient_resources (disk full, out of memory, too many connections)
		return true
	}
	switch code {
	case "40001", // serialization_failure
		"40P01", // deadlock_detected
		"55P03", // lock_not_available
		"57014", // query_canceled (statement_timeout)
		"57P01", // admin_shutdown
		"57P02", // crash_shutdown
		"57P03": // cannot_connect_now
		return true
	}
	return false
}

// UndecodableError is the failure recorded for a message whose broker record
// could not be decoded (see antidote.MetadataUndecodable). Permanent: the
// same bytes will never decode.
type UndecodableError struct {
	// Detail is the adapter's description of what failed.
	Detail string
}

func (e *UndecodableError) Error() string { return "undecodable record: " + e.Detail }

func (e *UndecodableError) poisonClass() Class { return ClassPermanent }

// ErrDeferred is matched (errors.Is) by errors from Defer.
var ErrDeferred = errors.New("deferred: redeliver later")

// Defer marks err as "not this message's fault, and not now": the message
// is nacked and delivered again later, never dead-lettered. The DLQ-storm
// breaker uses it while the handler's dependencies are down. Defer(nil) is nil.
func Defer(err error) error {
	if err == nil {
		return nil
	}
	return &deferred{err: err}
}

type deferred struct{ err error }

func (d *deferred) Error() string      { return d.err.Error() }
func (d *deferred) Unwrap() []error    { return []error{d.err, ErrDeferred} }
func (d *deferred) poisonClass() Class { return ClassTransient }
