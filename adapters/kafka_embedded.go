package adapters

import (
	"fmt"
	"net"
	"strconv"

	"github.com/twmb/franz-go/pkg/kfake"
)

// EmbeddedKafkaConfig configures StartEmbeddedKafka.
type EmbeddedKafkaConfig struct {
	// Addr to listen on. Default "127.0.0.1:0" (a free port).
	Addr string
	// Partitions of auto-created topics. Default 4.
	Partitions int
}

// EmbeddedKafka is an in-process Kafka-protocol broker (franz-go's kfake):
// consumer groups, committed offsets and auto-created topics, kept in memory.
// For development, demos and tests; not for production data.
type EmbeddedKafka struct {
	cluster *kfake.Cluster
}

// StartEmbeddedKafka starts a one-node broker that creates topics on first use.
func StartEmbeddedKafka(cfg EmbeddedKafkaConfig) (*EmbeddedKafka, error) {
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.Partitions == 0 {
		cfg.Partitions = 4
	}
	if cfg.Partitions < 0 {
		return nil, fmt.Errorf("embedded kafka: partitions %d is negative; use 1 or more", cfg.Partitions)
	}
	host, portStr, err := net.SplitHostPort(cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("embedded kafka: address %q is not host:port: %w", cfg.Addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("embedded kafka: port %q is not a number", portStr)
	}
	// kfake always binds 127.0.0.1; honour the host the user asked for.
	listen := func(network, _ string) (net.Listener, error) {
		return net.Listen(network, net.JoinHostPort(host, strconv.Itoa(port)))
	}
	c, err := kfake.NewCluster(
		kfake.NumBrokers(1),
		kfake.Ports(port),
		kfake.ListenFn(listen),
		kfake.AllowAutoTopicCreation(),
		kfake.DefaultNumPartitions(cfg.Partitions),
	)
	if err != nil {
		return nil, fmt.Errorf("embedded kafka: listen on %s: %w", cfg.Addr, err)
	}
	return &EmbeddedKafka{cluster: c}, nil
}

// Addrs are the host:port addresses clients bootstrap from.
func (e *EmbeddedKafka) Addrs() []string { return e.cluster.ListenAddrs() }

// Close stops the broker; its data is gone.
func (e *EmbeddedKafka) Close() { e.cluster.Close() }
