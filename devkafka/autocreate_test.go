package devkafka_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/antidote-mq/antidote/devkafka"
)

// metadata sends a raw metadata request for topics (nil: every topic).
func metadata(t *testing.T, cl *kgo.Client, auto bool, topics ...string) *kmsg.MetadataResponse {
	t.Helper()
	req := kmsg.NewPtrMetadataRequest()
	req.AllowAutoTopicCreation = auto
	if topics == nil {
		req.Topics = nil
	} else {
		req.Topics = []kmsg.MetadataRequestTopic{}
	}
	for _, topic := range topics {
		rt := kmsg.NewMetadataRequestTopic()
		rt.Topic = kmsg.StringPtr(topic)
		req.Topics = append(req.Topics, rt)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// kgoName is a topic name of a response, "" for none.
func kgoName(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// Auto-creation creates what Kafka would and nothing else: legal names
// with the default partition count, not names Kafka refuses (kfake's own
// auto-creation took any), and not when the request does not ask. Many
// clients asking for one new topic at once get the same topic.
func TestAutoCreateNames(t *testing.T) {
	b, err := devkafka.Start(devkafka.Config{Partitions: 2, DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	cl, err := kgo.NewClient(kgo.SeedBrokers(b.Addrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()

	illegal := []string{"", ".", "..", "a/b", "../up", "spa ce", "ünï", strings.Repeat("x", 250)}
	legal := []string{"ok", "a.b_c-D9", strings.Repeat("y", 249)}
	resp := metadata(t, cl, true, append(append([]string{}, illegal...), legal...)...)
	if len(resp.Topics) != len(illegal)+len(legal) {
		t.Fatalf("%d topics answered, asked for %d", len(resp.Topics), len(illegal)+len(legal))
	}
	for _, rt := range resp.Topics {
		name := kgoName(rt.Topic) // kfake answers "" without a name
		isLegal := false
		for _, l := range legal {
			isLegal = isLegal || l == name
		}
		switch {
		case isLegal && (rt.ErrorCode != 0 || len(rt.Partitions) != 2):
			t.Errorf("legal topic %q: error %v, %d partitions", name, kerr.ErrorForCode(rt.ErrorCode), len(rt.Partitions))
		case !isLegal && rt.ErrorCode != kerr.UnknownTopicOrPartition.Code:
			t.Errorf("illegal topic %q: error %v, want UNKNOWN_TOPIC_OR_PARTITION", name, kerr.ErrorForCode(rt.ErrorCode))
		}
	}
	if rt := metadata(t, cl, false, "not-asked").Topics[0]; rt.ErrorCode != kerr.UnknownTopicOrPartition.Code {
		t.Errorf("a request that does not ask for auto-creation: %v", kerr.ErrorForCode(rt.ErrorCode))
	}
	all := map[string]bool{}
	for _, rt := range metadata(t, cl, false).Topics {
		all[kgoName(rt.Topic)] = true
	}
	if len(all) != len(legal) {
		t.Errorf("topics %v, want only %v", all, legal)
	}

	var wg sync.WaitGroup
	ids := make([][16]byte, 8)
	for i := range ids {
		wg.Go(func() {
			c, err := kgo.NewClient(kgo.SeedBrokers(b.Addrs()...))
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			rt := metadata(t, c, true, "raced").Topics[0]
			if rt.ErrorCode != 0 {
				t.Errorf("raced: %v", kerr.ErrorForCode(rt.ErrorCode))
			}
			ids[i] = rt.TopicID
		})
	}
	wg.Wait()
	for _, id := range ids {
		if id != ids[0] {
			t.Fatalf("concurrent auto-creations of one topic gave topic IDs %v", ids)
		}
	}
}
