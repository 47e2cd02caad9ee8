package poison_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/antidote-mq/antidote/poison"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

func floodMsg(uuid, key, producer string) *message.Message {
	m := message.NewMessage(uuid, nil)
	if key != "" {
		m.Metadata.Set(poison.KeyIdempotencyKey, key)
	}
	if producer != "" {
		m.Metadata.Set(poison.KeyProducer, producer)
	}
	return m
}

func TestFloodDetectorThresholdAndReports(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	d, err := poison.NewFloodDetector(poison.FloodDetectorConfig{Threshold: 5, Window: time.Second, ReportInterval: 10 * time.Second, Now: clock.now})
	require.NoError(t, err)

	// Five arrivals of the same message in the window are fine; the sixth
	// is a flood and is reported at once, naming the producer.
	for i := 1; i <= 5; i++ {
		v := d.Observe(floodMsg(fmt.Sprintf("copy-%d", i), "row-1", "sweeper/host-1"))
		assert.False(t, v.Flood, "arrival %d", i)
		assert.Equal(t, i, v.Arrivals)
	}
	v := d.Observe(floodMsg("copy-6", "row-1", "sweeper/host-1"))
	assert.True(t, v.Flood)
	assert.True(t, v.Report)
	assert.Equal(t, "sweeper/host-1", v.Producer)
	assert.Equal(t, "//key:row-1", v.Key, "outside a router: no topic or handler, the idempotency key identifies it")
	assert.Equal(t, 6, v.Arrivals)
	assert.InDelta(t, 6.0, v.Rate, 0.001)
	assert.Equal(t, 1, v.Repeats)
	assert.Equal(t, 1, v.Messages)
	assert.True(t, v.Since.IsZero())

	// Within the report interval further repeats are summed, not reported.
	for i := 0; i < 9; i++ {
		clock.advance(100 * time.Millisecond)
		for _, key := range []string{"row-1", "row-2"} {
			v = d.Observe(floodMsg("x", key, "sweeper/host-1"))
			assert.False(t, v.Report)
		}
	}
	// 10.0s after the first report: the next flood arrival reports the sum.
	clock.advance(9100 * time.Millisecond)
	for i := 0; i < 6; i++ {
		v = d.Observe(floodMsg("y", "row-3", "sweeper/host-1"))
	}
	assert.True(t, v.Flood)
	assert.True(t, v.Report, "one report per interval")
	assert.Equal(t, clock.t.Add(-(9100+900)*time.Millisecond), v.Since)
	// Repeats since the first report: row-1 flooded on all 9 steps (its
	// arrivals stayed above 5 in the sliding window), row-2 from its 6th
	// arrival on (4), and this arrival of row-3.
	assert.Equal(t, 9+4+1, v.Repeats)
	assert.Equal(t, 3, v.Messages)

	// A healthy producer sending distinct messages is never a flood.
	for i := 0; i < 1000; i++ {
		assert.False(t, d.Observe(floodMsg(fmt.Sprintf("h-%d", i), "", "web/host-2")).Flood)
	}
	// Without a producer stamp the report says so.
	for i := 0; i < 6; i++ {
		v = d.Observe(floodMsg("same-uuid", "", ""))
	}
	assert.True(t, v.Flood)
	assert.Equal(t, poison.UnknownProducer, v.Producer)
	assert.Equal(t, "//uuid:same-uuid", v.Key, "no idempotency key: the UUID identifies it")
}

func TestFloodDetectorSlidingWindow(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	d, err := poison.NewFloodDetector(poison.FloodDetectorConfig{Threshold: 10, Window: time.Second, Now: clock.now})
	require.NoError(t, err)
	// Two arrivals per 100ms = 20/s: a steady stream above 10 per second.
	flooded := 0
	for i := 0; i < 50; i++ {
		for j := 0; j < 2; j++ {
			if d.Observe(floodMsg("m", "k", "p")).Flood {
				flooded++
			}
		}
		clock.advance(100 * time.Millisecond)
	}
	// The first 10 arrivals are below the threshold; from the first window
	// boundary on the estimate stays near 20.
	assert.GreaterOrEqual(t, flooded, 85)
	assert.LessOrEqual(t, flooded, 90)

	// One arrival per 200ms = 5/s: never a flood, however long it goes on.
	clock.advance(time.Minute)
	for i := 0; i < 100; i++ {
		assert.False(t, d.Observe(floodMsg("m", "slow", "p")).Flood, "arrival %d", i)
		clock.advance(200 * time.Millisecond)
	}
}

func TestFloodDetectorIsBounded(t *testing.T) {
	d, err := poison.NewFloodDetector(poison.FloodDetectorConfig{Threshold: 1, MaxKeys: 100, MaxProducers: 3})
	require.NoError(t, err)
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				p := fmt.Sprintf("p-%d", i%10)
				d.Observe(floodMsg(fmt.Sprintf("u-%d", i), fmt.Sprintf("k-%d", i%300), p))
			}
		}()
	}
	wg.Wait()
	keys, producers := d.Len()
	assert.Equal(t, 100, keys)
	assert.Equal(t, 3, producers)
}

func TestFloodDetectorConfigValidation(t *testing.T) {
	assert.ErrorContains(t, poison.FloodDetectorConfig{Threshold: -1}.Validate(), "Threshold")
	assert.ErrorContains(t, poison.FloodDetectorConfig{Window: time.Microsecond}.Validate(), "Window")
	assert.ErrorContains(t, poison.FloodDetectorConfig{ReportInterval: -1}.Validate(), "ReportInterval")
	assert.ErrorContains(t, poison.FloodDetectorConfig{MaxKeys: -1}.Validate(), "MaxKeys")
	assert.ErrorContains(t, poison.FloodDetectorConfig{MaxProducers: -1}.Validate(), "MaxProducers")
	d, err := poison.NewFloodDetector(poison.FloodDetectorConfig{})
	require.NoError(t, err)
	c := d.Config()
	assert.Equal(t, poison.DefaultFloodThreshold, c.Threshold)
	assert.Equal(t, poison.DefaultFloodWindow, c.Window)
}
