package outbox_test

import (
	"context"
	"database/sql"
	"fmt"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	_ "github.com/jackc/pgx/v5/stdlib"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/internal/testenv/brokers"
	"github.com/antidote-mq/antidote/outbox"
)

// Rows added through database/sql are relayed like the others, and the
// relay's metrics count them: published, pending, oldest pending age,
// dead-lettered.
func TestAddSQLAndMetrics(t *testing.T) {
	f := newFixture(t)
	b := brokers.Open(t, brokers.Config(t, adapters.KindPostgres))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	topic := brokers.Topic("sqltx_")
	got := receive(t, ctx, b.Subscriber, topic)
	db, err := sql.Open("pgx", testenv.PostgresURL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	const n = 30
	for i := 0; i < n; i++ {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.ob.AddSQL(ctx, tx, topic, message.NewMessage(fmt.Sprintf("sql-%02d", i), []byte(`{}`))); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.pool.Exec(ctx, `INSERT INTO `+f.table+` (message_id, topic, payload, metadata) VALUES ('broken', $1, '\x00', 'not json')`, topic); err != nil {
		t.Fatal(err)
	}
	reader := sdkmetric.NewManualReader()
	r := f.relay(t, b.Publisher, func(c *outbox.RelayConfig) {
		c.MeterProvider = sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	})
	collect := func() map[string]float64 {
		var rm metricdata.ResourceMetrics
		if err := reader.Collect(ctx, &rm); err != nil {
			t.Fatal(err)
		}
		out := map[string]float64{}
		for _, sm := range rm.ScopeMetrics {
			for _, m := range sm.Metrics {
				switch d := m.Data.(type) {
				case metricdata.Sum[int64]:
					for _, p := range d.DataPoints {
						out[m.Name] += float64(p.Value)
					}
				case metricdata.Gauge[int64]:
					for _, p := range d.DataPoints {
						out[m.Name] = float64(p.Value)
					}
				case metricdata.Gauge[float64]:
					for _, p := range d.DataPoints {
						out[m.Name] = p.Value
					}
				}
			}
		}
		return out
	}
	if m := collect(); m["antidote.outbox.pending"] != n+1 || m["antidote.outbox.oldest_pending_age"] <= 0 {
		t.Errorf("before the relay runs: %v, want %d pending and an age", m, n+1)
	}
	go func() { _ = r.Run(ctx) }()
	testenv.Eventually(t, 60*time.Second, "every row sent", func() bool { return got.distinct() >= n })
	testenv.Eventually(t, 30*time.Second, "the metrics caught up", func() bool {
		m := collect()
		return m["antidote.outbox.published"] == n && m["antidote.outbox.dead_lettered"] == 1 && m["antidote.outbox.pending"] == 0
	})
	if m := collect(); m["antidote.outbox.oldest_pending_age"] != 0 {
		t.Errorf("nothing pending, but the oldest pending age is %v", m["antidote.outbox.oldest_pending_age"])
	}
}
