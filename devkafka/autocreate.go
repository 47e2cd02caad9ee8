package devkafka

import (
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/antidote-mq/antidote/adapters"
)

// autoCreate creates the topics a metadata request names and asks to have
// created, through kfake's CreateTopic, before kfake answers the request.
//
// kfake's own auto-creation (AllowAutoTopicCreation, 03_metadata.go
// handleMetadata) makes the topic in memory only: it never calls
// persistTopicsState, so topics.json lists the topic only once something
// else rewrites it (a CreateTopics, a clean Close). Its records, though, go
// to partition files on disk as they come. After a SIGKILL the next broker
// does not know the topic (loadTopics reads topics.json, and loadPartitions
// reads only the partitions of topics listed there), the next auto-create
// makes it empty, and its first batch is appended to the old segment file
// while being indexed as if at position 0 (persistBatchToSegment trusts the
// in-memory size, 0): acknowledged records are gone and fetches return
// wrong bytes ("invalid byteslice length" in Sarama). CreateTopic runs the
// CreateTopics path, which saves topics.json (written to a temporary file,
// fsynced, renamed) before it returns, so a topic is on disk before any
// record can be produced to it. Start therefore does not enable kfake's
// auto-creation: a name this function does not create is answered
// UNKNOWN_TOPIC_OR_PARTITION, never created in memory only.
//
// kfake runs a control function in a goroutine and, until it returns,
// serves only admin calls such as CreateTopic (cluster.go tryControlKey),
// so calling CreateTopic here does not deadlock, and no other request runs
// between the creation and this request's answer.
//
// Known gap: kfake runs controls before its SASL check, so with SASL a
// client that never authenticated can still have a topic created (empty)
// by a metadata request before its connection is refused.
func autoCreate(c *kfake.Cluster) func(kmsg.Request) (kmsg.Response, error, bool) {
	return func(kreq kmsg.Request) (kmsg.Response, error, bool) {
		req, ok := kreq.(*kmsg.MetadataRequest)
		// Like kfake, only a request that asks (v4+) creates topics.
		if !ok || !req.AllowAutoTopicCreation {
			return nil, nil, false
		}
		var noID [16]byte
		for _, rt := range req.Topics {
			// kfake resolves a topic given by ID by its ID alone, and
			// checks no name: a broker that made "" or "a/b" would keep
			// them for good.
			if rt.Topic == nil || rt.TopicID != noID || adapters.CheckKafkaTopic(*rt.Topic) != nil {
				continue
			}
			// The usual answer is kerr.TopicAlreadyExists, and it costs
			// no write. Any other refusal (a name that collides with
			// another's "." or "_") is left for kfake to answer.
			_ = c.CreateTopic(*rt.Topic, 0, nil)
		}
		return nil, nil, false // kfake answers, the topics now made
	}
}
