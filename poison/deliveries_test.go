package poison_test

import (
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/antidote-mq/antidote/internal/storetest"
	"github.com/antidote-mq/antidote/poison"
)

func TestDeliveryKey(t *testing.T) {
	kafka := poison.Origin{Topic: "orders", Handler: "h", ConsumerGroup: "g", Partition: 3, Offset: 42, HasOffset: true}
	assert.Equal(t, "kafka/orders/3/42/g/h", poison.DeliveryKeyOf(kafka, "ignored-uuid"),
		"Kafka records are keyed by coordinates, not by UUID")

	other := poison.Origin{Topic: "orders", Handler: "h"}
	assert.Equal(t, "uuid/orders//h/u-1", poison.DeliveryKeyOf(other, "u-1"))

	// A '/' inside a component cannot make two targets share a key.
	a := poison.DeliveryKeyOf(poison.Origin{Topic: "a/b", Handler: "c"}, "u")
	b := poison.DeliveryKeyOf(poison.Origin{Topic: "a", Handler: "b/c"}, "u")
	assert.NotEqual(t, a, b)

	// Handlers and groups are part of the key.
	assert.NotEqual(t,
		poison.DeliveryKeyOf(poison.Origin{Topic: "t", Handler: "h1"}, "u"),
		poison.DeliveryKeyOf(poison.Origin{Topic: "t", Handler: "h2"}, "u"))
	k1, k2 := kafka, kafka
	k2.ConsumerGroup = "other"
	assert.NotEqual(t, poison.DeliveryKeyOf(k1, ""), poison.DeliveryKeyOf(k2, ""))

	// Outside a router (no topic, handler or offset in the context) the UUID
	// still identifies the message.
	msg := message.NewMessage("uuid-7", nil)
	assert.Equal(t, "uuid////uuid-7", poison.DeliveryKey(msg))
}

func TestMemoryDeliveryTracker(t *testing.T) {
	storetest.DeliveryTracker(t, func(t *testing.T) poison.DeliveryTracker {
		tr := poison.MustNewMemoryDeliveryTracker(poison.MemoryDeliveryTrackerConfig{})
		t.Cleanup(func() { _ = tr.Close() })
		return tr
	})
}

func TestMemoryDeliveryTrackerConfigValidate(t *testing.T) {
	assert.NoError(t, poison.MemoryDeliveryTrackerConfig{}.Validate())
	err := poison.MemoryDeliveryTrackerConfig{MaxKeys: -1}.Validate()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "MaxKeys")
	err = poison.MemoryDeliveryTrackerConfig{TTL: -time.Second}.Validate()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "TTL")
	assert.Panics(t, func() { poison.MustNewMemoryDeliveryTracker(poison.MemoryDeliveryTrackerConfig{MaxKeys: -1}) })
}
