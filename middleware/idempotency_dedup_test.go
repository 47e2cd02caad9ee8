package middleware_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	wmiddleware "github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/antidote-mq/antidote/idempotency"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/poison"
)

// flakyOnce fails the first attempt of each key with a transient error and
// counts the successful runs per key: the database blip every consumer meets.
type flakyOnce struct {
	mu        sync.Mutex
	attempts  map[string]int
	processed map[string]int
}

func newFlakyOnce() *flakyOnce {
	return &flakyOnce{attempts: map[string]int{}, processed: map[string]int{}}
}

func (f *flakyOnce) handle(msg *message.Message) ([]*message.Message, error) {
	key := msg.Metadata.Get(idempotency.MetadataKey)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.attempts[key]++
	if f.attempts[key] == 1 {
		return nil, poison.Transient(errors.New("database blip"))
	}
	f.processed[key]++
	return nil, nil
}

func (f *flakyOnce) counts(key string) (attempts, processed int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.attempts[key], f.processed[key]
}

// settledTap is the outermost middleware: it records what the stack
// returned for each delivery, so the test knows when a message was acked.
type settledTap struct {
	mu    sync.Mutex
	acked map[string]int
}

func (s *settledTap) middleware(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		out, err := h(msg)
		if err == nil {
			s.mu.Lock()
			s.acked[msg.UUID]++
			s.mu.Unlock()
		}
		return out, err
	}
}

func (s *settledTap) ackedCount(uuid string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.acked[uuid]
}

// Side by side on a Watermill router: a handler whose first attempt fails
// and whose second succeeds. Watermill's Deduplicator marks the key before
// running the handler, so the second attempt (in-process retry, or the
// broker's redelivery after the nack) is taken for a duplicate and acked:
// the message is lost. Antidote's Idempotency releases the key on failure
// and processes it once.
func TestIdempotencyVersusWatermillDeduplicator(t *testing.T) {
	type stack struct {
		name     string
		build    func(t *testing.T) []message.HandlerMiddleware
		wantDone int // times the handler succeeded
	}
	watermillDedup := func() message.HandlerMiddleware {
		d := &wmiddleware.Deduplicator{
			KeyFactory: func(msg *message.Message) (string, error) { return msg.Metadata.Get(idempotency.MetadataKey), nil },
			Timeout:    time.Second,
		}
		return d.Middleware
	}
	antidoteIdem := func(t *testing.T) message.HandlerMiddleware {
		s := idempotency.MustNewMemoryStore(idempotency.MemoryStoreConfig{})
		t.Cleanup(func() { _ = s.Close() })
		return newIdem(t, middleware.IdempotencyConfig{Store: s}).Middleware
	}
	antidoteRetry := func(t *testing.T) message.HandlerMiddleware {
		r, err := middleware.NewRetry(middleware.RetryConfig{InitialInterval: time.Millisecond})
		require.NoError(t, err)
		return r.Middleware
	}

	for _, mode := range []struct {
		name   string
		stacks []stack
	}{
		{"retry in process", []stack{
			{"watermill Retry + Deduplicator", func(*testing.T) []message.HandlerMiddleware {
				return []message.HandlerMiddleware{wmiddleware.Retry{MaxRetries: 2, InitialInterval: time.Millisecond}.Middleware, watermillDedup()}
			}, 0},
			{"antidote Retry + Idempotency", func(t *testing.T) []message.HandlerMiddleware {
				return []message.HandlerMiddleware{antidoteRetry(t), antidoteIdem(t)}
			}, 1},
		}},
		{"broker redelivery after a nack", []stack{
			{"watermill Deduplicator", func(*testing.T) []message.HandlerMiddleware {
				return []message.HandlerMiddleware{watermillDedup()}
			}, 0},
			{"antidote Idempotency", func(t *testing.T) []message.HandlerMiddleware {
				return []message.HandlerMiddleware{antidoteIdem(t)}
			}, 1},
		}},
	} {
		t.Run(mode.name, func(t *testing.T) {
			for _, st := range mode.stacks {
				t.Run(st.name, func(t *testing.T) {
					pubSub := gochannel.NewGoChannel(gochannel.Config{}, watermill.NopLogger{})
					defer pubSub.Close()
					r, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
					require.NoError(t, err)
					flaky := newFlakyOnce()
					tap := &settledTap{acked: map[string]int{}}
					mws := append([]message.HandlerMiddleware{tap.middleware}, st.build(t)...)
					r.AddConsumerHandler("orders", "orders", pubSub, func(msg *message.Message) error {
						_, err := flaky.handle(msg)
						return err
					}).AddMiddleware(mws...)
					ctx, cancel := context.WithCancel(context.Background())
					defer cancel()
					go func() { _ = r.Run(ctx) }()
					<-r.Running()
					defer r.Close()

					msg := keyed(watermill.NewUUID(), "order-42")
					require.NoError(t, pubSub.Publish("orders", msg))
					waitFor(t, "the message to be acked", func() bool { return tap.ackedCount(msg.UUID) > 0 })

					attempts, processed := flaky.counts("order-42")
					assert.Equal(t, st.wantDone, processed, "acked after %d attempts, processed %d times", attempts, processed)
					t.Logf("%s: %d attempts, processed %d, acked", st.name, attempts, processed)
				})
			}
		})
	}
}
