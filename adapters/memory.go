package adapters

import (
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
)

func openMemory(b *Broker, cfg MemoryConfig, logger watermill.LoggerAdapter) error {
	ps := gochannel.NewGoChannel(gochannel.Config{
		OutputChannelBuffer: cfg.OutputBuffer,
		// Without persistence a message published before Subscribe is lost;
		// keeping it matches what every real broker here does.
		Persistent: true,
	}, logger)
	b.Publisher, b.Subscriber, b.Addr = memoryPublisher{ps}, ps, "in-process"
	b.onClose(ps.Close)
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
