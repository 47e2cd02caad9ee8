package testenv

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

func TestPollReturnsOnceTheConditionHolds(t *testing.T) {
	var n atomic.Int32
	if err := poll(10*time.Second, func() error {
		if n.Add(1) < 5 {
			return fmt.Errorf("only %d", n.Load())
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if n.Load() != 5 {
		t.Fatalf("checked %d times, want 5", n.Load())
	}
}

func TestPollGivesUpWithTheLastError(t *testing.T) {
	var n atomic.Int32
	start := time.Now()
	err := poll(30*time.Millisecond, func() error { return fmt.Errorf("check %d", n.Add(1)) })
	if err == nil || err.Error() != fmt.Sprintf("check %d", n.Load()) {
		t.Fatalf("err = %v after %d checks; want the last one", err, n.Load())
	}
	if took := time.Since(start); took < 30*time.Millisecond || took > 5*time.Second {
		t.Fatalf("gave up after %s; want about 30ms", took)
	}
}

func TestEventually(t *testing.T) {
	start := time.Now()
	Eventually(t, 10*time.Second, "20ms to pass", func() bool { return time.Since(start) > 20*time.Millisecond })
	EventuallyNil(t, 10*time.Second, func() error { return nil })
}
