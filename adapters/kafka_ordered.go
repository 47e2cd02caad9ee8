package adapters

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote"
)

// What KafkaConfig.Ordering keeps in order when Concurrency is above 1.
const (
	// KafkaOrderingKey: messages with the same record key run one at a
	// time, in offset order; messages without a key (or with an empty
	// one) are not ordered (each is its own key). Kafka gives keyless
	// records no order either: a producer that sets no key lets the
	// partitioner spread them, and Antidote's publisher sets none unless
	// the message has KafkaConfig.PartitionKey.
	KafkaOrderingKey = "key"
	// KafkaOrderingPartition: one message of a partition at a time, in
	// offset order (what Concurrency 1 does, through the key-ordered
	// subscriber: a nack still holds back the whole partition).
	KafkaOrderingPartition = "partition"
	// KafkaOrderingUnordered: any Concurrency messages of a partition at
	// once, whatever their keys.
	KafkaOrderingUnordered = "unordered"
)

// claimEpochs numbers the partition claims of this process, so that the
// crash-loop guard can tell one claim from the next (antidote.WithClaimPosition).
var claimEpochs atomic.Uint64

// orderedKafkaSubscriber is the subscriber Open uses when
// KafkaConfig.Concurrency is above 1: a Sarama consumer group whose
// partition claims hand up to Concurrency messages at once to the
// subscriber's channel, at most one per key (KafkaConfig.Ordering).
//
// Per claim, one goroutine reads the records, decodes them
// (TolerantKafkaUnmarshaler: undecodable records become messages the
// DeadLetter middleware dead-letters), queues each behind the earlier
// records of its key, and starts a delivery goroutine for each record whose
// key is free while fewer than Concurrency are in flight. A delivery sends
// the message, waits for its ack or nack; a nack sends the same message
// again after NackResendSleep, holding back its key only. The committed
// offset (MarkOffset) is the lowest offset not yet acked: records acked
// above a gap are consumed again after a crash or rebalance (at-least-once,
// as ever), unfinished ones are never skipped.
//
// When the session ends (rebalance, broker lost, Close, Subscribe's context
// done), no new message is sent; the claim waits for the messages already
// handed out, at most SessionTimeout, marks those acked meanwhile and
// returns, so Sarama's last commit includes them. So Close returns once
// the handlers in flight finished (or SessionTimeout passed): a message
// acked during a shutdown is not consumed again, where watermill-kafka's
// subscriber abandons it.
type orderedKafkaSubscriber struct {
	k           KafkaConfig
	sc          *sarama.Config
	unmarshaler kafka.Unmarshaler
	logger      watermill.LoggerAdapter
	// drain bounds the wait for in-flight messages when a session ends.
	drain time.Duration
	// reconnect is the pause before a consumer group is built again after
	// it failed.
	reconnect time.Duration

	// fences hold back records whose earlier delivery a claim gave up
	// while its handler still runs (see fences).
	fences fences

	closing   chan struct{}
	closeOnce sync.Once
	closed    atomic.Bool
	wg        sync.WaitGroup
}

func newOrderedKafkaSubscriber(k KafkaConfig, sc *sarama.Config, u kafka.Unmarshaler, logger watermill.LoggerAdapter) *orderedKafkaSubscriber {
	return &orderedKafkaSubscriber{
		k:           k,
		sc:          sc,
		unmarshaler: u,
		logger:      logger,
		drain:       k.SessionTimeout,
		reconnect:   time.Second,
		closing:     make(chan struct{}),
	}
}

func (s *orderedKafkaSubscriber) connect() (sarama.Client, sarama.ConsumerGroup, error) {
	client, err := sarama.NewClient(s.k.Brokers, s.sc)
	if err != nil {
		return nil, nil, fmt.Errorf("cannot create new Sarama client: %w", err)
	}
	group, err := sarama.NewConsumerGroupFromClient(s.k.ConsumerGroup, client)
	if err != nil {
		_ = client.Close()
		return nil, nil, fmt.Errorf("cannot create consumer group client: %w", err)
	}
	return client, group, nil
}

// Subscribe implements message.Subscriber: each call joins the consumer
// group with a client of its own, as watermill-kafka's does.
func (s *orderedKafkaSubscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	if s.closed.Load() {
		return nil, errors.New("subscriber closed")
	}
	client, group, err := s.connect()
	if err != nil {
		return nil, err
	}
	out := make(chan *message.Message)
	s.wg.Add(1)
	go s.run(ctx, topic, out, client, group)
	return out, nil
}

func (s *orderedKafkaSubscriber) run(ctx context.Context, topic string, out chan *message.Message, client sarama.Client, group sarama.ConsumerGroup) {
	defer s.wg.Done()
	defer close(out)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stopWatch := make(chan struct{})
	defer close(stopWatch)
	go func() {
		select {
		case <-s.closing:
			cancel()
		case <-stopWatch:
		}
	}()
	fields := watermill.LogFields{"provider": "kafka", "topic": topic, "consumer_group": s.k.ConsumerGroup, "concurrency": s.k.Concurrency, "ordering": s.k.Ordering}
	h := &orderedHandler{s: s, ctx: ctx, out: out, fields: fields}
	for {
		errsDone := make(chan struct{})
		go func() {
			defer close(errsDone)
			for err := range group.Errors() {
				if err != nil && ctx.Err() == nil {
					s.logger.Error("Sarama internal error", err, fields)
				}
			}
		}()
		for ctx.Err() == nil {
			if err := group.Consume(ctx, []string{topic}, h); err != nil {
				if ctx.Err() == nil {
					s.logger.Error("Group consume error; reconnecting", err, fields)
				}
				break
			}
		}
		if err := group.Close(); err != nil {
			s.logger.Info("Group close with error", fields.Add(watermill.LogFields{"err": err.Error()}))
		}
		<-errsDone
		_ = client.Close()
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(s.reconnect):
			}
			var err error
			if client, group, err = s.connect(); err == nil {
				break
			}
			s.logger.Error("Cannot reconnect the Kafka consumer group", err, fields)
		}
	}
}

// Close stops every subscription and returns when their channels are
// closed and their consumer groups have left (committing what was acked).
func (s *orderedKafkaSubscriber) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		close(s.closing)
	})
	s.wg.Wait()
	return nil
}

type orderedHandler struct {
	s      *orderedKafkaSubscriber
	ctx    context.Context // cancelled by Close and by Subscribe's context
	out    chan *message.Message
	fields watermill.LogFields
}

func (*orderedHandler) Setup(sarama.ConsumerGroupSession) error   { return nil }
func (*orderedHandler) Cleanup(sarama.ConsumerGroupSession) error { return nil }

func (h *orderedHandler) ConsumeClaim(sess sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	n := h.s.k.Concurrency
	c := &claimRun{
		h:         h,
		sess:      sess,
		topic:     claim.Topic(),
		partition: claim.Partition(),
		epoch:     claimEpochs.Add(1),
		limit:     n,
		windowMax: max(1000, 64*n),
		heldMax:   int64(h.s.k.ReadAheadBytes),
		results:   make(chan deliveryResult, n),
		drainCh:   make(chan struct{}),
		stop:      make(chan struct{}),
		unfenced:  make(chan string),
		finished:  make(chan struct{}),
		keys:      make(map[string]*keyQueue),
		marked:    -1,
	}
	return c.run(claim.Messages())
}

// claimRun is the state of one partition claim; only its run goroutine
// touches it (deliveries report through results).
type claimRun struct {
	h         *orderedHandler
	sess      sarama.ConsumerGroupSession
	topic     string
	partition int32
	epoch     uint64
	limit     int // most messages in flight
	windowMax int // most records read and not yet acked
	heldMax   int64
	// held is the bytes of the records read and not yet finished (in
	// flight, ready or waiting behind their key); reading pauses at
	// heldMax, so a held-back key of large records cannot fill memory.
	held int64

	results  chan deliveryResult
	drainCh  chan struct{} // closed when the session ends: send nothing more
	stop     chan struct{} // closed when the drain's time is up
	unfenced chan string   // a key whose fence came down
	finished chan struct{} // closed when run returns
	draining bool

	inflight int
	// window holds the offsets read and not yet acked below the highest
	// acked one, in offset order, from head on.
	window []windowEntry
	head   int
	last   int64 // highest offset read
	marked int64 // offset last passed to MarkOffset

	ready     []*claimRecord // free to send, in the order they became free
	readyHead int
	keys      map[string]*keyQueue // keys with a message in flight: what waits behind it
}

type windowEntry struct {
	offset int64
	done   bool
}

type claimRecord struct {
	rec   *sarama.ConsumerMessage
	msg   *message.Message
	key   string
	keyed bool
	size  int64
}

// recordSize is what a record holds in memory here, roughly: its key,
// value and headers.
func recordSize(rec *sarama.ConsumerMessage) int64 {
	n := len(rec.Key) + len(rec.Value)
	for _, h := range rec.Headers {
		if h != nil {
			n += len(h.Key) + len(h.Value)
		}
	}
	return int64(n)
}

type keyQueue struct {
	waiting []*claimRecord
}

type deliveryResult struct {
	r     *claimRecord
	acked bool
}

func (c *claimRun) run(records <-chan *sarama.ConsumerMessage) error {
	defer close(c.finished)
	sessDone := c.sess.Context().Done()
	for !c.draining {
		in := records
		// Something read is always in flight or waiting behind a
		// message in flight, so reading resumes as they finish.
		if len(c.window)-c.head >= c.windowMax || c.held >= c.heldMax {
			in = nil
		}
		select {
		case rec, ok := <-in:
			if !ok {
				c.startDrain()
				break
			}
			if err := c.add(rec); err != nil {
				c.startDrain()
				c.drain()
				return err
			}
		case r := <-c.results:
			c.complete(r)
		case k := <-c.unfenced:
			c.release(k)
		case <-sessDone:
			c.startDrain()
		case <-c.h.ctx.Done():
			c.startDrain()
		}
		c.dispatch()
	}
	c.drain()
	return nil
}

func (c *claimRun) add(rec *sarama.ConsumerMessage) error {
	msg, err := c.h.s.unmarshaler.Unmarshal(rec)
	if err != nil {
		// TolerantKafkaUnmarshaler never fails; a custom one may.
		return fmt.Errorf("message unmarshal failed: %w", err)
	}
	c.window = append(c.window, windowEntry{offset: rec.Offset})
	c.last = rec.Offset
	r := &claimRecord{rec: rec, msg: msg, size: recordSize(rec)}
	c.held += r.size
	switch c.h.s.k.Ordering {
	case KafkaOrderingPartition:
		r.keyed = true
	case KafkaOrderingKey:
		if len(rec.Key) > 0 {
			r.key, r.keyed = string(rec.Key), true
		}
	}
	id := c.fenceOf(r)
	if f := c.h.s.fences.up(id); f != nil {
		// An earlier claim gave this record (or its key) up while a
		// handler still runs it: wait for that handler, as for a key busy
		// in this claim.
		r.key, r.keyed = id.key, true
		if q, busy := c.keys[r.key]; busy {
			q.waiting = append(q.waiting, r)
			return nil
		}
		c.keys[r.key] = &keyQueue{waiting: []*claimRecord{r}}
		go c.watch(f, r.key)
		return nil
	}
	if !r.keyed {
		c.ready = append(c.ready, r)
		return nil
	}
	if q, busy := c.keys[r.key]; busy {
		q.waiting = append(q.waiting, r)
		return nil
	}
	c.keys[r.key] = &keyQueue{}
	c.ready = append(c.ready, r)
	return nil
}

func (c *claimRun) dispatch() {
	for c.inflight < c.limit && c.readyHead < len(c.ready) {
		r := c.ready[c.readyHead]
		c.ready[c.readyHead] = nil
		c.readyHead++
		c.inflight++
		go c.deliver(r)
	}
	if c.readyHead == len(c.ready) {
		c.ready, c.readyHead = c.ready[:0], 0
	}
}

// deliver hands r's message to the subscriber's channel until it is acked
// (nacks resend it after NackResendSleep), then reports to the claim.
func (c *claimRun) deliver(r *claimRecord) {
	ctx, cancel := context.WithCancel(c.h.ctx)
	defer cancel()
	msg := r.msg
	msg.SetContext(antidote.WithClaimPosition(ctx, c.partition, r.rec.Offset, c.epoch, false))
	done := c.h.ctx.Done()
	for {
		// Nothing is handed out once the claim drains, even while the
		// channel would take it.
		select {
		case <-c.drainCh:
			c.results <- deliveryResult{r: r}
			return
		default:
		}
		select {
		case c.h.out <- msg:
		case <-c.drainCh:
			c.results <- deliveryResult{r: r}
			return
		case <-done:
			c.results <- deliveryResult{r: r}
			return
		}
		// Handed out: wait for the handler's answer, through a drain
		// too (the claim bounds it by closing stop), so that an ack given
		// while closing still reaches the commit.
		select {
		case <-msg.Acked():
			c.results <- deliveryResult{r: r, acked: true}
			return
		case <-msg.Nacked():
		case <-c.stop:
			// Given up, its handler still running: fence it off from
			// the next claim until the handler answers.
			id := c.fenceOf(r)
			f := c.h.s.fences.raise(id)
			c.results <- deliveryResult{r: r}
			cancel() // its context ends, so that it ends soon
			select {
			case <-msg.Acked():
			case <-msg.Nacked():
			case <-c.h.s.closing:
			}
			c.h.s.fences.lower(id, f)
			return
		}
		msg = msg.Copy()
		msg.SetContext(antidote.WithClaimPosition(ctx, c.partition, r.rec.Offset, c.epoch, true))
		if d := c.h.s.k.NackResendSleep; d > 0 {
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-c.drainCh:
				t.Stop()
				c.results <- deliveryResult{r: r}
				return
			case <-done:
				t.Stop()
				c.results <- deliveryResult{r: r}
				return
			}
		}
	}
}

func (c *claimRun) complete(res deliveryResult) {
	c.inflight--
	c.held -= res.r.size
	if res.acked {
		c.ack(res.r.rec.Offset)
	}
	if res.r.keyed {
		c.release(res.r.key)
	}
}

// release lets the next record waiting on key go, or frees the key.
func (c *claimRun) release(key string) {
	if c.draining {
		return
	}
	q := c.keys[key]
	if len(q.waiting) == 0 {
		delete(c.keys, key)
		return
	}
	next := q.waiting[0]
	q.waiting[0] = nil
	q.waiting = q.waiting[1:]
	c.ready = append(c.ready, next)
}

// fenceOf is what a delivery of r fences: its key, or its offset when it
// has no key to order by.
func (c *claimRun) fenceOf(r *claimRecord) fenceID {
	if r.keyed {
		return fenceID{c.topic, c.partition, r.key}
	}
	return fenceID{c.topic, c.partition, unkeyedFence(r.rec.Offset)}
}

// watch tells the claim when the fence on key comes down.
func (c *claimRun) watch(f *fence, key string) {
	select {
	case <-f.done:
	case <-c.finished:
		return
	}
	select {
	case c.unfenced <- key:
	case <-c.finished:
	}
}

// ack records offset as done and marks the lowest offset not yet done.
func (c *claimRun) ack(offset int64) {
	w := c.window[c.head:]
	i := sort.Search(len(w), func(i int) bool { return w[i].offset >= offset })
	if i == len(w) || w[i].offset != offset {
		return
	}
	w[i].done = true
	for c.head < len(c.window) && c.window[c.head].done {
		c.head++
	}
	next := c.last + 1
	if c.head < len(c.window) {
		next = c.window[c.head].offset
	}
	if c.head == len(c.window) {
		c.window, c.head = c.window[:0], 0
	} else if c.head > 1024 && c.head > len(c.window)/2 {
		n := copy(c.window, c.window[c.head:])
		c.window, c.head = c.window[:n], 0
	}
	if next > c.marked {
		c.sess.MarkOffset(c.topic, c.partition, next, "")
		c.marked = next
		if !c.h.s.sc.Consumer.Offsets.AutoCommit.Enable {
			c.sess.Commit()
		}
	}
}

func (c *claimRun) startDrain() {
	if !c.draining {
		c.draining = true
		close(c.drainCh)
	}
}

// drain waits for the messages in flight: those acked within the drain
// bound are marked, the rest abandoned (consumed again by the next owner).
func (c *claimRun) drain() {
	if c.inflight == 0 {
		return
	}
	t := time.NewTimer(c.h.s.drain)
	defer t.Stop()
	timeout := t.C
	for c.inflight > 0 {
		select {
		case r := <-c.results:
			c.complete(r)
		case <-timeout:
			c.h.s.logger.Info("Messages still in flight when the Kafka session ended; they will be consumed again", c.h.fields.Add(watermill.LogFields{
				"kafka_partition": c.partition,
				"in_flight":       c.inflight,
			}))
			close(c.stop)
			timeout = nil
		}
	}
}
