package poison

import "errors"

// InferReason returns the dead-letter reason err gives by itself: the one
// attached by the outermost WithReason, else ReasonPanic for a *PanicError,
// else "" (the caller then decides, e.g. from the error's class). It is the
// one place the reason is read from an error, for Envelope (a Failure with
// an empty Reason) and for middleware.DeadLetter.
func InferReason(err error) Reason {
	if r := ReasonOf(err); r != "" {
		return r
	}
	var p *PanicError
	if errors.As(err, &p) {
		return ReasonPanic
	}
	return ""
}
