package dlq_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/dlq"
	"github.com/antidote-mq/antidote/hospital"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/internal/testenv/brokers"
)

// A Kafka DLQ topic deleted and made again (the usual way to empty one)
// restarts its offsets: the hospital's committed offset and the letters it
// resolved out of order name the old topic's records, so the new topic's
// letters are read from its start, not hidden behind the old offset.
func TestKafkaDLQMadeAgainIsReadFromItsStart(t *testing.T) {
	testenv.Integration(t)
	cfg := brokers.Config(t, adapters.KindKafka, brokers.KafkaCluster(1))
	b := brokers.Open(t, cfg)
	topic := brokers.Topic("again_")
	sc := sarama.NewConfig()
	sc.Version = sarama.V2_1_0_0
	admin, err := sarama.NewClusterAdmin(cfg.Kafka.Brokers, sc)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	ctx := context.Background()
	h, err := dlq.Open(ctx, dlq.Config{Adapters: b.Config, ReplayRate: 1000})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	count := func() int {
		l, err := h.List(ctx, topic, hospital.LetterQuery{})
		if err != nil {
			t.Fatal(err)
		}
		return len(l)
	}
	if err := b.Publisher.Publish(topic+".dlq", fateLetters(topic, 6)...); err != nil {
		t.Fatal(err)
	}
	eventually(t, "6 letters", func() (bool, string) { n := count(); return n == 6, fmt.Sprint(n) })
	// Purge all but the first: the offset stays at 0 and the others are
	// recorded as resolved out of order.
	letters, _ := h.List(ctx, topic, hospital.LetterQuery{})
	var rest []string
	for _, l := range letters[1:] {
		rest = append(rest, l.UUID)
	}
	if res, err := h.Purge(ctx, topic, hospital.LetterQuery{UUIDs: rest}, false); err != nil || res.Purged != 5 {
		t.Fatalf("purge 5: %+v %v", res, err)
	}
	if n := count(); n != 1 {
		t.Fatalf("%d letters after purging 5 of 6", n)
	}
	// What the hospital committed for the old topic; Kafka drops it with
	// the topic, but a commit can outlive it (an offset restored from a
	// backup, a topic made again before the old offsets are cleaned up,
	// mirrored groups): put it back on the new topic as such.
	client, err := sarama.NewClient(cfg.Kafka.Brokers, sc)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	coord, err := client.Coordinator("antidote-hospital")
	if err != nil {
		t.Fatal(err)
	}
	fetch := &sarama.OffsetFetchRequest{Version: 1, ConsumerGroup: "antidote-hospital"}
	fetch.AddPartition(topic+".dlq", 0)
	resp, err := coord.FetchOffset(fetch)
	if err != nil || resp.GetBlock(topic+".dlq", 0) == nil {
		t.Fatalf("fetch the hospital's offset: %v", err)
	}
	old := resp.GetBlock(topic+".dlq", 0)
	if !strings.Contains(old.Metadata, "r:") {
		t.Fatalf("the hospital's commit %d %q records no letter resolved out of order", old.Offset, old.Metadata)
	}
	if err := admin.DeleteTopic(topic + ".dlq"); err != nil {
		t.Fatal(err)
	}
	testenv.EventuallyNil(t, 30*time.Second, func() error {
		return admin.CreateTopic(topic+".dlq", &sarama.TopicDetail{NumPartitions: 1, ReplicationFactor: 1}, false)
	})
	for _, n := range []int{3, 5} {
		// 3: the record resolved last is past the new end; then 8: it is
		// there, another record.
		if err := b.Publisher.Publish(topic+".dlq", fateLetters(topic, n)...); err != nil {
			t.Fatal(err)
		}
		commit := &sarama.OffsetCommitRequest{Version: 2, ConsumerGroup: "antidote-hospital", ConsumerGroupGeneration: -1, RetentionTime: -1}
		commit.AddBlock(topic+".dlq", 0, old.Offset, 0, old.Metadata)
		if _, err := coord.CommitOffset(commit); err != nil {
			t.Fatal(err)
		}
		want := map[int]int{3: 3, 5: 8}[n]
		eventually(t, fmt.Sprintf("the new topic's %d letters", want), func() (bool, string) { n := count(); return n == want, fmt.Sprint(n) })
	}
	if res, err := h.Purge(ctx, topic, hospital.LetterQuery{}, false); err != nil || res.Purged != 8 {
		t.Fatalf("purge the new letters: %+v %v", res, err)
	}
	if n := count(); n != 0 {
		t.Errorf("%d letters after purging the new topic's 8", n)
	}
}
