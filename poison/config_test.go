package poison_test

import (
	"strings"
	"testing"
	"time"

	"github.com/antidote-mq/antidote/poison"
)

// requireFieldsInOrder fails unless err names every one of fields, each on
// a line of its own (errors.Join), in that order.
func requireFieldsInOrder(t *testing.T, err error, fields ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error; want one naming %v", fields)
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != len(fields) {
		t.Fatalf("%d errors, want %d (%v):\n%v", len(lines), len(fields), fields, err)
	}
	for i, f := range fields {
		if !strings.Contains(lines[i], f) {
			t.Errorf("error %d is %q; want it to name %s (field order: %v)", i, lines[i], f, fields)
		}
	}
}

func TestConfigValidateReportsEveryFieldInOrder(t *testing.T) {
	requireFieldsInOrder(t, poison.FloodDetectorConfig{Threshold: -1, Window: time.Microsecond, MaxProducers: -1}.Validate(),
		"FloodDetectorConfig.Threshold", "FloodDetectorConfig.Window", "FloodDetectorConfig.MaxProducers")
	requireFieldsInOrder(t, poison.MemoryDeliveryTrackerConfig{MaxKeys: -1, TTL: -time.Second}.Validate(),
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
