package adapters

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"
)

// fakeSession is the part of a consumer group session a claim uses.
type fakeSession struct {
	sarama.ConsumerGroupSession
	ctx    context.Context
	mu     sync.Mutex
	marked int64
}

func (s *fakeSession) Context() context.Context { return s.ctx }
func (s *fakeSession) Commit()                  {}
func (s *fakeSession) MarkOffset(_ string, _ int32, offset int64, _ string) {
	s.mu.Lock()
	s.marked = offset
	s.mu.Unlock()
}

// testClaims is a key-ordered subscriber whose claims the test runs by
// hand, feeding their records; their messages come out of out.
type testClaims struct {
	s   *orderedKafkaSubscriber
	out chan *message.Message
	ctx context.Context
}

func newTestClaims(t *testing.T, n, readAhead int) *testClaims {
	t.Helper()
	k := KafkaConfig{Concurrency: n, Ordering: KafkaOrderingKey, ReadAheadBytes: readAhead, SessionTimeout: time.Second}
	s := newOrderedKafkaSubscriber(k, sarama.NewConfig(), TolerantKafkaUnmarshaler{Inner: kafka.DefaultMarshaler{}}, watermill.NopLogger{})
	t.Cleanup(func() { _ = s.Close() })
	return &testClaims{s: s, out: make(chan *message.Message), ctx: context.Background()}
}

// claim starts a claim of partition 0 of topic t; end ends its session
// and returns once the claim returned, answering nothing meanwhile.
func (tc *testClaims) claim() (records chan *sarama.ConsumerMessage, sess *fakeSession, end func()) {
	ctx, cancel := context.WithCancel(tc.ctx)
	h := &orderedHandler{s: tc.s, ctx: tc.ctx, out: tc.out, fields: watermill.LogFields{}}
	sess = &fakeSession{ctx: ctx, marked: -1}
	records = make(chan *sarama.ConsumerMessage) // unbuffered: a send is a read
	n := tc.s.k.Concurrency
	c := &claimRun{h: h, sess: sess, topic: "t", partition: 0, epoch: claimEpochs.Add(1), limit: n,
		windowMax: max(1000, 64*n), heldMax: int64(tc.s.k.ReadAheadBytes),
		results: make(chan deliveryResult, n), drainCh: make(chan struct{}), stop: make(chan struct{}),
		unfenced: make(chan string), finished: make(chan struct{}),
		keys: map[string]*keyQueue{}, marked: -1}
	done := make(chan struct{})
	go func() { _ = c.run(records); close(done) }()
	return records, sess, func() { cancel(); <-done }
}

// claimFor runs one claim with key ordering, concurrency n and a
// read-ahead of readAhead bytes; stop ends it, nacking what comes out.
func claimFor(t *testing.T, n, readAhead int) (records chan *sarama.ConsumerMessage, out chan *message.Message, sess *fakeSession, stop func()) {
	t.Helper()
	tc := newTestClaims(t, n, readAhead)
	records, sess, end := tc.claim()
	return records, tc.out, sess, func() {
		ended := make(chan struct{})
		go func() { end(); close(ended) }()
		for {
			select {
			case <-ended:
				return
			case m := <-tc.out:
				m.Nack()
			}
		}
	}
}

func rec(offset int64, key string, size int) *sarama.ConsumerMessage {
	return &sarama.ConsumerMessage{Topic: "t", Offset: offset, Key: []byte(key), Value: make([]byte, size)}
}

// mustRead feeds records [from, to): each must be read (the claim reads
// as fast as records come while under its bounds).
func mustRead(t *testing.T, records chan<- *sarama.ConsumerMessage, from, to int64, key string, size int) {
	t.Helper()
	for i := from; i < to; i++ {
		select {
		case records <- rec(i, key, size):
		case <-time.After(30 * time.Second):
			t.Fatalf("record %d not read", i)
		}
	}
}

// mustNotRead offers record at: the claim must not read it (a slow
// machine can only make this pass wrongly, never fail wrongly).
func mustNotRead(t *testing.T, records chan<- *sarama.ConsumerMessage, at int64, key string, size int) {
	t.Helper()
	select {
	case records <- rec(at, key, size):
		t.Fatalf("record %d read past the read-ahead bound", at)
	case <-time.After(300 * time.Millisecond):
	}
}

// A key held back (its first message not finished) with large records
// behind it: the claim reads up to ReadAheadBytes of them, then pauses, and
// reads on as messages finish.
func TestKafkaReadAheadBoundsHeldBytes(t *testing.T) {
	const size, readAhead = 10 << 10, 100 << 10 // 10 KiB records, 100 KiB
	records, out, sess, stop := claimFor(t, 4, readAhead)
	defer stop()
	// It reads until what it holds reaches the bound: 10 records.
	mustRead(t, records, 0, 10, "k", size)
	mustNotRead(t, records, 10, "k", size)
	// The key's messages come one at a time; each acked one makes room
	// for one more.
	first := <-out
	first.Ack()
	mustRead(t, records, 10, 11, "k", size)
	mustNotRead(t, records, 11, "k", size)
	sess.mu.Lock()
	marked := sess.marked
	sess.mu.Unlock()
	if marked != 1 {
		t.Fatalf("marked %d after acking offset 0, want 1", marked)
	}
}

// A record larger than the bound still passes, alone: the partition is
// never stopped for good.
func TestKafkaReadAheadLetsAHugeRecordThrough(t *testing.T) {
	const readAhead, size = 1 << 10, 4 << 10
	records, out, _, stop := claimFor(t, 4, readAhead)
	defer stop()
	mustRead(t, records, 0, 1, "k", size)
	mustNotRead(t, records, 1, "other", size)
	m := <-out
	m.Ack()
	mustRead(t, records, 1, 2, "other", size)
	mustNotRead(t, records, 2, "third", size)
}
