package adapters

import (
	"context"
	"sync"

	"github.com/ThreeDotsLabs/watermill/message"
)

// closeWaitSubscriber makes Close return only after every channel returned
// by Subscribe is closed. watermill-sql v4.1.2 closes its output channel just
// after Close has returned, so code that drains a subscription after Close
// (the router, Watermill's Pub/Sub suite) can see it still open.
type closeWaitSubscriber struct {
	message.Subscriber
	// prepare, when set, makes for each subscription what runs on each of
	// its messages before it is handed out: the memory broker's entry,
	// where its trust rule applies; the PostgreSQL row's place moved into
	// the context.
	prepare func() func(*message.Message)
	// shared: the inner subscriber is shared with others, so Close ends
	// only this one's subscriptions.
	shared  bool
	closing chan struct{}
	once    sync.Once
	wg      sync.WaitGroup
}

// always is a prepare that runs f on every message of every subscription.
func always(f func(*message.Message)) func() func(*message.Message) {
	return func() func(*message.Message) { return f }
}

func newCloseWaitSubscriber(s message.Subscriber) *closeWaitSubscriber {
	return &closeWaitSubscriber{Subscriber: s, closing: make(chan struct{})}
}

func (s *closeWaitSubscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	in, err := s.Subscriber.Subscribe(ctx, topic)
	if err != nil {
		return nil, err
	}
	out := make(chan *message.Message)
	var prepare func(*message.Message)
	if s.prepare != nil {
		prepare = s.prepare()
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(out)
		for msg := range in {
			if prepare != nil {
				prepare(msg)
			}
			select {
			case out <- msg:
			case <-s.closing:
				// Not acked, so it stays in the queue for the next consumer.
			}
		}
	}()
	return out, nil
}

// SubscribeInitialize keeps the wrapped subscriber's schema initialisation visible.
func (s *closeWaitSubscriber) SubscribeInitialize(topic string) error {
	if si, ok := s.Subscriber.(message.SubscribeInitializer); ok {
		return si.SubscribeInitialize(topic)
	}
	return nil
}

func (s *closeWaitSubscriber) Close() error {
	s.once.Do(func() { close(s.closing) })
	var err error
	if !s.shared {
		err = s.Subscriber.Close()
	}
	s.wg.Wait()
	return err
}
