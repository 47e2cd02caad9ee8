package idempotency_test

import (
	"errors"
	"os"
	"strconv"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/antidote-mq/antidote/idempotency"
	"github.com/antidote-mq/antidote/poison"
)

func TestKeyFuncs(t *testing.T) {
	msg := message.NewMessage("uuid-1", []byte(`{"order":{"id":"o-7","n":42,"items":[{"sku":"x"},{"sku":"y"}],"empty":"","nul":null,"obj":{}}}`))
	msg.Metadata.Set(idempotency.MetadataKey, "from-header")
	bare := message.NewMessage("uuid-2", []byte(`not json`))

	k, err := idempotency.FromMetadata("")(msg)
	require.NoError(t, err)
	assert.Equal(t, "from-header", k)
	_, err = idempotency.FromMetadata("")(bare)
	assert.ErrorIs(t, err, idempotency.ErrNoKey)

	k, err = idempotency.FromUUID()(bare)
	require.NoError(t, err)
	assert.Equal(t, "uuid-2", k)
	_, err = idempotency.FromUUID()(message.NewMessage("", nil))
	assert.ErrorIs(t, err, idempotency.ErrNoKey)

	for path, want := range map[string]string{"order.id": "o-7", "order.n": "42", "order.items.1.sku": "y"} {
		k, err := idempotency.FromJSONField(path)(msg)
		require.NoError(t, err, path)
		assert.Equal(t, want, k, path)
	}
	for _, path := range []string{"order.missing", "order.empty", "order.nul", "order.items.5.sku", "order.id.deeper"} {
		_, err := idempotency.FromJSONField(path)(msg)
		assert.ErrorIs(t, err, idempotency.ErrNoKey, path)
	}
	_, err = idempotency.FromJSONField("order.obj")(msg)
	assert.Error(t, err)
	assert.NotErrorIs(t, err, idempotency.ErrNoKey, "an object is a malformed key, not a missing one")
	_, err = idempotency.FromJSONField("order.id")(bare)
	assert.Error(t, err)
	assert.NotErrorIs(t, err, idempotency.ErrNoKey, "a payload that is not JSON is malformed")
	assert.Equal(t, poison.ClassPermanent, poison.DefaultClassifier().Classify(err), "and permanent: it is a JSON syntax error")
	assert.Panics(t, func() { idempotency.FromJSONField("") })

	k, err = idempotency.DefaultKey()(msg)
	require.NoError(t, err)
	assert.Equal(t, "from-header", k, "the header wins")
	k, err = idempotency.DefaultKey()(bare)
	require.NoError(t, err)
	assert.Equal(t, "uuid-2", k, "then the UUID")

	broken := errors.New("broken")
	_, err = idempotency.FirstOf(
		func(*message.Message) (string, error) { return "", broken },
		idempotency.FromUUID(),
	)(bare)
	assert.ErrorIs(t, err, broken, "only ErrNoKey falls through to the next function")
	_, err = idempotency.FirstOf(idempotency.FromMetadata("x"), idempotency.FromJSONField("a"))(message.NewMessage("u", []byte(`{}`)))
	assert.ErrorIs(t, err, idempotency.ErrNoKey)
}

type recordingPublisher struct {
	topics []string
	msgs   []*message.Message
}

func (p *recordingPublisher) Publish(topic string, msgs ...*message.Message) error {
	for range msgs {
		p.topics = append(p.topics, topic)
	}
	p.msgs = append(p.msgs, msgs...)
	return nil
}
func (p *recordingPublisher) Close() error { return nil }

func TestPublisherStampsKeyAndProducer(t *testing.T) {
	rec := &recordingPublisher{}
	pub, err := idempotency.NewPublisher(rec, idempotency.ProducerConfig{
		Service:  "billing",
		Instance: "host-1234",
		Key:      idempotency.FromJSONField("invoice_id"),
	})
	require.NoError(t, err)
	assert.Equal(t, "billing/host-1234", pub.Producer())

	first := message.NewMessage("u1", []byte(`{"invoice_id":"inv-9"}`))
	resent := message.NewMessage("u2", []byte(`{"invoice_id":"inv-9"}`)) // the same operation, a new message
	explicit := message.NewMessage("u3", []byte(`{"invoice_id":"inv-10"}`))
	explicit.Metadata.Set(idempotency.MetadataKey, "caller-chose")
	nokey := message.NewMessage("u4", []byte(`{}`))
	require.NoError(t, pub.Publish("invoices", first, resent, explicit, nokey))

	require.Len(t, rec.msgs, 4)
	assert.Equal(t, "inv-9", rec.msgs[0].Metadata.Get(idempotency.MetadataKey))
	assert.Equal(t, "inv-9", rec.msgs[1].Metadata.Get(idempotency.MetadataKey), "a re-send carries the same key")
	assert.Equal(t, "caller-chose", rec.msgs[2].Metadata.Get(idempotency.MetadataKey), "an explicit key wins")
	assert.Empty(t, rec.msgs[3].Metadata.Get(idempotency.MetadataKey), "ErrNoKey leaves the message without a key")
	for _, m := range rec.msgs {
		assert.Equal(t, "billing/host-1234", m.Metadata.Get(poison.KeyProducer))
	}

	// A key function that fails publishes nothing.
	rec2 := &recordingPublisher{}
	pub2, err := idempotency.NewPublisher(rec2, idempotency.ProducerConfig{Service: "billing", Key: idempotency.FromJSONField("invoice_id"), OverwriteKey: true})
	require.NoError(t, err)
	err = pub2.Publish("invoices", message.NewMessage("ok", []byte(`{"invoice_id":1}`)), message.NewMessage("bad", []byte(`{`)))
	assert.ErrorContains(t, err, "message bad")
	assert.Empty(t, rec2.msgs)

	// The default instance is host-pid.
	host, _ := os.Hostname()
	assert.Equal(t, "billing/"+host+"-"+strconv.Itoa(os.Getpid()), pub2.Producer())

	_, err = idempotency.NewPublisher(rec, idempotency.ProducerConfig{})
	assert.ErrorContains(t, err, "Service")
	_, err = idempotency.NewPublisher(rec, idempotency.ProducerConfig{Service: "a/b"})
	assert.ErrorContains(t, err, "'/'")
	_, err = idempotency.NewPublisher(nil, idempotency.ProducerConfig{Service: "a"})
	assert.Error(t, err)
}
