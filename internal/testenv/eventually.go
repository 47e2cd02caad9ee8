package testenv

import (
	"errors"
	"testing"
	"time"
)

// pollMax bounds the pause between two checks of a condition: the first
// checks come quickly (1ms, 2ms, 4ms, ...), a slow condition is not read
// more often than every 50ms.
const pollMax = 50 * time.Millisecond

var errNotYet = errors.New("not yet")

// Eventually checks cond until it holds, failing t (Fatalf, so call it from
// the test's goroutine) when it still does not once within has passed. What
// names the condition in the failure.
func Eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	if poll(within, func() error {
		if cond() {
			return nil
		}
		return errNotYet
	}) != nil {
		t.Fatalf("timed out after %s waiting for %s", within, what)
	}
}

// EventuallyNil checks cond until it returns nil, failing t (Fatalf) with
// cond's last error, which describes how far things got, when within has
// passed first.
func EventuallyNil(t testing.TB, within time.Duration, cond func() error) {
	t.Helper()
	if err := poll(within, cond); err != nil {
		t.Fatalf("timed out after %s: %v", within, err)
	}
}

// poll is the one wait-for-a-condition loop: it returns nil once cond does,
// or cond's last error once within has passed.
func poll(within time.Duration, cond func() error) error {
	deadline := time.Now().Add(within)
	pause := time.Millisecond
	for {
		err := cond()
		if err == nil {
			return nil
		}
		left := time.Until(deadline)
		if left <= 0 {
			return err
		}
		time.Sleep(min(pause, left))
		pause = min(2*pause, pollMax)
	}
}
