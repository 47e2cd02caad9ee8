package poison

import (
	"container/list"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

// KeyIdempotencyKey is the metadata key that carries a message's idempotency
// key (the HTTP header name used for the same purpose). The producer sets it
// (idempotency.NewPublisher); it identifies the operation across re-sends,
// which get new message UUIDs, and DLQ replay keeps it.
const KeyIdempotencyKey = "Idempotency-Key"

// UnknownProducer names the producer of a flooding message that carries no
// KeyProducer metadata.
const UnknownProducer = "unknown"

// Defaults of FloodDetectorConfig.
const (
	DefaultFloodThreshold      = 20
	DefaultFloodWindow         = 10 * time.Second
	DefaultFloodReportInterval = 10 * time.Second
	DefaultFloodMaxKeys        = 100_000
	DefaultFloodMaxProducers   = 1_000
)

// floodMaxSampledKeys bounds the distinct flooding messages remembered per
// producer between two reports; past it the count saturates.
const floodMaxSampledKeys = 1_000

// ErrFlood is wrapped by the error recorded for a message the flood guard
// dead-lettered (reason ReasonFloodGuard).
var ErrFlood = errors.New("antidote: redelivery flood")

// FloodDetectorConfig configures NewFloodDetector. The zero value is usable.
type FloodDetectorConfig struct {
	// Threshold: more than Threshold arrivals of the same message within
	// Window is a flood; every arrival past it is flagged. Default 20. It
	// must stay above what healthy redelivery produces: a few retries, a
	// crash loop (3-4 deliveries), a nacked message redelivered every 100ms
	// on Kafka (Window/100ms arrivals). Lower catches slow floods sooner.
	Threshold int
	// Window over which arrivals are counted. Default 10s. Counting uses two
	// fixed windows weighted by overlap (a sliding-window estimate, O(1) per
	// message), which can be off by up to the previous window's share.
	Window time.Duration
	// ReportInterval: a flooding producer is reported (FloodVerdict.Report)
	// at most once per interval; its repeats in between are summed into the
	// next report. Default 10s. The first flood arrival of a producer is
	// reported at once.
	ReportInterval time.Duration
	// MaxKeys bounds the messages tracked; the least recently seen are
	// forgotten first. Default 100,000. A flooding message is seen often, so
	// it stays; but to notice a flood of rate r per message among healthy
	// traffic of rate h, MaxKeys must exceed h/r (about h×Window/Threshold).
	MaxKeys int
	// MaxProducers bounds the producers with report state. Default 1,000.
	MaxProducers int
	// Key identifies "the same message". Default FloodKey: the topic, the
	// handler and the idempotency key (KeyIdempotencyKey metadata) or, when
	// there is none, the message UUID.
	Key func(msg *message.Message) string
	// Now is the clock. Default time.Now (tests replace it).
	Now func() time.Time
}

func (c *FloodDetectorConfig) setDefaults() {
	if c.Threshold == 0 {
		c.Threshold = DefaultFloodThreshold
	}
	if c.Window == 0 {
		c.Window = DefaultFloodWindow
	}
	if c.ReportInterval == 0 {
		c.ReportInterval = DefaultFloodReportInterval
	}
	if c.MaxKeys == 0 {
		c.MaxKeys = DefaultFloodMaxKeys
	}
	if c.MaxProducers == 0 {
		c.MaxProducers = DefaultFloodMaxProducers
	}
	if c.Key == nil {
		c.Key = FloodKey
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Validate reports every invalid field of c, after defaults are applied
// (NewFloodDetector applies them first), in field order, joined with
// errors.Join. A zero field is valid: it stands for its default.
func (c FloodDetectorConfig) Validate() error {
	var errs []error
	if c.Threshold < 0 {
		errs = append(errs, fmt.Errorf("poison: FloodDetectorConfig.Threshold is %d; set a positive count, or 0 for the default %d", c.Threshold, DefaultFloodThreshold))
	}
	if c.Window < 0 || (c.Window > 0 && c.Window < time.Millisecond) {
		errs = append(errs, fmt.Errorf("poison: FloodDetectorConfig.Window is %s; set at least 1ms, or 0 for the default %s", c.Window, DefaultFloodWindow))
	}
	if c.ReportInterval < 0 {
		errs = append(errs, fmt.Errorf("poison: FloodDetectorConfig.ReportInterval is %s; set a positive duration, or 0 for the default %s", c.ReportInterval, DefaultFloodReportInterval))
	}
	if c.MaxKeys < 0 {
		errs = append(errs, fmt.Errorf("poison: FloodDetectorConfig.MaxKeys is %d; set a positive bound, or 0 for the default %d", c.MaxKeys, DefaultFloodMaxKeys))
	}
	if c.MaxProducers < 0 {
		errs = append(errs, fmt.Errorf("poison: FloodDetectorConfig.MaxProducers is %d; set a positive bound, or 0 for the default %d", c.MaxProducers, DefaultFloodMaxProducers))
	}
	return errors.Join(errs...)
}

// FloodKey is the default identity of a message for flood detection:
// "<topic>/<handler>/key:<idempotency key>", or ".../uuid:<UUID>" when the
// message has no KeyIdempotencyKey. A producer that re-sends the same
// operation as new messages (new UUIDs) is caught only through its
// idempotency key.
func FloodKey(msg *message.Message) string {
	o := OriginOf(msg)
	id := "uuid:" + msg.UUID
	if k := msg.Metadata.Get(KeyIdempotencyKey); k != "" {
		id = "key:" + k
	}
	return url.PathEscape(o.Topic) + "/" + url.PathEscape(o.Handler) + "/" + id
}

// FloodVerdict is what FloodDetector.Observe says about one arrival.
type FloodVerdict struct {
	// Flood is true when this arrival is past Threshold within Window.
	Flood bool
	// Key is the message's identity (FloodDetectorConfig.Key).
	Key string
	// Producer is the KeyProducer metadata, or UnknownProducer.
	Producer string
	// Arrivals of Key within the last Window, this one included (estimate).
	Arrivals int
	// Rate is Arrivals per second over the Window.
	Rate float64
	// Window is the detector's window, for reports.
	Window time.Duration

	// Report is true for the first flood arrival of Producer since its last
	// report (at most once per ReportInterval): the time to log.
	Report bool
	// Repeats is how many flood arrivals came from Producer since its last
	// report, this one included (set when Report is true).
	Repeats int
	// Messages is how many distinct messages of Producer were flooding
	// since its last report (set when Report is true; saturates at 1000).
	Messages int
	// Since is when Producer was last reported; zero for the first report.
	Since time.Time
}

// FloodDetector notices the redelivery flood: the same message arriving far
// more often than redelivery explains, which is what a broken outbox relay
// or sweeper re-sending a batch in a loop looks like from the consumer. It
// names the producer (KeyProducer metadata), so the source is found without
// stopping services one by one. It only counts and judges; middleware.
// FloodGuard logs, counts and drops.
//
// Memory is bounded by MaxKeys and MaxProducers; there is no goroutine.
// Safe for concurrent use.
type FloodDetector struct {
	cfg FloodDetectorConfig

	mu        sync.Mutex
	keys      map[string]*list.Element // of *floodEntry
	keyLRU    *list.List               // front: most recently seen
	producers map[string]*list.Element // of *floodProducer
	prodLRU   *list.List
}

type floodEntry struct {
	key         string
	windowStart time.Time
	cur, prev   int
}

type floodProducer struct {
	name       string
	reported   bool
	lastReport time.Time
	repeats    int
	keys       map[string]struct{}
}

// NewFloodDetector fills cfg's defaults, validates it (see
// FloodDetectorConfig.Validate) and returns a detector.
func NewFloodDetector(cfg FloodDetectorConfig) (*FloodDetector, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &FloodDetector{
		cfg:       cfg,
		keys:      map[string]*list.Element{},
		keyLRU:    list.New(),
		producers: map[string]*list.Element{},
		prodLRU:   list.New(),
	}, nil
}

// Config returns the configuration in effect (defaults filled).
func (d *FloodDetector) Config() FloodDetectorConfig { return d.cfg }

// Observe counts one arrival of msg and judges it.
func (d *FloodDetector) Observe(msg *message.Message) FloodVerdict {
	key := d.cfg.Key(msg)
	producer := msg.Metadata.Get(KeyProducer)
	if producer == "" {
		producer = UnknownProducer
	}
	now := d.cfg.Now()
	w := d.cfg.Window

	d.mu.Lock()
	defer d.mu.Unlock()
	el, ok := d.keys[key]
	if !ok {
		if len(d.keys) >= d.cfg.MaxKeys {
			if back := d.keyLRU.Back(); back != nil {
				d.keyLRU.Remove(back)
				delete(d.keys, back.Value.(*floodEntry).key)
			}
		}
		el = d.keyLRU.PushFront(&floodEntry{key: key, windowStart: now})
		d.keys[key] = el
	} else {
		d.keyLRU.MoveToFront(el)
	}
	e := el.Value.(*floodEntry)
	switch elapsed := now.Sub(e.windowStart); {
	case elapsed >= 2*w || elapsed < 0:
		e.windowStart, e.prev, e.cur = now, 0, 0
	case elapsed >= w:
		e.windowStart, e.prev, e.cur = e.windowStart.Add(w), e.cur, 0
	}
	e.cur++
	overlap := 1 - float64(now.Sub(e.windowStart))/float64(w)
	estimate := float64(e.prev)*overlap + float64(e.cur)

	v := FloodVerdict{
		Key:      key,
		Producer: producer,
		Arrivals: int(estimate + 0.5),
		Rate:     estimate / w.Seconds(),
		Window:   w,
		Flood:    estimate > float64(d.cfg.Threshold),
	}
	if !v.Flood {
		return v
	}

	p := d.producerLocked(producer)
	p.repeats++
	if len(p.keys) < floodMaxSampledKeys {
		p.keys[key] = struct{}{}
	}
	if !p.reported || now.Sub(p.lastReport) >= d.cfg.ReportInterval {
		v.Report, v.Repeats, v.Messages = true, p.repeats, len(p.keys)
		if p.reported {
			v.Since = p.lastReport
		}
		p.reported, p.lastReport, p.repeats = true, now, 0
		clear(p.keys)
	}
	return v
}

func (d *FloodDetector) producerLocked(name string) *floodProducer {
	if el, ok := d.producers[name]; ok {
		d.prodLRU.MoveToFront(el)
		return el.Value.(*floodProducer)
	}
	if len(d.producers) >= d.cfg.MaxProducers {
		if back := d.prodLRU.Back(); back != nil {
			d.prodLRU.Remove(back)
			delete(d.producers, back.Value.(*floodProducer).name)
		}
	}
	p := &floodProducer{name: name, keys: map[string]struct{}{}}
	d.producers[name] = d.prodLRU.PushFront(p)
	return p
}

// Len reports how many messages and producers the detector tracks.
func (d *FloodDetector) Len() (keys, producers int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.keys), len(d.producers)
}
