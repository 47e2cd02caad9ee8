package router_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/poison"
	"github.com/antidote-mq/antidote/router"
)

// identitySeen is what each middleware said about who consumes, for one
// good and one poison message through router.New.
type identitySeen struct {
	span, metric  map[string]string // messaging.system, messaging.consumer.group.name, server.address, server.port
	letterGroup   string            // poison.KeyConsumerGroup
	letterVersion string            // poison.KeyConsumerVersion
	trackerKeys   []string          // the keys the crash-loop guard counted
}

// keyRecorder is a tracker that remembers the keys it is asked to count.
type keyRecorder struct {
	poison.DeliveryTracker
	mu   sync.Mutex
	keys []string
}

func (k *keyRecorder) Incr(ctx context.Context, key string) (int, error) {
	k.mu.Lock()
	k.keys = append(k.keys, key)
	k.mu.Unlock()
	return k.DeliveryTracker.Incr(ctx, key)
}

var identityAttrs = []string{"messaging.system", "messaging.consumer.group.name", "server.address", "server.port"}

// seeIdentity runs cfg (its providers, publisher and tracker replaced by
// recording ones) over a "good" and a "bad" (permanent failure) message on
// topic "orders", and reports what every middleware recorded.
func seeIdentity(t *testing.T, cfg router.Config) identitySeen {
	t.Helper()
	spans := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans))
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()); _ = mp.Shutdown(context.Background()) })
	ps := gochannel.NewGoChannel(gochannel.Config{Persistent: true}, watermill.NopLogger{})
	t.Cleanup(func() { _ = ps.Close() })
	tracker := &keyRecorder{DeliveryTracker: poison.MustNewMemoryDeliveryTracker(poison.MemoryDeliveryTrackerConfig{})}
	t.Cleanup(func() { _ = tracker.Close() })

	cfg.Tracing.TracerProvider = tp
	cfg.Metrics.MeterProvider = mp
	cfg.DeadLetter.Publisher = ps
	cfg.CrashLoopGuard.Tracker = tracker
	cfg.CrashLoopGuard.AlwaysCount = true
	r, err := router.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r.AddConsumerHandler("store-orders", "orders", ps, func(msg *message.Message) error {
		if msg.UUID == "bad" {
			return poison.Permanent(errors.New("bad order"))
		}
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	letters, err := ps.Subscribe(ctx, antidote.DLQTopic("orders"))
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = r.Run(ctx) }()
	t.Cleanup(func() { _ = r.Close() })
	<-r.Running()
	for _, uuid := range []string{"good", "bad"} {
		if err := ps.Publish("orders", message.NewMessage(uuid, nil)); err != nil {
			t.Fatal(err)
		}
	}
	var seen identitySeen
	select {
	case letter := <-letters:
		letter.Ack()
		seen.letterGroup = letter.Metadata.Get(poison.KeyConsumerGroup)
		seen.letterVersion = letter.Metadata.Get(poison.KeyConsumerVersion)
	case <-time.After(10 * time.Second):
		t.Fatal("no letter in orders.dlq")
	}
	testenv.Eventually(t, 10*time.Second, "two consumer spans ended", func() bool { return len(spans.GetSpans()) >= 2 })
	for _, s := range spans.GetSpans() {
		if s.Name == "process orders" {
			seen.span = pick(attribute.NewSet(s.Attributes...))
			break
		}
	}
	var rm metricdata.ResourceMetrics
	testenv.Eventually(t, 10*time.Second, "two consumed messages counted", func() bool {
		if err := reader.Collect(context.Background(), &rm); err != nil {
			t.Fatal(err)
		}
		return consumed(rm) == 2
	})
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if d, ok := m.Data.(metricdata.Sum[int64]); ok && m.Name == middleware.MetricConsumedMessages && len(d.DataPoints) > 0 {
				seen.metric = pick(d.DataPoints[0].Attributes)
			}
		}
	}
	tracker.mu.Lock()
	seen.trackerKeys = append(seen.trackerKeys, tracker.keys...)
	tracker.mu.Unlock()
	return seen
}

func consumed(rm metricdata.ResourceMetrics) int64 {
	var n int64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if d, ok := m.Data.(metricdata.Sum[int64]); ok && m.Name == middleware.MetricConsumedMessages {
				for _, p := range d.DataPoints {
					n += p.Value
				}
			}
		}
	}
	return n
}

// pick keeps the identity attributes of set (absent ones as "").
func pick(set attribute.Set) map[string]string {
	out := map[string]string{}
	for _, k := range identityAttrs {
		if v, ok := set.Value(attribute.Key(k)); ok {
			out[k] = v.String()
		} else {
			out[k] = ""
		}
	}
	return out
}

func wantAttrs(system, group, host, port string) map[string]string {
	return map[string]string{"messaging.system": system, "messaging.consumer.group.name": group, "server.address": host, "server.port": port}
}

func checkAttrs(t *testing.T, what string, got, want map[string]string) {
	t.Helper()
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %s = %q, want %q", what, k, got[k], v)
		}
	}
}

// checkKeys wants every counted key to name group (a gochannel key is
// "uuid/<topic>/<group>/<handler>/<uuid>").
func checkKeys(t *testing.T, keys []string, group string) {
	t.Helper()
	if len(keys) == 0 {
		t.Fatal("the crash-loop guard counted nothing")
	}
	for _, k := range keys {
		if want := "uuid/orders/" + group + "/store-orders/"; !strings.HasPrefix(k, want) {
			t.Errorf("tracker key %q, want it to start %q", k, want)
		}
	}
}

// The identity set once in Config.Consumer reaches every middleware: the
// consumer span, the semconv metrics, the letter's envelope and the
// crash-loop tracker's keys all name the same consumer.
func TestConsumerIdentitySetOnceReachesEveryMiddleware(t *testing.T) {
	seen := seeIdentity(t, router.Config{
		Consumer: antidote.ConsumerIdentity{System: "postgresql", Group: "billing", ServerAddress: "db.internal:5433", Version: "1.2.3"},
	})
	want := wantAttrs("postgresql", "billing", "db.internal", "5433")
	checkAttrs(t, "span", seen.span, want)
	checkAttrs(t, "metric", seen.metric, want)
	if seen.letterGroup != "billing" || seen.letterVersion != "1.2.3" {
		t.Errorf("letter group %q version %q, want billing 1.2.3", seen.letterGroup, seen.letterVersion)
	}
	checkKeys(t, seen.trackerKeys, "billing")
}

// A middleware's own field overrides Consumer for that middleware alone;
// the fields it leaves empty still come from Consumer.
func TestConsumerIdentityPerMiddlewareOverrides(t *testing.T) {
	seen := seeIdentity(t, router.Config{
		Consumer:       antidote.ConsumerIdentity{System: "postgresql", Group: "billing", ServerAddress: "db.internal:5433", Version: "1.2.3"},
		Tracing:        middleware.TracingConfig{ConsumerGroup: "traced"},
		Metrics:        middleware.MetricsConfig{ServerAddress: "metered:1"},
		DeadLetter:     middleware.DeadLetterConfig{ConsumerGroup: "lettered", ConsumerVersion: "9"},
		CrashLoopGuard: middleware.CrashLoopGuardConfig{ConsumerGroup: "guarded"},
	})
	checkAttrs(t, "span", seen.span, wantAttrs("postgresql", "traced", "db.internal", "5433"))
	checkAttrs(t, "metric", seen.metric, wantAttrs("postgresql", "billing", "metered", "1"))
	if seen.letterGroup != "lettered" || seen.letterVersion != "9" {
		t.Errorf("letter group %q version %q, want lettered 9", seen.letterGroup, seen.letterVersion)
	}
	checkKeys(t, seen.trackerKeys, "guarded")
}

// Without Consumer the per-middleware fields work as before: Metrics
// takes Tracing's, the crash-loop guard DeadLetter's group, and the
// version comes from the build.
func TestConsumerIdentityZeroKeepsPerMiddlewareFields(t *testing.T) {
	seen := seeIdentity(t, router.Config{
		Tracing:    middleware.TracingConfig{System: "rabbitmq", ConsumerGroup: "spans", ServerAddress: "mq:5672"},
		DeadLetter: middleware.DeadLetterConfig{ConsumerGroup: "letters"},
	})
	want := wantAttrs("rabbitmq", "spans", "mq", "5672")
	checkAttrs(t, "span", seen.span, want)
	checkAttrs(t, "metric", seen.metric, want)
	if seen.letterGroup != "letters" {
		t.Errorf("letter group %q, want letters", seen.letterGroup)
	}
	checkKeys(t, seen.trackerKeys, "letters")

	none := seeIdentity(t, router.Config{})
	checkAttrs(t, "span without identity", none.span, wantAttrs("", "", "", ""))
	checkAttrs(t, "metric without identity", none.metric, wantAttrs("", "", "", ""))
	checkKeys(t, none.trackerKeys, "")
}
