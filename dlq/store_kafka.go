package dlq

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/adapters"
)

// kafkaStore reads a DLQ topic from the hospital's committed offset to the
// end. Resolving moves that offset past a contiguous run of resolved
// letters; letters resolved out of order are kept in the commit metadata
// ("r:12,15-17"), since Kafka cannot delete single records.
type kafkaStore struct {
	client sarama.Client
	group  string
}

// maxResolvedMeta is below Kafka's default offset.metadata.max.bytes (4096).
const maxResolvedMeta = 3500

func newKafkaStore(cfg Config) (*kafkaStore, error) {
	sc, err := adapters.SaramaConfig(cfg.Adapters)
	if err != nil {
		return nil, err
	}
	sc.Consumer.Offsets.AutoCommit.Enable = false
	client, err := sarama.NewClient(cfg.Adapters.Kafka.Brokers, sc)
	if err != nil {
		return nil, fmt.Errorf("%w: kafka at %s: %v", adapters.ErrUnreachable, strings.Join(cfg.Adapters.Kafka.Brokers, ","), err)
	}
	return &kafkaStore{client: client, group: cfg.KafkaGroup}, nil
}

func (s *kafkaStore) close() error { return s.client.Close() }

func (s *kafkaStore) visit(ctx context.Context, dlqTopic string, fn func(*message.Message) (bool, error)) error {
	if err := s.client.RefreshMetadata(dlqTopic); err != nil && !errors.Is(err, sarama.ErrUnknownTopicOrPartition) {
		return fmt.Errorf("dlq: metadata of %q: %w", dlqTopic, err)
	}
	parts, err := s.client.Partitions(dlqTopic)
	if errors.Is(err, sarama.ErrUnknownTopicOrPartition) || len(parts) == 0 {
		return nil // no topic: nothing was ever dead-lettered
	}
	if err != nil {
		return fmt.Errorf("dlq: partitions of %q: %w", dlqTopic, err)
	}
	consumer, err := sarama.NewConsumerFromClient(s.client)
	if err != nil {
		return fmt.Errorf("dlq: consumer: %w", err)
	}
	defer consumer.Close()
	unmarshal := adapters.TolerantKafkaUnmarshaler{Inner: kafka.DefaultMarshaler{}}
	sort.Slice(parts, func(i, j int) bool { return parts[i] < parts[j] })
	// Every partition's end is taken before any letter is visited: a replay
	// that fails again lands in the DLQ while later partitions are walked,
	// and must not be walked (and replayed) a second time.
	ends := make([]int64, len(parts))
	for i, p := range parts {
		if ends[i], err = s.client.GetOffset(dlqTopic, p, sarama.OffsetNewest); err != nil {
			return fmt.Errorf("dlq: end of %s/%d: %w", dlqTopic, p, err)
		}
	}
	for i, p := range parts {
		stop, err := s.visitPartition(ctx, consumer, unmarshal, dlqTopic, p, ends[i], fn)
		if err != nil || stop {
			return err
		}
	}
	return nil
}

func (s *kafkaStore) visitPartition(ctx context.Context, consumer sarama.Consumer, unmarshal adapters.TolerantKafkaUnmarshaler,
	topic string, p int32, end int64, fn func(*message.Message) (bool, error)) (stop bool, err error) {
	oldest, err := s.client.GetOffset(topic, p, sarama.OffsetOldest)
	if err != nil {
		return false, fmt.Errorf("dlq: start of %s/%d: %w", topic, p, err)
	}
	start, meta, err := s.fetchOffset(topic, p)
	if err != nil {
		return false, err
	}
	if start < oldest {
		start = oldest // never committed, or the log was truncated
	}
	resolved := parseResolved(meta)
	if start >= end {
		return false, nil
	}
	pc, err := consumer.ConsumePartition(topic, p, start)
	if err != nil {
		return false, fmt.Errorf("dlq: read %s/%d: %w", topic, p, err)
	}
	defer pc.Close()
	changed := false
	defer func() {
		if changed {
			if cerr := s.commitResolved(topic, p, start, resolved); cerr != nil && err == nil {
				err = cerr
			}
		}
	}()
	for next := start; next < end; {
		var rec *sarama.ConsumerMessage
		select {
		case rec = <-pc.Messages():
		case cerr := <-pc.Errors():
			return false, fmt.Errorf("dlq: read %s/%d: %w", topic, p, cerr)
		case <-ctx.Done():
			return false, ctx.Err()
		}
		next = rec.Offset + 1
		if resolved[rec.Offset] {
			continue
		}
		m, _ := unmarshal.Unmarshal(rec)
		res, ferr := fn(m)
		if errors.Is(ferr, errStop) {
			return true, nil
		}
		if ferr != nil {
			return false, ferr
		}
		if res {
			resolved[rec.Offset] = true
			changed = true
		}
	}
	return false, nil
}

// fetchOffset reads the hospital group's committed offset and metadata;
// -1 when none. A plain OffsetFetch, since the group has no members.
func (s *kafkaStore) fetchOffset(topic string, p int32) (int64, string, error) {
	coord, err := s.client.Coordinator(s.group)
	if err != nil {
		return 0, "", fmt.Errorf("dlq: coordinator of group %q: %w", s.group, err)
	}
	req := &sarama.OffsetFetchRequest{Version: 1, ConsumerGroup: s.group}
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

// commitResolved moves the committed offset past the resolved prefix and
// keeps the rest in the metadata.
func (s *kafkaStore) commitResolved(topic string, p int32, start int64, resolved map[int64]bool) error {
	next := start
	for resolved[next] {
		delete(resolved, next)
		next++
	}
	for o := range resolved {
		if o < next {
			delete(resolved, o)
		}
	}
	meta := formatResolved(resolved)
	if len(meta) > maxResolvedMeta {
		return fmt.Errorf("dlq: too many letters resolved out of order to record (%d bytes); replay or purge without a filter to move the offset", len(meta))
	}
	coord, err := s.client.Coordinator(s.group)
	if err != nil {
		return fmt.Errorf("dlq: coordinator of group %q: %w", s.group, err)
	}
	req := &sarama.OffsetCommitRequest{Version: 2, ConsumerGroup: s.group, ConsumerGroupGeneration: -1, RetentionTime: -1}
	req.AddBlock(topic, p, next, 0, meta)
	resp, err := coord.CommitOffset(req)
	if err != nil {
		return fmt.Errorf("dlq: commit hospital offset of %s/%d: %w", topic, p, err)
	}
	if kerr := resp.Errors[topic][p]; kerr != sarama.ErrNoError {
		return fmt.Errorf("dlq: commit hospital offset of %s/%d: %w", topic, p, kerr)
	}
	return nil
}

func parseResolved(meta string) map[int64]bool {
	out := map[int64]bool{}
	rest, ok := strings.CutPrefix(meta, "r:")
	if !ok || rest == "" {
		return out
	}
	for _, part := range strings.Split(rest, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
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
	return out
}

func formatResolved(resolved map[int64]bool) string {
	if len(resolved) == 0 {
		return ""
	}
	offs := make([]int64, 0, len(resolved))
	for o := range resolved {
		offs = append(offs, o)
	}
	sort.Slice(offs, func(i, j int) bool { return offs[i] < offs[j] })
	var b strings.Builder
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
