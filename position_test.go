package antidote_test

import (
	"context"
	"testing"

	"github.com/antidote-mq/antidote"
)

type readerKey struct{}

func TestPositionFromCtx(t *testing.T) {
	ctx := context.Background()
	if _, _, ok := antidote.PositionFromCtx(ctx); ok {
		t.Fatal("a position without one set")
	}
	// WithPosition wins over the registered reader.
	antidote.RegisterPositionReader(func(ctx context.Context) (int32, int64, bool) {
		o, ok := ctx.Value(readerKey{}).(int64)
		return 7, o, ok
	})
	defer antidote.RegisterPositionReader(func(context.Context) (int32, int64, bool) { return 0, 0, false })
	if p, o, ok := antidote.PositionFromCtx(context.WithValue(ctx, readerKey{}, int64(42))); !ok || p != 7 || o != 42 {
		t.Fatalf("reader: %d/%d %t", p, o, ok)
	}
	both := antidote.WithPosition(context.WithValue(ctx, readerKey{}, int64(42)), 1, 2)
	if p, o, ok := antidote.PositionFromCtx(both); !ok || p != 1 || o != 2 {
		t.Fatalf("WithPosition: %d/%d %t", p, o, ok)
	}
	if _, _, ok := antidote.PositionFromCtx(ctx); ok {
		t.Fatal("the reader found a position in a context without one")
	}
}
