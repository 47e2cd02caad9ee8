package devkafka_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/antidote-mq/antidote/devkafka"
	"github.com/antidote-mq/antidote/internal/testenv"
)

// Group timings of the raw members below: kfake's smallest session timeout
// (group.min.session.timeout.ms, 6s), so that a dead member expires soon,
// and a rebalance timeout long enough that no rebalance ends on its
// deadline while the test sets the scene (the live member's join ends it).
const (
	rawSessionMs   = 6000
	rawRebalanceMs = 15000
)

// rawMember is a classic consumer-group member speaking the group protocol
// by hand, so that a test chooses the moment its client goes away.
type rawMember struct {
	cl  *kgo.Client
	id  string
	gen int32
}

func newRawMember(t *testing.T, addrs []string) *rawMember {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addrs...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return &rawMember{cl: cl}
}

// join sends JoinGroup until it is answered with something other than
// MEMBER_ID_REQUIRED, returning the answer.
func (m *rawMember) join(ctx context.Context, group string) (*kmsg.JoinGroupResponse, error) {
	for {
		req := kmsg.NewPtrJoinGroupRequest()
		req.Group = group
		req.SessionTimeoutMillis = rawSessionMs
		req.RebalanceTimeoutMillis = rawRebalanceMs
		req.MemberID = m.id
		req.ProtocolType = "consumer"
		meta := kmsg.NewConsumerMemberMetadata()
		meta.Topics = []string{"t"}
		req.Protocols = []kmsg.JoinGroupRequestProtocol{{Name: "range", Metadata: meta.AppendTo(nil)}}
		resp, err := req.RequestWith(ctx, m.cl)
		if err != nil {
			return nil, err
		}
		m.id = resp.MemberID
		if err := kerr.ErrorForCode(resp.ErrorCode); err == kerr.MemberIDRequired {
			continue
		} else if err != nil {
			return nil, err
		}
		m.gen = resp.Generation
		return resp, nil
	}
}

// sync sends SyncGroup; a leader gives every member of its join answer
// an empty assignment.
func (m *rawMember) sync(ctx context.Context, group string, joined *kmsg.JoinGroupResponse) error {
	req := kmsg.NewPtrSyncGroupRequest()
	req.Group = group
	req.MemberID = m.id
	req.Generation = m.gen
	req.ProtocolType = kmsg.StringPtr("consumer")
	req.Protocol = kmsg.StringPtr("range")
	if joined != nil && joined.LeaderID == m.id {
		assignment := kmsg.NewConsumerMemberAssignment()
		for _, jm := range joined.Members {
			req.GroupAssignment = append(req.GroupAssignment, kmsg.SyncGroupRequestGroupAssignment{
				MemberID: jm.MemberID, MemberAssignment: assignment.AppendTo(nil)})
		}
	}
	resp, err := req.RequestWith(ctx, m.cl)
	if err != nil {
		return err
	}
	return kerr.ErrorForCode(resp.ErrorCode)
}

// step keeps a live member in the group: a heartbeat, and a rejoin and a
// sync when the group rebalances.
func (m *rawMember) step(ctx context.Context, group string) error {
	req := kmsg.NewPtrHeartbeatRequest()
	req.Group = group
	req.MemberID = m.id
	req.Generation = m.gen
	resp, err := req.RequestWith(ctx, m.cl)
	if err != nil {
		return err
	}
	switch err := kerr.ErrorForCode(resp.ErrorCode); err {
	case nil:
		return nil
	case kerr.RebalanceInProgress, kerr.IllegalGeneration:
	case kerr.UnknownMemberID:
		m.id = ""
	default:
		return err
	}
	joined, err := m.join(ctx, group)
	if err != nil {
		return err
	}
	return m.sync(ctx, group, joined)
}

// describe returns the group's state and member IDs, sorted.
func describe(ctx context.Context, cl *kgo.Client, group string) (string, []string, error) {
	req := kmsg.NewPtrDescribeGroupsRequest()
	req.Groups = []string{group}
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		return "", nil, err
	}
	if len(resp.Groups) != 1 {
		return "", nil, fmt.Errorf("%d groups described", len(resp.Groups))
	}
	g := resp.Groups[0]
	var ids []string
	for _, m := range g.Members {
		ids = append(ids, m.MemberID)
	}
	slices.Sort(ids)
	return g.State, ids, nil
}

// New group members whose clients went away while they waited in their
// first JoinGroup (workers SIGKILLed as they join, or Sarama abandoning a
// JoinGroup at its read timeout and joining again as a new member) expire
// after their session timeout, and the group converges to the live member.
// kfake alone starts such a member's session timer only if its join answer
// reaches the connection (see groupconn.go); against a closed connection
// its reply is a coin toss (clientReq.reply selects between a buffered
// channel and the closed connection's), so a member is left in the Stable
// group for good half the time: with 8 of them, the test fails without
// groupConn in 255 runs of 256.
func TestMembersKilledInAJoinExpire(t *testing.T) {
	b, err := devkafka.Start(devkafka.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	ctx := t.Context()
	const group = "g"

	live := newRawMember(t, b.Addrs())
	joined, err := live.join(ctx, group)
	if err != nil {
		t.Fatal(err)
	}
	if err := live.sync(ctx, group, joined); err != nil {
		t.Fatal(err)
	}

	const killed = 8
	done := make(chan error, killed)
	var doomed []*rawMember
	for range killed {
		m := newRawMember(t, b.Addrs())
		doomed = append(doomed, m)
		go func() {
			_, err := m.join(ctx, group)
			done <- err
		}()
	}
	// Every doomed member is in the group, waiting in its join for the
	// live one's.
	testenv.EventuallyNil(t, 10*time.Second, func() error {
		state, ids, err := describe(ctx, live.cl, group)
		if err != nil || len(ids) != 1+killed {
			return fmt.Errorf("state %s, members %v, err %v", state, ids, err)
		}
		return nil
	})
	for _, m := range doomed {
		m.cl.Close() // mid-JoinGroup
	}
	for range killed {
		<-done
	}

	// The live member rejoins (its heartbeat is told of the rebalance),
	// which ends the rebalance; the group converges to it alone: stable,
	// and no one else in it. Bound: the session timeout (when the dead
	// expire) and a rebalance for each, with slack.
	testenv.EventuallyNil(t, 4*rawSessionMs*time.Millisecond, func() error {
		stepErr := live.step(ctx, group)
		state, ids, err := describe(ctx, live.cl, group)
		if stepErr != nil || err != nil || state != "Stable" || !slices.Equal(ids, []string{live.id}) {
			return fmt.Errorf("state %s, members %v (live one %s), live member's step: %v, describe: %v", state, ids, live.id, stepErr, err)
		}
		return nil
	})
}
