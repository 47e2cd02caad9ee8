package throttle_test

import (
	"strings"
	"testing"

	"github.com/antidote-mq/antidote/throttle"
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
	requireFieldsInOrder(t, throttle.RateConfig{Rate: -1, Burst: -2}.Validate(), "RateConfig.Rate", "RateConfig.Burst")
	requireFieldsInOrder(t, throttle.KeyedConfig{Rate: 1, Burst: -1, MaxKeys: -1}.Validate(), "KeyedConfig.Burst", "KeyedConfig.MaxKeys")
	requireFieldsInOrder(t, throttle.AdaptiveConfig{InitialLimit: 2000, Backoff: 2, LatencyNoise: -1}.Validate(),
		"AdaptiveConfig.InitialLimit", "AdaptiveConfig.Backoff", "AdaptiveConfig.LatencyNoise")
	requireFieldsInOrder(t, throttle.BackpressureConfig{HighWatermark: -1, PollTimeout: -1}.Validate(),
		"BackpressureConfig.Publisher", "BackpressureConfig.Source", "BackpressureConfig.HighWatermark", "BackpressureConfig.LowWatermark", "BackpressureConfig.PollTimeout")
}

// Zero fields stand for their defaults (Validate accepts them as they are),
// and a wrong value is never masked by the defaults.
func TestConfigValidateZeroValuesAndConstructors(t *testing.T) {
	for name, err := range map[string]error{
		"Rate":     throttle.RateConfig{Rate: 1}.Validate(),
		"Keyed":    throttle.KeyedConfig{Rate: 1}.Validate(),
		"Adaptive": throttle.AdaptiveConfig{}.Validate(),
		// LowWatermark 0 is HighWatermark/2, below HighWatermark.
		"Backpressure": throttle.BackpressureConfig{Publisher: &countingPublisher{}, Source: &fakeLag{}, HighWatermark: 10}.Validate(),
	} {
		if err != nil {
			t.Errorf("%sConfig: zero fields refused: %v", name, err)
		}
	}
	if _, err := throttle.NewRateLimiter(throttle.RateConfig{Rate: 1, Burst: -1}); err == nil {
		t.Error("NewRateLimiter accepted Burst -1")
	}
	if _, err := throttle.NewKeyedLimiter(throttle.KeyedConfig{Rate: 1, MaxKeys: -1}); err == nil {
		t.Error("NewKeyedLimiter accepted MaxKeys -1")
	}
	if _, err := throttle.NewAdaptiveLimiter(throttle.AdaptiveConfig{BaselineWindow: -1}); err == nil {
		t.Error("NewAdaptiveLimiter accepted BaselineWindow -1")
	}
	if _, err := throttle.NewBackpressurePublisher(throttle.BackpressureConfig{Publisher: &countingPublisher{}, Source: &fakeLag{}, PollInterval: -1}); err == nil {
		t.Error("NewBackpressurePublisher accepted PollInterval -1")
	}
	if _, err := throttle.NewConcurrencyLimiter(0); err == nil {
		t.Error("NewConcurrencyLimiter accepted 0")
	}
}
