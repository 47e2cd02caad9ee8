package poison_test

import (
	"testing"
	"time"

	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/poison"
)

func TestConfigValidateReportsEveryFieldInOrder(t *testing.T) {
	testenv.RequireFieldsInOrder(t, poison.FloodDetectorConfig{Threshold: -1, Window: time.Microsecond, MaxProducers: -1}.Validate(),
		"FloodDetectorConfig.Threshold", "FloodDetectorConfig.Window", "FloodDetectorConfig.MaxProducers")
	testenv.RequireFieldsInOrder(t, poison.MemoryDeliveryTrackerConfig{MaxKeys: -1, TTL: -time.Second}.Validate(),
		"MemoryDeliveryTrackerConfig.MaxKeys", "MemoryDeliveryTrackerConfig.TTL")
}

func TestConfigConstructorsReturnTheError(t *testing.T) {
	if _, err := poison.NewFloodDetector(poison.FloodDetectorConfig{ReportInterval: -time.Second}); err == nil {
		t.Error("NewFloodDetector accepted ReportInterval -1s")
	}
	if _, err := poison.NewMemoryDeliveryTracker(poison.MemoryDeliveryTrackerConfig{TTL: -time.Second}); err == nil {
		t.Error("NewMemoryDeliveryTracker accepted TTL -1s")
	}
	tr, err := poison.NewMemoryDeliveryTracker(poison.MemoryDeliveryTrackerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	_ = tr.Close()
}
