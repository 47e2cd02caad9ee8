package dlq

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/hospital"
	"github.com/antidote-mq/antidote/poison"
)

// kafkaWard is a Kafka DLQ topic. Nothing can be removed from a topic, so
// the hospital keeps its own committed offset per partition (group
// Config.KafkaGroup): the letters before it are resolved, and letters
// resolved out of order (a filtered replay) are listed in the commit's
// metadata. A letter's ID is its partition and offset.
//
// A treatment first takes the DLQ: it starts a transactional producer whose
// id names the group and the DLQ, which fences any earlier treatment of
// the same DLQ (that one stops: hospital.ErrTakenOver), then reads the
// offsets again. Each letter is then treated in one transaction: the replay
// and the offset that resolves the letter commit together or not at all.
type kafkaWard struct {
	walk
	client sarama.Client
	parts  map[int32]*kafkaPart
	txn    *adapters.KafkaTxn
	inTxn  bool
	lost   error // set once fenced: nothing more is treated
}

// kafkaPart is the hospital's state of one partition of the DLQ.
type kafkaPart struct {
	committed int64          // the first offset not resolved in order
	resolved  map[int64]bool // resolved at or after committed
	times     map[int64]int64
	lastRead  int64 // the offset of the last record read, -1 before any
	present   map[int64]bool
}

// maxResolvedMeta is below Kafka's default offset.metadata.max.bytes (4096).
const maxResolvedMeta = 3500

// kafkaIdleRead bounds the wait for the next record of a partition whose
// end is not reached: records a transactional producer aborted, and its
// markers, are never delivered to a read_committed reader.
const kafkaIdleRead = 5 * time.Second

// kafkaOffsetBits is how many low bits of a letter's ID hold its offset
// (plus one: no letter has ID 0); the partition takes the rest.
const kafkaOffsetBits = 40

func kafkaID(partition int32, offset int64) int64 {
	return int64(partition)<<kafkaOffsetBits | (offset + 1)
}

func kafkaPlace(id int64) (int32, int64) {
	return int32(id >> kafkaOffsetBits), id&(1<<kafkaOffsetBits-1) - 1
}

func newKafkaWard(h *Hospital, dlqTopic string) (*kafkaWard, error) {
	sc, err := adapters.SaramaConfig(h.cfg.Adapters)
	if err != nil {
		return nil, err
	}
	sc.Consumer.Offsets.AutoCommit.Enable = false
	client, err := sarama.NewClient(h.cfg.Adapters.Kafka.Brokers, sc)
	if err != nil {
		return nil, fmt.Errorf("%w: kafka at %s: %v", adapters.ErrUnreachable, strings.Join(h.cfg.Adapters.Kafka.Brokers, ","), err)
	}
	w := &kafkaWard{walk: walk{h: h, dlqTopic: dlqTopic}, client: client, parts: map[int32]*kafkaPart{}}
	w.fetch = w.load
	return w, nil
}

func (w *kafkaWard) close() error {
	var errs []error
	if w.txn != nil {
		errs = append(errs, w.txn.Close())
	}
	return errors.Join(append(errs, w.client.Close())...)
}

func (w *kafkaWard) load(ctx context.Context) ([]hospital.Letter, error) {
	topic := w.dlqTopic
	if err := w.client.RefreshMetadata(topic); err != nil && !errors.Is(err, sarama.ErrUnknownTopicOrPartition) {
		return nil, fmt.Errorf("dlq: metadata of %q: %w", topic, err)
	}
	parts, err := w.client.Partitions(topic)
	if errors.Is(err, sarama.ErrUnknownTopicOrPartition) || len(parts) == 0 {
		return nil, nil // no topic: nothing was ever dead-lettered
	}
	if err != nil {
		return nil, fmt.Errorf("dlq: partitions of %q: %w", topic, err)
	}
	consumer, err := sarama.NewConsumerFromClient(w.client)
	if err != nil {
		return nil, fmt.Errorf("dlq: consumer: %w", err)
	}
	defer consumer.Close()
	sort.Slice(parts, func(i, j int) bool { return parts[i] < parts[j] })
	// Every partition's end is taken before any letter is read: a replay
	// that fails again lands in the DLQ while later partitions are read,
	// and must not be read (and replayed) a second time.
	ends := make([]int64, len(parts))
	for i, p := range parts {
		if ends[i], err = w.client.GetOffset(topic, p, sarama.OffsetNewest); err != nil {
			return nil, fmt.Errorf("dlq: end of %s/%d: %w", topic, p, err)
		}
	}
	var out []hospital.Letter
	for i, p := range parts {
		letters, err := w.readPartition(ctx, consumer, p, ends[i])
		if err != nil {
			return nil, err
		}
		out = append(out, letters...)
	}
	return out, nil
}

// readPartition reads partition p's unresolved letters up to end.
func (w *kafkaWard) readPartition(ctx context.Context, consumer sarama.Consumer, p int32, end int64) ([]hospital.Letter, error) {
	topic := w.dlqTopic
	oldest, err := w.client.GetOffset(topic, p, sarama.OffsetOldest)
	if err != nil {
		return nil, fmt.Errorf("dlq: start of %s/%d: %w", topic, p, err)
	}
	committed, meta, err := w.fetchOffset(p)
	if err != nil {
		return nil, err
	}
	st := &kafkaPart{committed: max(committed, oldest), times: map[int64]int64{}, lastRead: -1, present: map[int64]bool{}}
	resolved, pin := parseResolved(meta)
	st.resolved = resolved
	w.parts[p] = st
	if committed > end || (pin.ok && pin.offset >= end) {
		w.restart(st, oldest, "its committed offset is past the partition's end")
	} else if pin.ok && pin.offset >= oldest {
		if ts, found, err := w.timeAt(ctx, consumer, p, pin.offset); err != nil {
			return nil, err
		} else if !found || ts != pin.millis {
			w.restart(st, oldest, "the record the hospital resolved last is not there any more")
		}
	}
	if st.committed >= end {
		return nil, nil
	}
	pc, err := consumer.ConsumePartition(topic, p, st.committed)
	if err != nil {
		return nil, fmt.Errorf("dlq: read %s/%d: %w", topic, p, err)
	}
	defer pc.Close()
	unmarshal := adapters.TolerantKafkaUnmarshaler{Inner: kafka.DefaultMarshaler{}, Reader: poison.LetterReader}
	idle := time.NewTimer(kafkaIdleRead)
	defer idle.Stop()
	var out []hospital.Letter
	for next := st.committed; next < end; {
		var rec *sarama.ConsumerMessage
		select {
		case rec = <-pc.Messages():
		case cerr := <-pc.Errors():
			return nil, fmt.Errorf("dlq: read %s/%d: %w", topic, p, cerr)
		case <-idle.C:
			// The rest are aborted records or transaction markers: they
			// are never delivered, and never skipped when committing.
			return out, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		idle.Reset(kafkaIdleRead)
		next = rec.Offset + 1
		st.lastRead, st.present[rec.Offset] = rec.Offset, true
		st.times[rec.Offset] = rec.Timestamp.UnixMilli()
		if st.resolved[rec.Offset] {
			continue
		}
		m, _ := unmarshal.Unmarshal(rec)
		m.SetContext(antidote.WithRecord(ctx, antidote.Record{Place: fmt.Sprintf("%d/%d", p, rec.Offset), Time: rec.Timestamp}))
		l := w.h.letter(ctx, m, topic)
		l.ID, l.IngestedAt = kafkaID(p, rec.Offset), rec.Timestamp
		out = append(out, l)
	}
	return out, nil
}

// restart starts partition st over at oldest: the topic was deleted and
// made again (its offsets restarted) since the hospital committed, so what
// it resolved then names other letters now.
func (w *kafkaWard) restart(st *kafkaPart, oldest int64, why string) {
	w.h.cfg.Logger.Info("DLQ topic made again since the hospital last treated it: reading it from its start", map[string]any{"dlq": w.dlqTopic, "why": why})
	st.committed, st.resolved = oldest, map[int64]bool{}
}

// timeAt reads the timestamp (Unix ms) of the record at offset.
func (w *kafkaWard) timeAt(ctx context.Context, consumer sarama.Consumer, p int32, offset int64) (int64, bool, error) {
	pc, err := consumer.ConsumePartition(w.dlqTopic, p, offset)
	if err != nil {
		if errors.Is(err, sarama.ErrOffsetOutOfRange) {
			return 0, false, nil
		}
		return 0, false, fmt.Errorf("dlq: read %s/%d: %w", w.dlqTopic, p, err)
	}
	defer pc.Close()
	select {
	case rec := <-pc.Messages():
		return rec.Timestamp.UnixMilli(), rec.Offset == offset, nil
	case cerr := <-pc.Errors():
		return 0, false, fmt.Errorf("dlq: read %s/%d: %w", w.dlqTopic, p, cerr)
	case <-time.After(kafkaIdleRead):
		return 0, false, nil
	case <-ctx.Done():
		return 0, false, ctx.Err()
	}
}

// fetchOffset reads the hospital group's committed offset and metadata;
// -1 when none. A plain OffsetFetch, since the group has no members.
func (w *kafkaWard) fetchOffset(p int32) (int64, string, error) {
	group, topic := w.h.cfg.KafkaGroup, w.dlqTopic
	coord, err := w.client.Coordinator(group)
	if err != nil {
		return 0, "", fmt.Errorf("dlq: coordinator of group %q: %w", group, err)
	}
	req := &sarama.OffsetFetchRequest{Version: 1, ConsumerGroup: group}
	req.AddPartition(topic, p)
	resp, err := coord.FetchOffset(req)
	if err != nil {
		return 0, "", fmt.Errorf("dlq: fetch offset of %s/%d: %w", topic, p, err)
	}
	block := resp.GetBlock(topic, p)
	if block == nil || block.Err == sarama.ErrUnknownTopicOrPartition {
		return -1, "", nil
	}
	if block.Err != sarama.ErrNoError {
		return 0, "", fmt.Errorf("dlq: fetch offset of %s/%d: %w", topic, p, block.Err)
	}
	return block.Offset, block.Metadata, nil
}

// take fences every other treatment of the DLQ, then reads its offsets
// again: what another treatment committed before it was fenced stays
// resolved.
func (w *kafkaWard) take() error {
	id := "antidote-hospital:" + w.h.cfg.KafkaGroup + ":" + w.dlqTopic
	txn, err := adapters.NewKafkaTxn(w.h.cfg.Adapters, id)
	if err != nil {
		return err
	}
	if err := txn.EnsureTopic(w.h.cfg.KafkaAuditTopic); err != nil {
		_ = txn.Close()
		return err
	}
	for p, st := range w.parts {
		committed, meta, err := w.fetchOffset(p)
		if err != nil {
			_ = txn.Close()
			return err
		}
		resolved, _ := parseResolved(meta)
		if committed > st.committed {
			st.committed = committed
		}
		maps.Copy(st.resolved, resolved)
	}
	w.txn = txn
	return nil
}

// Treat implements hospital.Ward.
func (w *kafkaWard) Treat(ctx context.Context, id int64, to hospital.State, actor, detail string, do func(hospital.Letter) error) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	l, err := w.taken(id)
	if err != nil {
		return err
	}
	if w.lost != nil {
		return w.lost
	}
	if w.txn == nil {
		if err := w.take(); err != nil {
			return err
		}
	}
	p, off := kafkaPlace(id)
	st := w.parts[p]
	if off < st.committed || st.resolved[off] {
		l.State = to // another treatment resolved it before this one took the DLQ
		return fmt.Errorf("dlq: letter %s (%s/%d/%d) was resolved by another treatment: %w", l.UUID, w.dlqTopic, p, off, hospital.ErrNotDead)
	}
	next, resolved, err := w.inTransaction(*l, p, off, to, actor, detail, do)
	if err != nil {
		return w.failed(errors.Join(err, w.txn.Abort()))
	}
	st.committed, st.resolved = next, resolved
	l.State = to
	w.logTreated(*l, to, actor, detail)
	return nil
}

// inTransaction treats letter l at p/off in one transaction: do (its
// replay), its audit record, the offset that resolves it.
func (w *kafkaWard) inTransaction(l hospital.Letter, p int32, off int64, to hospital.State, actor, detail string, do func(hospital.Letter) error) (int64, map[int64]bool, error) {
	st := w.parts[p]
	if err := w.txn.Begin(); err != nil {
		return 0, nil, err
	}
	if do != nil {
		w.inTxn = true
		err := do(l)
		w.inTxn = false
		if err != nil {
			return 0, nil, err
		}
	}
	// The treatment's record, in its transaction: the audit of a Kafka DLQ
	// (and a transaction Sarama commits: it drops one holding offsets only).
	if err := w.txn.Publish(w.h.cfg.KafkaAuditTopic, auditRecord(l, w.dlqTopic, p, off, to, actor, detail, w.h.cfg.Now())); err != nil {
		return 0, nil, fmt.Errorf("dlq: record the treatment of letter %s in %s: %w", l.UUID, w.h.cfg.KafkaAuditTopic, err)
	}
	resolved := maps.Clone(st.resolved)
	resolved[off] = true
	next := st.committed
	// A gap between records read (a transaction marker, an aborted record)
	// is passed over; nothing after the last record read ever is.
	for next <= st.lastRead && (resolved[next] || !st.present[next]) {
		delete(resolved, next)
		next++
	}
	meta := formatResolved(resolved, pinOf(st, next, resolved))
	if len(meta) > maxResolvedMeta {
		return 0, nil, fmt.Errorf("dlq: too many letters of %s/%d resolved out of order to record (%d bytes); replay or purge without a filter, oldest first, to move the offset", w.dlqTopic, p, len(meta))
	}
	if err := w.txn.Commit(w.h.cfg.KafkaGroup, w.dlqTopic, p, next, meta); err != nil {
		return 0, nil, fmt.Errorf("dlq: commit the treatment of letter %s: %w", l.UUID, err)
	}
	return next, resolved, nil
}

// failed makes an error that left the transactional producer unusable
// (fenced by another treatment, or fatal) the ward's end: nothing more is
// treated through it.
func (w *kafkaWard) failed(err error) error {
	if errors.Is(err, adapters.ErrFenced) {
		w.lost = fmt.Errorf("dlq: another treatment of %s took it over (%v): this one stops, what it treated stays treated: %w", w.dlqTopic, err, hospital.ErrTakenOver)
		return w.lost
	}
	if w.txn.Broken() || !w.txn.Ready() {
		w.lost = fmt.Errorf("dlq: the transactions treating %s failed for good (%v): this one stops, what it treated stays treated: %w", w.dlqTopic, err, hospital.ErrTakenOver)
		return w.lost
	}
	return err
}

// publisher publishes into the treatment's transaction.
func (w *kafkaWard) publisher() message.Publisher { return kafkaTxnPublisher{w} }

type kafkaTxnPublisher struct{ w *kafkaWard }

func (p kafkaTxnPublisher) Publish(topic string, msgs ...*message.Message) error {
	if !p.w.inTxn {
		return errors.New("dlq: a Kafka DLQ's replays are published within the treatment of their letter only")
	}
	return p.w.txn.Publish(topic, msgs...)
}

func (kafkaTxnPublisher) Close() error { return nil }

// pin names the record the hospital resolved last, so that a topic made
// again (its offsets restarted) is told from the one it treated.
type pin struct {
	offset, millis int64
	ok             bool
}

// pinOf is the newest resolved record read (below next, or resolved).
func pinOf(st *kafkaPart, next int64, resolved map[int64]bool) pin {
	best := pin{}
	consider := func(o int64) {
		if ms, ok := st.times[o]; ok && (!best.ok || o > best.offset) {
			best = pin{offset: o, millis: ms, ok: true}
		}
	}
	for o := range resolved {
		consider(o)
	}
	for o := next - 1; o >= st.committed-1 && o >= 0 && !best.ok; o-- {
		consider(o)
	}
	return best
}

// The commit metadata: "pin:<offset>@<unix ms>|r:12,15-17".
func parseResolved(meta string) (map[int64]bool, pin) {
	out := map[int64]bool{}
	var pn pin
	for _, part := range strings.Split(meta, "|") {
		if rest, ok := strings.CutPrefix(part, "pin:"); ok {
			o, ms, _ := strings.Cut(rest, "@")
			a, err1 := strconv.ParseInt(o, 10, 64)
			b, err2 := strconv.ParseInt(ms, 10, 64)
			if err1 == nil && err2 == nil {
				pn = pin{offset: a, millis: b, ok: true}
			}
			continue
		}
		rest, ok := strings.CutPrefix(part, "r:")
		if !ok || rest == "" {
			continue
		}
		for _, r := range strings.Split(rest, ",") {
			lo, hi, isRange := strings.Cut(r, "-")
			a, err := strconv.ParseInt(lo, 10, 64)
			if err != nil {
				continue
			}
			b := a
			if isRange {
				if b, err = strconv.ParseInt(hi, 10, 64); err != nil {
					continue
				}
			}
			for o := a; o <= b && o-a < 1_000_000; o++ {
				out[o] = true
			}
		}
	}
	return out, pn
}

func formatResolved(resolved map[int64]bool, pn pin) string {
	var b strings.Builder
	if pn.ok {
		fmt.Fprintf(&b, "pin:%d@%d", pn.offset, pn.millis)
	}
	if len(resolved) == 0 {
		return b.String()
	}
	offs := make([]int64, 0, len(resolved))
	for o := range resolved {
		offs = append(offs, o)
	}
	sort.Slice(offs, func(i, j int) bool { return offs[i] < offs[j] })
	if b.Len() > 0 {
		b.WriteByte('|')
	}
	b.WriteString("r:")
	for i := 0; i < len(offs); {
		j := i
		for j+1 < len(offs) && offs[j+1] == offs[j]+1 {
			j++
		}
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatInt(offs[i], 10))
		if j > i {
			b.WriteByte('-')
			b.WriteString(strconv.FormatInt(offs[j], 10))
		}
		i = j + 1
	}
	return b.String()
}

// auditRecord is one treatment of a Kafka DLQ's letter, as recorded in the
// audit topic.
func auditRecord(l hospital.Letter, dlqTopic string, partition int32, offset int64, to hospital.State, actor, detail string, at time.Time) *message.Message {
	b, _ := json.Marshal(map[string]any{
		"at": at.UTC(), "actor": actor, "action": string(to), "dlq_topic": dlqTopic, "partition": partition, "offset": offset,
		"uuid": l.UUID, "fingerprint": l.Fingerprint.ID, "detail": detail,
	})
	return message.NewMessage(watermill.NewUUID(), b)
}
