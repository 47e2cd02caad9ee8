package adapters_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/antidote-mq/antidote/adapters"
)

// amqp.single_active_consumer: default false; with it the prefetch
// defaults to 1 (a nacked message comes back before the next, see
// TestAMQPSingleActiveConsumerNackOrder), a prefetch set stays as set; it
// is valid with classic and quorum queues.
func TestAMQPSingleActiveConsumerDefaults(t *testing.T) {
	c := valid(adapters.KindAMQP)
	if c.AMQP.SingleActiveConsumer || c.AMQP.Prefetch != 10 {
		t.Fatalf("defaults: single_active_consumer %v, prefetch %d; want false, 10", c.AMQP.SingleActiveConsumer, c.AMQP.Prefetch)
	}
	for _, quorum := range []bool{false, true} {
		c := adapters.Config{Broker: adapters.KindAMQP, AMQP: adapters.AMQPConfig{SingleActiveConsumer: true, Quorum: quorum}}
		c.SetDefaults()
		if c.AMQP.Prefetch != 1 {
			t.Errorf("quorum %v: prefetch with single_active_consumer defaults to %d, want 1", quorum, c.AMQP.Prefetch)
		}
		if err := c.Validate(); err != nil {
			t.Errorf("quorum %v: %v", quorum, err)
		}
	}
	set := adapters.Config{Broker: adapters.KindAMQP, AMQP: adapters.AMQPConfig{SingleActiveConsumer: true, Prefetch: 25}}
	set.SetDefaults()
	if set.AMQP.Prefetch != 25 {
		t.Errorf("prefetch set to 25 became %d", set.AMQP.Prefetch)
	}
	bad := adapters.Config{Broker: adapters.KindAMQP, AMQP: adapters.AMQPConfig{SingleActiveConsumer: true, Prefetch: -1}}
	bad.SetDefaults()
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "amqp.prefetch") {
		t.Errorf("prefetch -1 with single_active_consumer: %v", err)
	}
}

func TestAMQPSingleActiveConsumerYAMLAndEnv(t *testing.T) {
	c, err := adapters.ParseYAML([]byte("broker: amqp\namqp:\n  quorum: true\n  single_active_consumer: true\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !c.AMQP.SingleActiveConsumer || !c.AMQP.Quorum {
		t.Fatalf("YAML gave %+v", c.AMQP)
	}
	_, err = adapters.ParseYAML([]byte("broker: amqp\namqp:\n  single_active_consumers: true\n"))
	if !errors.Is(err, adapters.ErrInvalidConfig) || !strings.Contains(err.Error(), "did you mean amqp.single_active_consumer?") {
		t.Errorf("a typo of the key: %v", err)
	}

	var e adapters.Config
	if err := e.ApplyEnv(mapLookup(map[string]string{"ANTIDOTE_AMQP_SINGLE_ACTIVE_CONSUMER": "true"})); err != nil {
		t.Fatal(err)
	}
	if !e.AMQP.SingleActiveConsumer {
		t.Fatal("ANTIDOTE_AMQP_SINGLE_ACTIVE_CONSUMER=true did not set amqp.single_active_consumer")
	}
	err = e.ApplyEnv(mapLookup(map[string]string{"ANTIDOTE_AMQP_SINGLE_ACTIVE_CONSUMER": "on"}))
	for _, w := range []string{"ANTIDOTE_AMQP_SINGLE_ACTIVE_CONSUMER", "amqp.single_active_consumer", `"on"`, "true or false"} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("ANTIDOTE_AMQP_SINGLE_ACTIVE_CONSUMER=on: %v; want it to mention %s", err, w)
		}
	}
	// false over a file's true.
	f, err := adapters.ParseYAML([]byte("amqp:\n  single_active_consumer: true\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.ApplyEnv(mapLookup(map[string]string{"ANTIDOTE_AMQP_SINGLE_ACTIVE_CONSUMER": "false"})); err != nil || f.AMQP.SingleActiveConsumer {
		t.Errorf("env false over YAML true: %v, %v", f.AMQP.SingleActiveConsumer, err)
	}
}
