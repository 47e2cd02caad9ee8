package antidote

// ConsumerIdentity says who consumes: the messaging system, the consumer
// group, the broker's address and the consuming service's version. It is
// set once, in router.Config.Consumer (adapters.Broker.ConsumerIdentity
// fills it from the broker), and router.New hands each field to every
// middleware that reports or keys by it, so spans, metrics, letters and
// the crash-loop tracker's keys all name the same consumer.
//
// The zero value names nothing: each middleware keeps its own fields and
// their defaults.
type ConsumerIdentity struct {
	// System is messaging.system: "kafka", "rabbitmq", "postgresql",
	// "gochannel" (adapters.Kind.MessagingSystem), or your own name. If
	// empty, spans and metrics leave it out (a Kafka delivery still says
	// "kafka").
	System string
	// Group is the consumer group: messaging.consumer.group.name on spans
	// and metrics, poison.KeyConsumerGroup on letters, and part of every
	// crash-loop tracker key, so groups sharing a tracker do not add up
	// each other's deliveries. If empty, none of them carries a group.
	// Changing it on a running deployment starts the crash-loop counts
	// afresh (the old keys are no longer read).
	Group string
	// ServerAddress is the broker's address, reported as server.address
	// and server.port: "host:port", a comma-separated list of them (the
	// first is reported) or a URL, as adapters.Broker.Addr gives it. If
	// empty, the attributes are left out.
	ServerAddress string
	// Version is the consuming service's version, recorded on letters
	// under poison.KeyConsumerVersion (a canary replay waits for a newer
	// one). If empty, the main module's version from the build
	// information, or its VCS revision.
	Version string
}
