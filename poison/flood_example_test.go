package poison_test

import (
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/poison"
)

// The detector names the producer of a message that keeps coming back.
func ExampleNewFloodDetector() {
	d, err := poison.NewFloodDetector(poison.FloodDetectorConfig{Threshold: 2, Window: time.Second})
	if err != nil {
		panic(err)
	}
	for i := 0; i < 4; i++ {
		msg := message.NewMessage(fmt.Sprint(i), nil)          // re-sent as new messages...
		msg.Metadata.Set(poison.KeyIdempotencyKey, "outbox-7") // ...of the same row
		msg.Metadata.Set(poison.KeyProducer, "sweeper/host-1")
		v := d.Observe(msg)
		fmt.Println(v.Arrivals, v.Flood, v.Report, v.Producer)
	}
	// Output:
	// 1 false false sweeper/host-1
	// 2 false false sweeper/host-1
	// 3 true true sweeper/host-1
	// 4 true false sweeper/host-1
}
