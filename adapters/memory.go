package adapters

import (
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
)

func openMemory(b *Broker, cfg MemoryConfig, logger watermill.LoggerAdapter) error {
	ps := gochannel.NewGoChannel(gochannel.Config{
		OutputChannelBuffer: cfg.OutputBuffer,
		// Without persistence a message published before Subscribe is lost;
		// keeping it matches what every real broker here does.
		Persistent: true,
	}, logger)
	b.Publisher, b.Subscriber, b.Addr = ps, ps, "in-process"
	b.onClose(ps.Close)
	return nil
}
