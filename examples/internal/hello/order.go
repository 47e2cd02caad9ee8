package hello

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/ThreeDotsLabs/watermill/message"
)

// seqMetadata numbers a message within its key (--keys), in publish order.
const seqMetadata = "hello.key_seq"

// orderWatch counts per-key order violations as the consumer sees them: it
// wraps the subscriber, so it watches what the broker's subscriber hands
// out and when each message is settled (acked: processed, dead-lettered or
// skipped as a duplicate; nacked: comes again). A message of a key handed
// out while another of its key is unsettled, or before the one numbered
// just before it was acked, is a violation. A message numbered at or below
// the highest acked of its key is a redelivery (at-least-once), not one.
// The first message of a key this process sees sets where the key stands:
// an earlier process may have acked the ones before.
type orderWatch struct {
	violations atomic.Int64
	mu         sync.Mutex
	keys       map[string]*keyOrder
}

type keyOrder struct {
	acked int // highest number acked
	busy  int // handed out, not settled
}

func newOrderWatch() *orderWatch { return &orderWatch{keys: map[string]*keyOrder{}} }

type orderWatchSubscriber struct {
	message.Subscriber
	w *orderWatch
}

func (s orderWatchSubscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	in, err := s.Subscriber.Subscribe(ctx, topic)
	if err != nil {
		return nil, err
	}
	out := make(chan *message.Message)
	go func() {
		defer close(out)
		for m := range in {
			out <- s.w.handedOut(m)
		}
	}()
	return out, nil
}

// handedOut checks m and returns the message to hand to the router: a copy
// whose ack or nack is counted here before it reaches m, so that the
// subscriber hands out the next message of the key only after the count.
func (w *orderWatch) handedOut(m *message.Message) *message.Message {
	seq, err := strconv.Atoi(m.Metadata.Get(seqMetadata))
	if err != nil {
		return m
	}
	key := m.Metadata.Get(runKey) + "/" + m.Metadata.Get("partition_key")
	w.mu.Lock()
	k := w.keys[key]
	if k == nil {
		k = &keyOrder{acked: seq - 1}
		w.keys[key] = k
	}
	if k.busy > 0 || seq > k.acked+1 {
		w.violations.Add(1)
	}
	k.busy++
	w.mu.Unlock()
	c := m.Copy()
	c.SetContext(m.Context())
	go func() {
		acked, nacked := false, false
		select {
		case <-c.Acked():
			acked = true
		case <-c.Nacked():
			nacked = true
		case <-m.Context().Done():
		}
		w.mu.Lock()
		k.busy--
		if acked && seq > k.acked {
			k.acked = seq
		}
		w.mu.Unlock()
		switch {
		case acked:
			m.Ack()
		case nacked:
			m.Nack()
		}
	}()
	return c
}

// orderTag is a keyed message's key and number, carried to the sink in the
// context, which records them with the effect.
type orderTag struct {
	key string
	seq int64
}

type orderTagKey struct{}

// withOrderTag adds msg's key and number to ctx when it has them (--keys).
func withOrderTag(ctx context.Context, msg *message.Message) context.Context {
	seq, err := strconv.ParseInt(msg.Metadata.Get(seqMetadata), 10, 64)
	if err != nil {
		return ctx
	}
	return context.WithValue(ctx, orderTagKey{}, orderTag{key: msg.Metadata.Get("partition_key"), seq: seq})
}
