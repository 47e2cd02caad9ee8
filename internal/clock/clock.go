// Package clock holds the one "wait d or until ctx is done" of the module.
package clock

import (
	"context"
	"time"
)

// Sleep waits for d or until ctx is done, whichever comes first, and reports
// whether d elapsed. A d of zero or less returns true at once (unless ctx is
// already done: a select between two ready cases picks either). The timer is
// stopped on return, so an interrupted Sleep leaves nothing behind.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
