package router

import (
	"context"
	"fmt"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/middleware"
)

// checkNames refuses to subscribe to a topic whose DLQ topics or retry
// stages cannot exist, so Run fails at start-up with an error naming the
// name and the broker's rule (antidote.ErrInvalidTopic), or
// middleware.ErrDeadLetterLoop for a DLQ topic that is the topic itself.
// Names are checked by whatever the DLQ publisher and the scheduler know
// (antidote.NameChecker, antidote.StageChecker); a publisher that does not
// say is trusted.
func checkNames(cfg Config) message.SubscriberDecorator {
	return func(sub message.Subscriber) (message.Subscriber, error) {
		return namedSubscriber{Subscriber: sub, check: func(topic string) error { return cfg.checkNames(topic) }}, nil
	}
}

func (c Config) checkNames(topic string) error {
	dlqTopic := c.DeadLetter.Topic
	if dlqTopic == nil {
		dlqTopic = antidote.DLQTopic
	}
	if dlq := dlqTopic(topic); dlq == topic {
		return fmt.Errorf("router: topic %q: %w: %q; make DeadLetterConfig.Topic return a different topic", topic, middleware.ErrDeadLetterLoop, dlq)
	}
	// Which handler consumes topic is not known here, so every handler's
	// own DLQ topic is checked (not for loops: another handler may well
	// consume one of them).
	names := []string{dlqTopic(topic)}
	for _, t := range c.DeadLetter.HandlerTopics {
		names = append(names, t)
	}
	checker, _ := c.DeadLetter.Publisher.(antidote.NameChecker)
	for _, name := range names {
		if checker != nil {
			if err := checker.CheckName(name); err != nil {
				return fmt.Errorf("router: the DLQ topic of %q cannot exist: %w", topic, err)
			}
		}
	}
	if c.DelayedRetry == nil {
		return nil
	}
	if sc, ok := c.DelayedRetry.Scheduler.(antidote.StageChecker); ok {
		if err := sc.CheckStages(topic, c.DelayedRetry.Stages); err != nil {
			return fmt.Errorf("router: a delayed-retry stage of %q cannot exist: %w", topic, err)
		}
	}
	return nil
}

type namedSubscriber struct {
	message.Subscriber
	check func(topic string) error
}

func (s namedSubscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	if err := s.check(topic); err != nil {
		return nil, err
	}
	return s.Subscriber.Subscribe(ctx, topic)
}
