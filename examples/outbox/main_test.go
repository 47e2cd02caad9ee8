package main

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/antidote-mq/antidote/fingerprint"
	"github.com/antidote-mq/antidote/internal/testenv"
)

// The example's two runs, on the embedded Kafka broker and the test
// database: Antidote's relay sends every row once (the corrupt row's
// copies skipped, the row in the outbox's dead-letter table); the naive
// sweeper floods, and the flood guard and the hospital name it. Every
// message is accounted for in both.
func TestOutboxExample(t *testing.T) {
	t.Setenv("ANTIDOTE_BROKER", "kafka")
	t.Setenv("ANTIDOTE_KAFKA_BROKERS", "")
	t.Setenv("ANTIDOTE_POSTGRES_URL", testenv.PostgresURL(t))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	s, err := run(ctx, options{orders: 60}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("relay: %+v", s)
	if s.Published != 61 || s.Published != s.Processed+s.DeadLettered || s.DuplicatesDelivered != 0 || s.OutboxDeadLettered != 1 {
		t.Errorf("relay run %+v: want 61 published = processed + dead-lettered, 0 duplicates delivered, the corrupt row in the outbox's DLQ", s)
	}
	if s.FloodProducer != "" {
		t.Errorf("the relay was reported as a flood: %q", s.FloodProducer)
	}

	s, err = run(ctx, options{orders: 60, incident: true, duration: 3 * time.Second}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("incident: %+v", s)
	if !strings.HasPrefix(s.FloodProducer, "naive-sweeper/") {
		t.Errorf("flood producer %q, want the naive sweeper", s.FloodProducer)
	}
	if s.Published != s.Processed+s.DeadLettered+s.DuplicatesSkipped {
		t.Errorf("incident %+v: published != processed + dead-lettered + skipped: a message unaccounted for", s)
	}
	named := false
	for _, g := range s.HospitalGroups {
		// The hospital groups by producing service, not by instance.
		if g.Reason == "rejected_by_flood_guard" && g.Producer == fingerprint.ProducerService(s.FloodProducer) && g.Count > 0 {
			named = true
		}
	}
	if !named || s.Processed > 10 {
		t.Errorf("incident %+v: want the flood grouped under %s's service in the hospital and only the first ten orders processed", s, s.FloodProducer)
	}
}
