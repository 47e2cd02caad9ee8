// Package devkafka is an in-process Kafka-protocol broker (franz-go's
// kfake) for development, demos and tests: consumer groups, committed
// offsets and auto-created topics, kept in memory, gone on Close. Not for
// production data.
//
// Importing it also lets adapters.Open honour kafka.embedded (see
// adapters.KafkaConfig.Embedded); without the import, Open refuses that
// setting with an error saying to add it. It is its own package so that a
// service that talks to a real Kafka does not compile a broker in.
package devkafka

import (
	"fmt"
	"net"
	"strconv"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/antidote-mq/antidote/adapters"
)

func init() {
	adapters.RegisterEmbeddedKafka(func(addr string, partitions int) ([]string, func(), error) {
		b, err := Start(Config{Addr: addr, Partitions: partitions})
		if err != nil {
			return nil, nil, err
		}
		return b.Addrs(), b.Close, nil
	})
}

// Config configures Start.
type Config struct {
	// Addr to listen on. If Addr is empty, Start listens on "127.0.0.1:0"
	// (a free port).
	Addr string
	// Partitions of auto-created topics. If Partitions is 0, Start uses 4.
	Partitions int
}

func (c *Config) setDefaults() {
	if c.Addr == "" {
		c.Addr = "127.0.0.1:0"
	}
	if c.Partitions == 0 {
		c.Partitions = 4
	}
}

// Validate reports a config Start cannot use.
func (c Config) Validate() error {
	if c.Partitions < 0 {
		return fmt.Errorf("devkafka: partitions %d is negative; use 1 or more", c.Partitions)
	}
	return nil
}

// Broker is a running one-node broker.
type Broker struct {
	cluster *kfake.Cluster
}

// Start starts a one-node broker that creates topics on first use.
func Start(cfg Config) (*Broker, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	host, portStr, err := net.SplitHostPort(cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("devkafka: address %q is not host:port: %w", cfg.Addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("devkafka: port %q is not a number", portStr)
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
		return nil, fmt.Errorf("devkafka: listen on %s: %w", cfg.Addr, err)
	}
	return &Broker{cluster: c}, nil
}

// Addrs are the host:port addresses clients bootstrap from.
func (e *Broker) Addrs() []string { return e.cluster.ListenAddrs() }

// Close stops the broker; its data is gone.
func (e *Broker) Close() { e.cluster.Close() }
