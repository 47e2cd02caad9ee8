package adapters

import (
	"errors"
	"fmt"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
)

// ensureTopic creates topic with kafka.partitions and
// kafka.replication_factor when it does not exist, before the adapter
// subscribes or publishes to it: otherwise the first metadata request of a
// consumer or producer (Sarama asks brokers to auto-create) makes it with
// the broker's num.partitions and default.replication.factor, or, where
// auto-creation is off, the consumer waits for it forever. A topic that
// exists is left as it is, whatever its partitions. Several processes
// creating one topic at once is fine: the broker makes it once and answers
// the others TOPIC_ALREADY_EXISTS.
//
// Best effort: an error (no permission to describe or create topics, the
// broker unreachable) is logged once per topic, the subscribe or publish
// goes on, and the next one tries again. A topic found or made is not
// looked up again by this publisher.
func (p *kafkaPublisher) ensureTopic(topic string) {
	p.mu.Lock()
	state := p.topics[topic]
	p.mu.Unlock()
	if state == topicReady {
		return
	}
	created, err := p.createTopic(topic)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.topics == nil {
		p.topics = map[string]topicState{}
	}
	if err != nil {
		if state != topicFailed {
			p.logger.Error("Cannot make sure the Kafka topic exists with kafka.partitions; the broker may create it with its own defaults", err, watermill.LogFields{"topic": topic})
		}
		p.topics[topic] = topicFailed
		return
	}
	if created {
		p.logger.Info("Created the Kafka topic", watermill.LogFields{"topic": topic, "partitions": p.cfg.Kafka.Partitions, "replication_factor": p.cfg.Kafka.ReplicationFactor})
	}
	p.topics[topic] = topicReady
}

type topicState int

const (
	_           topicState = iota // not checked yet
	topicReady                    // exists
	topicFailed                   // could not be checked; the error was logged
)

// createTopic creates topic unless it exists, reporting whether it did.
func (p *kafkaPublisher) createTopic(topic string) (bool, error) {
	admin, err := p.clusterAdmin()
	if err != nil {
		return false, err
	}
	// A metadata request that does not ask for auto-creation: only a
	// missing topic is created, so an existing one is never touched (nor
	// a CreateTopics refused for lack of the permission it needs logged).
	metas, err := admin.DescribeTopics([]string{topic})
	if err != nil {
		return false, err
	}
	if len(metas) != 1 {
		return false, fmt.Errorf("kafka: describing topic %s returned %d topics", topic, len(metas))
	}
	switch {
	case errors.Is(metas[0].Err, sarama.ErrNoError):
		return false, nil
	case !errors.Is(metas[0].Err, sarama.ErrUnknownTopicOrPartition):
		return false, metas[0].Err
	}
	err = admin.CreateTopic(topic, &sarama.TopicDetail{
		NumPartitions:     int32(p.cfg.Kafka.Partitions),
		ReplicationFactor: int16(p.cfg.Kafka.ReplicationFactor),
	}, false)
	if errors.Is(err, sarama.ErrTopicAlreadyExists) {
		return false, nil // another process made it meanwhile
	}
	return err == nil, err
}
