package web

import (
	"context"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/antidote-mq/antidote/hospital"
)

// groupCollector reads the groups from the store on each scrape, so the
// numbers are the store's, whichever process ingested or treated the
// letters.
type groupCollector struct {
	store  hospital.Store
	top    int
	logger watermill.LoggerAdapter

	dead, total, groups, up *prometheus.Desc
}

func newGroupCollector(store hospital.Store, top int, logger watermill.LoggerAdapter) *groupCollector {
	labels := []string{"fingerprint", "reason", "handler", "error_type"}
	return &groupCollector{store: store, top: top, logger: logger,
		dead: prometheus.NewDesc("antidote_hospital_group_dead_letters",
			"Letters of the group waiting in the message hospital (the groups with the most, at most MetricsGroups of them).", labels, nil),
		total: prometheus.NewDesc("antidote_hospital_group_letters",
			"Letters ever ingested into the group, treated or not.", labels, nil),
		groups: prometheus.NewDesc("antidote_hospital_groups",
			"Groups with letters waiting in the message hospital, all of them.", nil, nil),
		up: prometheus.NewDesc("antidote_hospital_store_up",
			"1 when the last scrape read the hospital store, 0 when it failed.", nil, nil),
	}
}

func (c *groupCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.dead
	ch <- c.total
	ch <- c.groups
	ch <- c.up
}

func (c *groupCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	page, err := c.store.Groups(ctx, hospital.GroupQuery{Order: hospital.ByCount, Limit: c.top})
	if err != nil {
		c.logger.Error("Hospital metrics: cannot list groups", err, nil)
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 1)
	ch <- prometheus.MustNewConstMetric(c.groups, prometheus.GaugeValue, float64(page.Total))
	for _, g := range page.Groups {
		f := g.Fingerprint
		ch <- prometheus.MustNewConstMetric(c.dead, prometheus.GaugeValue, float64(g.Dead), f.ID, f.Reason, f.Handler, f.ErrorType)
		ch <- prometheus.MustNewConstMetric(c.total, prometheus.GaugeValue, float64(g.Count), f.ID, f.Reason, f.Handler, f.ErrorType)
	}
}
