package adapters

import (
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/antidote-mq/antidote/poison"
)

func openMemory(b *Broker, cfg MemoryConfig, logger watermill.LoggerAdapter) error {
	ps := gochannel.NewGoChannel(gochannel.Config{
		OutputChannelBuffer: cfg.OutputBuffer,
		// Without persistence a message published before Subscribe is lost;
		// keeping it matches what every real broker here does.
		Persistent: true,
	}, logger)
	b.onClose(ps.Close)
	// The consumer's entry is where the subscriber hands a message on:
	// gochannel gives each subscriber a copy of its own to change.
	sub := newCloseWaitSubscriber(ps)
	sub.prepare = always(func(m *message.Message) { poison.ConsumerReader.Distrust(m.Metadata) })
	letters := newCloseWaitSubscriber(ps)
	letters.prepare = always(func(m *message.Message) { poison.LetterReader.Distrust(m.Metadata) })
	letters.shared = true
	b.Publisher, b.Subscriber, b.letters, b.Addr = memoryPublisher{ps}, sub, letters, "in-process"
	b.onClose(letters.Close)
	b.onClose(sub.Close)
	return nil
}

// memoryPublisher applies the metadata rule: the caller's message is never
// modified, so a message that breaks the rule is published as a copy.
type memoryPublisher struct{ *gochannel.GoChannel }

func (p memoryPublisher) Publish(topic string, msgs ...*message.Message) error {
	copied := false
	for i, msg := range msgs {
		if c := withMetadataRule(msg); c != msg {
			if !copied {
				msgs, copied = append([]*message.Message(nil), msgs...), true
			}
			msgs[i] = c
		}
	}
	return p.GoChannel.Publish(topic, msgs...)
}
