package adapters_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/devkafka"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/internal/testenv/brokers"
)

// The consumers' read timeout outlasts the rebalance timeout, and a bad
// combination left by ConfigureSarama is refused, naming the settings.
func TestSaramaGroupTimeouts(t *testing.T) {
	for _, rebalance := range []time.Duration{0, 10 * time.Second, 5 * time.Minute} {
		cfg := adapters.Config{Broker: adapters.KindKafka, Kafka: adapters.KafkaConfig{Embedded: true, RebalanceTimeout: rebalance}}
		cfg.SetDefaults()
		sc, err := adapters.SaramaConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		g := sc.Consumer.Group
		if g.Rebalance.Timeout != cfg.Kafka.RebalanceTimeout || sc.Net.ReadTimeout <= g.Rebalance.Timeout || sc.Net.ReadTimeout < 30*time.Second {
			t.Errorf("rebalance %s: read timeout %s, rebalance timeout %s", cfg.Kafka.RebalanceTimeout, sc.Net.ReadTimeout, g.Rebalance.Timeout)
		}
		if g.Heartbeat.Interval > g.Session.Timeout/3 {
			t.Errorf("heartbeat %s for session %s", g.Heartbeat.Interval, g.Session.Timeout)
		}
	}
	for _, tc := range []struct {
		configure func(*sarama.Config)
		want      string
	}{
		{func(sc *sarama.Config) { sc.Net.ReadTimeout = 30 * time.Second }, "kafka.rebalance_timeout"},
		{func(sc *sarama.Config) { sc.Consumer.Group.Heartbeat.Interval = 8 * time.Second }, "kafka.session_timeout"},
	} {
		cfg := adapters.Config{Broker: adapters.KindKafka, Kafka: adapters.KafkaConfig{Embedded: true, ConfigureSarama: tc.configure}}
		cfg.SetDefaults()
		if _, err := adapters.SaramaConfig(cfg); !errors.Is(err, adapters.ErrInvalidConfig) || !strings.Contains(fmt.Sprint(err), tc.want) {
			t.Errorf("got %v, want ErrInvalidConfig naming %s", err, tc.want)
		}
	}
}

// A rebalance that lasts longer than Sarama's default read timeout (30s)
// ends with the consumer that waited through it, as one member: its
// JoinGroup is not given up. Under the old settings (read timeout 30s,
// under the rebalance timeout) the consumer abandoned its JoinGroup at 30s
// and joined again as a new member, and the rebalance ended with the
// abandoned member in it as well (and, on kfake, a new join restarting the
// rebalance's deadline).
//
// The slow member is a raw client that stays in the group (heartbeating)
// but rejoins only after slowRejoin; being the group's leader it gets the
// members of the generation in its join answer.
func TestKafkaRebalanceOutlastingReadTimeoutEnds(t *testing.T) {
	if testing.Short() {
		t.Skip("waits through a 32s rebalance")
	}
	const (
		session    = 6 * time.Second // kfake's smallest
		rebalance  = 40 * time.Second
		slowRejoin = 32 * time.Second // over Sarama's default 30s read timeout
	)
	k, err := devkafka.Start(devkafka.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Close)
	ctx := t.Context()
	topic, group := brokers.Topic("slow_"), brokers.Topic("group_")

	slow, err := kgo.NewClient(kgo.SeedBrokers(k.Addrs()...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(slow.Close)
	m := &groupMember{cl: slow, group: group, topic: topic, session: session, rebalance: rebalance}
	joined, err := m.join(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.sync(ctx, joined, 0); err != nil {
		t.Fatal(err)
	}

	cfg := adapters.Config{Broker: adapters.KindKafka, Kafka: adapters.KafkaConfig{
		Brokers: k.Addrs(), ConsumerGroup: group, SessionTimeout: session, RebalanceTimeout: rebalance,
	}}
	b := brokers.Open(t, cfg)
	msgs, err := b.Subscriber.Subscribe(ctx, topic) // joins: the rebalance starts
	if err != nil {
		t.Fatal(err)
	}
	testenv.EventuallyNil(t, 20*time.Second, func() error {
		n, err := m.members(ctx)
		if err != nil || n != 2 {
			return fmt.Errorf("the consumer has not joined: %d members, %v", n, err)
		}
		return nil
	})
	// The slow member stays (heartbeats) but does not rejoin yet.
	rejoin := time.Now().Add(slowRejoin)
	for time.Now().Before(rejoin) {
		if err := m.heartbeat(ctx); err != nil && !errors.Is(err, kerr.RebalanceInProgress) {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
	}
	joined, err = m.join(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(joined.Members) != 2 {
		var ids []string
		for _, jm := range joined.Members {
			ids = append(ids, jm.MemberID)
		}
		t.Fatalf("the rebalance ended with %d members %v, want the slow one and the consumer: the consumer gave up its JoinGroup and joined again", len(joined.Members), ids)
	}
	if err := m.sync(ctx, joined, 1); err != nil {
		t.Fatal(err)
	}
	// And the group works: the consumer gets what is published.
	if err := b.Publisher.Publish(topic, message.NewMessage("1", nil)); err != nil {
		t.Fatal(err)
	}
	select {
	case msg := <-msgs:
		msg.Ack()
	case <-time.After(30 * time.Second):
		t.Fatal("the consumer received nothing after the rebalance")
	}
}

// groupMember is a classic consumer-group member speaking the protocol by
// hand, the leader of its group.
type groupMember struct {
	cl                 *kgo.Client
	group, topic       string
	session, rebalance time.Duration
	id                 string
	gen                int32
}

func (m *groupMember) join(ctx context.Context) (*kmsg.JoinGroupResponse, error) {
	for {
		req := kmsg.NewPtrJoinGroupRequest()
		req.Group = m.group
		req.SessionTimeoutMillis = int32(m.session.Milliseconds())
		req.RebalanceTimeoutMillis = int32(m.rebalance.Milliseconds())
		req.MemberID = m.id
		req.ProtocolType = "consumer"
		meta := kmsg.NewConsumerMemberMetadata()
		meta.Topics = []string{m.topic}
		req.Protocols = []kmsg.JoinGroupRequestProtocol{{Name: "range", Metadata: meta.AppendTo(nil)}}
		resp, err := req.RequestWith(ctx, m.cl)
		if err != nil {
			return nil, err
		}
		m.id = resp.MemberID
		if err := kerr.ErrorForCode(resp.ErrorCode); errors.Is(err, kerr.MemberIDRequired) {
			continue
		} else if err != nil {
			return nil, err
		}
		m.gen = resp.Generation
		return resp, nil
	}
}

// sync gives the members of joined other than m the topic's partitions
// (it has partitions of them).
func (m *groupMember) sync(ctx context.Context, joined *kmsg.JoinGroupResponse, partitions int32) error {
	req := kmsg.NewPtrSyncGroupRequest()
	req.Group = m.group
	req.MemberID = m.id
	req.Generation = m.gen
	req.ProtocolType = kmsg.StringPtr("consumer")
	req.Protocol = kmsg.StringPtr("range")
	for _, jm := range joined.Members {
		a := kmsg.NewConsumerMemberAssignment()
		if jm.MemberID != m.id && partitions > 0 {
			tp := kmsg.NewConsumerMemberAssignmentTopic()
			tp.Topic = m.topic
			for p := range partitions {
				tp.Partitions = append(tp.Partitions, p)
			}
			a.Topics = append(a.Topics, tp)
		}
		req.GroupAssignment = append(req.GroupAssignment, kmsg.SyncGroupRequestGroupAssignment{MemberID: jm.MemberID, MemberAssignment: a.AppendTo(nil)})
	}
	resp, err := req.RequestWith(ctx, m.cl)
	if err != nil {
		return err
	}
	return kerr.ErrorForCode(resp.ErrorCode)
}

func (m *groupMember) heartbeat(ctx context.Context) error {
	req := kmsg.NewPtrHeartbeatRequest()
	req.Group = m.group
	req.MemberID = m.id
	req.Generation = m.gen
	resp, err := req.RequestWith(ctx, m.cl)
	if err != nil {
		return err
	}
	return kerr.ErrorForCode(resp.ErrorCode)
}

func (m *groupMember) members(ctx context.Context) (int, error) {
	req := kmsg.NewPtrDescribeGroupsRequest()
	req.Groups = []string{m.group}
	resp, err := req.RequestWith(ctx, m.cl)
	if err != nil {
		return 0, err
	}
	return len(resp.Groups[0].Members), nil
}
