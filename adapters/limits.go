package adapters

import (
	"errors"
	"strings"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote"
)

// Broker limits. Every adapter refuses what its broker cannot hold with one
// of the errors below, at the first moment it can know: a topic whose name
// (or a name derived from it: its DLQ, retry stages, delay queues, tables)
// cannot exist is refused by Subscribe and Publish; a message that cannot
// fit is refused by Publish, naming its size, the limit and the setting.
// Never a silent truncation, never a loop.

// CheckMessage reports whether msg would be accepted by b's Publish to
// topic, with the error Publish would return; nil for brokers without
// limits (memory).
func (b *Broker) CheckMessage(topic string, msg *message.Message) error {
	if c, ok := b.Publisher.(antidote.MessageChecker); ok {
		return c.CheckMessage(topic, msg)
	}
	return nil
}

// CheckTopic reports whether topic and its default DLQ topic (topic +
// antidote.DeadLetterSuffix; not for a topic that is a DLQ itself) can exist on b's
// broker: what Subscribe checks.
func (b *Broker) CheckTopic(topic string) error {
	c, ok := b.Publisher.(antidote.NameChecker)
	if !ok {
		return nil
	}
	return checkTopic(c.CheckName, topic)
}

// checkTopic checks topic and, unless topic is itself a DLQ topic (nothing
// dead-letters into a DLQ's DLQ by default), its default DLQ topic.
func checkTopic(check func(string) error, topic string) error {
	if err := check(topic); err != nil {
		return err
	}
	if strings.HasSuffix(topic, antidote.DeadLetterSuffix) {
		return nil
	}
	if err := check(antidote.DLQTopic(topic)); err != nil {
		var te *antidote.TopicError
		if errors.As(err, &te) {
			te.Topic = topic
			te.Rule += "; the topic's DLQ topic must fit too"
		}
		return err
	}
	return nil
}
