package adapters

import (
	"errors"
	"strings"
	"testing"
)

// Without devkafka linked in, kafka.embedded is a configuration error
// saying what to import, not a silent fallback or a dial to nowhere.
func TestEmbeddedKafkaNotLinked(t *testing.T) {
	saved := embeddedKafka.Swap(nil)
	defer embeddedKafka.Store(saved)
	_, err := Open(t.Context(), Config{Broker: KindKafka, Kafka: KafkaConfig{Embedded: true}}, nil)
	if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "antidote/devkafka") {
		t.Fatalf("got %v, want ErrInvalidConfig naming the devkafka import", err)
	}
}
