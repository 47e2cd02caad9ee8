package clock

import (
	"context"
	"testing"
	"time"
)

func TestSleepElapses(t *testing.T) {
	start := time.Now()
	if !Sleep(context.Background(), 20*time.Millisecond) {
		t.Fatal("Sleep reported an interruption without one")
	}
	if took := time.Since(start); took < 20*time.Millisecond {
		t.Fatalf("Sleep returned after %s, before its 20ms", took)
	}
}

func TestSleepInterrupted(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(10 * time.Millisecond); cancel() }()
	start := time.Now()
	if Sleep(ctx, time.Hour) {
		t.Fatal("Sleep reported d elapsed although ctx ended first")
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("Sleep took %s to notice the cancelled context", took)
	}
}
