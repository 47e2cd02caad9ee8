package devkafka

import (
	"encoding/binary"
	"io"
	"net"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kbin"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// groupListener hands kfake groupConns, so that a group member whose client
// went away while it waited in a JoinGroup or SyncGroup still expires.
//
// kfake (groups.go) starts a classic group member's session timer only when
// a JoinGroup or SyncGroup reply reaches the connection: group.reply calls
// updateHeartbeat only if clientReq.reply succeeds, and that fails once the
// connection's read loop has seen the client close (client_conn.go closes
// cc.done). A member killed while it waited in a JoinGroup, or in a
// SyncGroup, is then left with no timer at all: it stays in the group for
// good. A Stable group keeps assigning it partitions nobody consumes; a
// rebalancing group waits for it until the rebalance deadline, which every
// new join restarts (group.rebalance resets tRebalance), so clients that
// keep rejoining keep the group in PreparingRebalance forever. Real Kafka
// expires such a member after its session timeout. A groupConn hides the
// client's close from kfake until kfake has written the answer to every
// JoinGroup and SyncGroup it was given on the connection: the reply
// "reaches" the connection (the bytes go nowhere), the session timer starts,
// and the member expires after its session timeout as on Kafka.
func groupListener(ln net.Listener) net.Listener { return groupLn{ln} }

type groupLn struct{ net.Listener }

func (l groupLn) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &groupConn{Conn: c, waiting: map[int32]time.Time{}, changed: make(chan struct{}), closed: make(chan struct{})}, nil
}

// maxGroupHold bounds how long a dead client's close is hidden when the
// JoinGroup named no rebalance timeout (SyncGroup names none): kfake drops,
// unanswered, the request of a member it removes while the member waits
// (removeMember), and the connection must not be kept for that forever.
const maxGroupHold = 5 * time.Minute

type groupConn struct {
	net.Conn
	frame []byte // what is left to hand kfake of the request read last

	mu sync.Mutex
	// waiting holds the correlation IDs of the JoinGroup and SyncGroup
	// requests kfake was given and has not answered, with how long to
	// wait for each answer at most.
	waiting map[int32]time.Time
	changed chan struct{} // closed and replaced when waiting shrinks
	hold    time.Duration // the last JoinGroup's rebalance timeout, for SyncGroups

	closeOnce sync.Once
	closed    chan struct{}
}

// Read hands kfake the client's requests, one frame at a time, noting the
// group requests that await an answer; the client's close (or any read
// error) is returned only once they are answered.
func (c *groupConn) Read(p []byte) (int, error) {
	if len(c.frame) == 0 {
		var size [4]byte
		if _, err := io.ReadFull(c.Conn, size[:]); err != nil {
			c.awaitAnswers()
			return 0, err
		}
		frame := make([]byte, 4+binary.BigEndian.Uint32(size[:]))
		copy(frame, size[:])
		if _, err := io.ReadFull(c.Conn, frame[4:]); err != nil {
			c.awaitAnswers()
			return 0, err
		}
		c.note(frame[4:])
		c.frame = frame
	}
	n := copy(p, c.frame)
	c.frame = c.frame[n:]
	return n, nil
}

// note records body's request if it is a JoinGroup or a SyncGroup.
func (c *groupConn) note(body []byte) {
	if len(body) < 8 {
		return // kfake refuses it
	}
	key := int16(binary.BigEndian.Uint16(body))
	if key != int16(kmsg.JoinGroup) && key != int16(kmsg.SyncGroup) {
		return
	}
	corr := int32(binary.BigEndian.Uint32(body[4:]))
	c.mu.Lock()
	defer c.mu.Unlock()
	if key == int16(kmsg.JoinGroup) {
		if ms := rebalanceTimeoutMs(body); ms > 0 {
			// The group answers by its deadline; leave some slack.
			c.hold = 2 * time.Duration(ms) * time.Millisecond
		}
	}
	hold := c.hold
	if hold <= 0 || hold > maxGroupHold {
		hold = maxGroupHold
	}
	c.waiting[corr] = time.Now().Add(hold)
}

// rebalanceTimeoutMs parses a JoinGroup request (header and body, without
// the size) as kfake does, returning its rebalance timeout, or 0.
func rebalanceTimeoutMs(body []byte) int32 {
	r := kbin.Reader{Src: body}
	r.Int16() // key
	version := r.Int16()
	r.Int32()          // correlation ID
	r.NullableString() // client ID
	req := new(kmsg.JoinGroupRequest)
	req.SetVersion(version)
	if req.IsFlexible() {
		kmsg.SkipTags(&r)
	}
	if r.Complete() != nil || req.ReadFrom(r.Src) != nil {
		return 0
	}
	if version == 0 {
		return req.SessionTimeoutMillis // v0 rebalances within the session timeout
	}
	return req.RebalanceTimeoutMillis
}

// awaitAnswers returns once kfake has answered every group request it was
// given on c, each one's bound has passed, or c is closed.
func (c *groupConn) awaitAnswers() {
	for {
		c.mu.Lock()
		var deadline time.Time
		for _, d := range c.waiting {
			if deadline.IsZero() || d.After(deadline) {
				deadline = d
			}
		}
		changed := c.changed
		c.mu.Unlock()
		wait := time.Until(deadline)
		if deadline.IsZero() || wait <= 0 {
			return
		}
		t := time.NewTimer(wait)
		select {
		case <-changed:
			t.Stop()
		case <-t.C:
			return
		case <-c.closed:
			t.Stop()
			return
		}
	}
}

// Write sends kfake's answer (kfake writes one whole response per call: the
// size, the correlation ID, the body), marking its request answered first:
// the answer has been given to the connection whether or not the client is
// still there to read it.
func (c *groupConn) Write(b []byte) (int, error) {
	if len(b) >= 8 {
		corr := int32(binary.BigEndian.Uint32(b[4:]))
		c.mu.Lock()
		if _, ok := c.waiting[corr]; ok {
			delete(c.waiting, corr)
			close(c.changed)
			c.changed = make(chan struct{})
		}
		c.mu.Unlock()
	}
	return c.Conn.Write(b)
}

func (c *groupConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return c.Conn.Close()
}
