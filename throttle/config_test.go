package throttle_test

import (
	"testing"

	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/throttle"
)

func TestConfigValidateReportsEveryFieldInOrder(t *testing.T) {
	testenv.RequireFieldsInOrder(t, throttle.RateConfig{Rate: -1, Burst: -2}.Validate(), "RateConfig.Rate", "RateConfig.Burst")
	testenv.RequireFieldsInOrder(t, throttle.KeyedConfig{Rate: 1, Burst: -1, MaxKeys: -1}.Validate(), "KeyedConfig.Burst", "KeyedConfig.MaxKeys")
	testenv.RequireFieldsInOrder(t, throttle.AdaptiveConfig{InitialLimit: 2000, Backoff: 2, LatencyNoise: -1}.Validate(),
		"AdaptiveConfig.InitialLimit", "AdaptiveConfig.Backoff", "AdaptiveConfig.LatencyNoise")
	testenv.RequireFieldsInOrder(t, throttle.BackpressureConfig{HighWatermark: -1, PollTimeout: -1}.Validate(),
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
