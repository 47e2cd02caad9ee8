package middleware

import (
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/antidote-mq/antidote/poison"
)

// BenchmarkCrashLoopGuardHappyPath measures what the crash-loop guard adds to a
// healthy Kafka message (a no-op handler, offsets in order, one partition):
// the cheap path (default detector: one block lease per DefaultOffsetBlock
// messages) against AlwaysCount (an Incr and a Forget per message), per
// tracker. "none" is the handler without the guard.
//
//	go test -run '^$' -bench DeliveriesHappyPath ./middleware/
func BenchmarkCrashLoopGuardHappyPath(b *testing.B) {
	msg := message.NewMessage("bench", []byte("{}"))
	noop := func(*message.Message) ([]*message.Message, error) { return nil, nil }

	b.Run("none", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if _, err := noop(msg); err != nil {
				b.Fatal(err)
			}
		}
	})

	trackers := []struct {
		name string
		open func(testing.TB) poison.DeliveryTracker
	}{
		{"memory", guardTrackers[0].open},
		{"postgres", guardPostgresTracker},
		{"redis", guardTrackers[2].open},
	}
	for _, tr := range trackers {
		for _, mode := range []string{"cheap", "always"} {
			b.Run(tr.name+"/"+mode, func(b *testing.B) {
				tracker := tr.open(b)
				d, err := NewCrashLoopGuard(CrashLoopGuardConfig{
					Tracker:     tracker,
					DeadLetter:  &DeadLetter{},
					AlwaysCount: mode == "always",
				})
				require.NoError(b, err)
				var offset int64
				d.originOf = func(*message.Message) poison.Origin {
					offset++
					return poison.Origin{Topic: guardTopic, Handler: guardHandler, Offset: offset, HasOffset: true}
				}
				h := d.Middleware(noop)
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					if _, err := h(msg); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
