package poison_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/antidote-mq/antidote/poison"
)

// safeToRetryErr mimics pgconn's internal errors that report SafeToRetry.
type safeToRetryErr struct{}

func (safeToRetryErr) Error() string     { return "conn closed before send" }
func (safeToRetryErr) SafeToRetry() bool { return true }

func jsonSyntaxErr(t *testing.T) error {
	t.Helper()
	var v map[string]any
	err := json.Unmarshal([]byte(`{"user_id":1,"msg":"Hello World"`), &v)
	require.Error(t, err)
	return err
}

func jsonTypeErr(t *testing.T) error {
	t.Helper()
	var v struct{ UserID int }
	err := json.Unmarshal([]byte(`{"UserID":"one"}`), &v)
	require.Error(t, err)
	return err
}

func TestDefaultClassifier(t *testing.T) {
	errPlain := errors.New("something odd")
	syntax := jsonSyntaxErr(t)

	tests := []struct {
		name string
		err  error
		want poison.Class
	}{
		{"nil", nil, poison.ClassUnknown},
		{"plain error", errPlain, poison.ClassUnknown},
		{"context canceled", context.Canceled, poison.ClassUnknown},
		{"io.EOF", io.EOF, poison.ClassUnknown},

		// explicit markers
		{"Permanent", poison.Permanent(errPlain), poison.ClassPermanent},
		{"Transient", poison.Transient(errPlain), poison.ClassTransient},
		{"Permanent wrapped by fmt", fmt.Errorf("handler: %w", poison.Permanent(errPlain)), poison.ClassPermanent},
		{"outermost marker wins: Transient(Permanent)", poison.Transient(poison.Permanent(errPlain)), poison.ClassTransient},
		{"outermost marker wins: Permanent(Transient)", poison.Permanent(poison.Transient(errPlain)), poison.ClassPermanent},
		{"marker beats type: Transient(json syntax)", poison.Transient(syntax), poison.ClassTransient},
		{"marker beats type: Permanent(deadline)", poison.Permanent(context.DeadlineExceeded), poison.ClassPermanent},
		{"Invalid", poison.Invalid(errPlain), poison.ClassPermanent},
		{"Invalidf", poison.Invalidf("user_id must be > 0, got %d", -1), poison.ClassPermanent},
		{"ValidationError wrapped", fmt.Errorf("x: %w", &poison.ValidationError{Err: errPlain}), poison.ClassPermanent},
		{"WithReason", poison.WithReason(errPlain, poison.ReasonUndecodable), poison.ClassPermanent},
		{"Transient(WithReason)", poison.Transient(poison.WithReason(errPlain, poison.ReasonUndecodable)), poison.ClassTransient},
		{"PanicError", &poison.PanicError{Value: "boom"}, poison.ClassPermanent},
		{"PanicError of a transient error", &poison.PanicError{Value: context.DeadlineExceeded}, poison.ClassPermanent},

		// permanent by type
		{"json syntax", syntax, poison.ClassPermanent},
		{"json syntax wrapped", fmt.Errorf("decode: %w", syntax), poison.ClassPermanent},
		{"json type", jsonTypeErr(t), poison.ClassPermanent},
		{"json invalid unmarshal", &json.InvalidUnmarshalError{}, poison.ClassPermanent},
		{"base64", base64.CorruptInputError(3), poison.ClassPermanent},
		{"permanent type wins over transient type", errors.Join(syntax, context.DeadlineExceeded), poison.ClassPermanent},

		// transient
		{"deadline", context.DeadlineExceeded, poison.ClassTransient},
		{"deadline wrapped", fmt.Errorf("query: %w", context.DeadlineExceeded), poison.ClassTransient},
		{"os deadline", os.ErrDeadlineExceeded, poison.ClassTransient},
		{"net.OpError", &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("refused")}, poison.ClassTransient},
		{"net.DNSError", &net.DNSError{Err: "no such host", Name: "db"}, poison.ClassTransient},
		{"unexpected EOF", io.ErrUnexpectedEOF, poison.ClassTransient},
		{"ECONNREFUSED", syscall.ECONNREFUSED, poison.ClassTransient},
		{"ECONNRESET wrapped", fmt.Errorf("read: %w", os.NewSyscallError("read", syscall.ECONNRESET)), poison.ClassTransient},
		{"EPIPE", syscall.EPIPE, poison.ClassTransient},
		{"pg connection failure 08006", &pgconn.PgError{Code: "08006"}, poison.ClassTransient},
		{"pg connection class 08000", &pgconn.PgError{Code: "08000"}, poison.ClassTransient},
		{"pg serialization 40001", &pgconn.PgError{Code: "40001"}, poison.ClassTransient},
		{"pg deadlock 40P01", fmt.Errorf("tx: %w", &pgconn.PgError{Code: "40P01"}), poison.ClassTransient},
		{"pg admin shutdown 57P01", &pgconn.PgError{Code: "57P01"}, poison.ClassTransient},
		{"pg crash shutdown 57P02", &pgconn.PgError{Code: "57P02"}, poison.ClassTransient},
		{"pg cannot connect now 57P03", &pgconn.PgError{Code: "57P03"}, poison.ClassTransient},
		{"pg too many connections 53300", &pgconn.PgError{Code: "53300"}, poison.ClassTransient},
		{"pg safe to retry", safeToRetryErr{}, poison.ClassTransient},

		// left to the retry limit
		{"pg unique violation 23505", &pgconn.PgError{Code: "23505"}, poison.ClassUnknown},
		{"pg invalid text 22P02", &pgconn.PgError{Code: "22P02"}, poison.ClassUnknown},
		{"pg malformed code", &pgconn.PgError{Code: "08"}, poison.ClassUnknown},
	}
	c := poison.DefaultClassifier()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, c.Classify(tt.err), "error: %v", tt.err)
		})
	}
}

func TestMarkersAreTransparent(t *testing.T) {
	base := errors.New("base")
	for name, err := range map[string]error{
		"Permanent":  poison.Permanent(base),
		"Transient":  poison.Transient(base),
		"WithReason": poison.WithReason(base, poison.ReasonUndecodable),
	} {
		t.Run(name, func(t *testing.T) {
			assert.ErrorIs(t, err, base)
			assert.Equal(t, "base", err.Error(), "markers must not change the message")
		})
	}
	assert.ErrorIs(t, poison.Invalid(base), base)
	var ve *poison.ValidationError
	assert.ErrorAs(t, poison.Permanent(poison.Invalid(base)), &ve)
	assert.Equal(t, "invalid message: base", poison.Invalid(base).Error())

	var syntax *json.SyntaxError
	assert.ErrorAs(t, poison.Permanent(jsonSyntaxErr(t)), &syntax)
}

func TestMarkersKeepNil(t *testing.T) {
	assert.NoError(t, poison.Permanent(nil))
	assert.NoError(t, poison.Transient(nil))
	assert.NoError(t, poison.Invalid(nil))
	assert.NoError(t, poison.WithReason(nil, poison.ReasonPanic))
}

func TestReasonOf(t *testing.T) {
	base := errors.New("base")
	assert.Equal(t, poison.Reason(""), poison.ReasonOf(nil))
	assert.Equal(t, poison.Reason(""), poison.ReasonOf(base))
	assert.Equal(t, poison.ReasonUndecodable, poison.ReasonOf(poison.WithReason(base, poison.ReasonUndecodable)))
	assert.Equal(t, poison.ReasonUndecodable,
		poison.ReasonOf(fmt.Errorf("x: %w", poison.Permanent(poison.WithReason(base, poison.ReasonUndecodable)))))
	// outermost reason wins
	assert.Equal(t, poison.ReasonFloodGuard,
		poison.ReasonOf(poison.WithReason(poison.WithReason(base, poison.ReasonUndecodable), poison.ReasonFloodGuard)))
}

func TestChain(t *testing.T) {
	errMine := errors.New("my transient thing")
	mine := poison.ClassifierFunc(func(err error) poison.Class {
		if errors.Is(err, errMine) {
			return poison.ClassTransient
		}
		return poison.ClassUnknown
	})
	c := poison.Chain(nil, mine, poison.DefaultClassifier())

	assert.Equal(t, poison.ClassTransient, c.Classify(errMine))
	assert.Equal(t, poison.ClassPermanent, c.Classify(jsonSyntaxErr(t)), "falls through to the default")
	assert.Equal(t, poison.ClassUnknown, c.Classify(errors.New("other")))
	assert.Equal(t, poison.ClassUnknown, poison.Chain().Classify(errMine))

	// The first non-unknown answer wins, even over a later, stronger one.
	allPermanent := poison.ClassifierFunc(func(error) poison.Class { return poison.ClassPermanent })
	assert.Equal(t, poison.ClassTransient, poison.Chain(mine, allPermanent).Classify(errMine))
}

func TestClassString(t *testing.T) {
	assert.Equal(t, "unknown", poison.ClassUnknown.String())
	assert.Equal(t, "transient", poison.ClassTransient.String())
	assert.Equal(t, "permanent", poison.ClassPermanent.String())
	assert.Equal(t, "Class(7)", poison.Class(7).String())
}

func TestPanicError(t *testing.T) {
	p := poison.NewPanicError("boom")
	assert.Equal(t, "panic: boom", p.Error())
	assert.Contains(t, string(p.Stack), "TestPanicError")
	assert.NoError(t, p.Unwrap())

	inner := errors.New("inner")
	p = &poison.PanicError{Value: inner}
	assert.ErrorIs(t, p, inner, "panic(err) keeps err reachable")
	assert.True(t, strings.HasPrefix(p.Error(), "panic: inner"))
}
