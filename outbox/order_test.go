package outbox_test

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/internal/testenv/brokers"
	"github.com/antidote-mq/antidote/outbox"
)

// These tests use only the API of the relay before ordering keys (the key is
// the message's partition_key metadata), so they run against it too: see
// docs/reliability.md for how they fail there.

// keyed is a message of key (empty: keyless) numbered seq within its key.
func keyed(key string, seq int) *message.Message {
	k := key
	if k == "" {
		k = "-"
	}
	m := message.NewMessage(fmt.Sprintf("%s/%04d", k, seq), []byte(`{}`))
	if key != "" {
		m.Metadata.Set("partition_key", key)
	}
	m.Metadata.Set("seq", strconv.Itoa(seq))
	return m
}

// addEach adds each message in a transaction of its own, in order.
func (f *fixture) addEach(t *testing.T, topic string, msgs ...*message.Message) {
	t.Helper()
	ctx := context.Background()
	for _, m := range msgs {
		if err := pgx.BeginFunc(ctx, f.pool, func(tx pgx.Tx) error { return f.ob.Add(ctx, tx, topic, m) }); err != nil {
			t.Fatal(err)
		}
	}
}

// interleaved is n messages of each key, key by key for each number:
// a/0, b/0, c/0, a/1, ...
func interleaved(n int, keys ...string) []*message.Message {
	var out []*message.Message
	for i := 0; i < n; i++ {
		for _, k := range keys {
			out = append(out, keyed(k, i))
		}
	}
	return out
}

// orderReceiver records, per key, the numbers of the messages in the order
// they first arrived, and every copy.
type orderReceiver struct {
	mu     sync.Mutex
	copies map[string]int   // by message id
	order  map[string][]int // key ("" keyless) -> seq, first arrivals
}

func receiveOrder(t *testing.T, ctx context.Context, sub message.Subscriber, topic string) *orderReceiver {
	t.Helper()
	ch, err := sub.Subscribe(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	o := &orderReceiver{copies: map[string]int{}, order: map[string][]int{}}
	go func() {
		for m := range ch {
			seq, _ := strconv.Atoi(m.Metadata.Get("seq"))
			key := m.Metadata.Get("partition_key")
			o.mu.Lock()
			o.copies[m.UUID]++
			if o.copies[m.UUID] == 1 {
				o.order[key] = append(o.order[key], seq)
			}
			o.mu.Unlock()
			m.Ack()
		}
	}()
	return o
}

func (o *orderReceiver) distinct() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.copies)
}

func (o *orderReceiver) of(key string) []int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.order[key])
}

func (o *orderReceiver) dups() (n int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, c := range o.copies {
		n += c - 1
	}
	return n
}

// inversions counts, over the keyed messages, each first arrival of a
// number below one its key already delivered, and names the first few.
func (o *orderReceiver) inversions() (n int, examples []string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for key, seqs := range o.order {
		if key == "" {
			continue
		}
		top := -1
		for _, s := range seqs {
			if s < top {
				n++
				if len(examples) < 5 {
					examples = append(examples, fmt.Sprintf("%s/%04d after %04d", key, s, top))
				}
			}
			top = max(top, s)
		}
	}
	return n, examples
}

// gatePublisher fails the publish of the messages in fail while the gate is
// shut, and logs every publish in order.
type gatePublisher struct {
	message.Publisher
	fail     map[string]bool
	open     atomic.Bool
	failures atomic.Int64
	mu       sync.Mutex
	log      []string // "fail <id>", "sent <id>"
}

func (p *gatePublisher) Publish(topic string, msgs ...*message.Message) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, m := range msgs {
		if p.fail[m.UUID] && !p.open.Load() {
			p.failures.Add(1)
			p.log = append(p.log, "fail "+m.UUID)
			return errors.New("the broker refused for a while (test)")
		}
	}
	if err := p.Publisher.Publish(topic, msgs...); err != nil {
		return err
	}
	for _, m := range msgs {
		p.log = append(p.log, "sent "+m.UUID)
	}
	return nil
}

// sentBefore is the entries of the log with prefix before the last entry
// equal to last.
func (p *gatePublisher) sentBefore(last, prefix string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	end := slices.Index(p.log, last) // the first; find the last
	for i, e := range p.log {
		if e == last {
			end = i
		}
	}
	var out []string
	for _, e := range p.log[:max(end, 0)] {
		if strings.HasPrefix(e, prefix) {
			out = append(out, e)
		}
	}
	return out
}

// A row whose publish fails holds back the later rows of its key, and only
// those: the other keys and the keyless rows (one of which fails too) flow
// meanwhile. Once it is sent, the key follows in order. A row that keeps
// failing goes to the dead-letter table after MaxAttempts and its key goes
// on. Against the relay before ordering keys, the key's later rows are
// sent while the failed row backs off (phase 1 fails).
func TestFailedRowHoldsItsKeyOnly(t *testing.T) {
	for _, recovers := range []bool{true, false} {
		name := map[bool]string{true: "sent_after_the_failures", false: "dead_lettered_then_the_key_goes_on"}[recovers]
		t.Run(name, func(t *testing.T) {
			f := newFixture(t)
			b := brokers.Open(t, brokers.Config(t, adapters.KindPostgres))
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			topic := brokers.Topic("hold_")
			got := receiveOrder(t, ctx, b.Subscriber, topic)
			const n = 30
			f.addEach(t, topic, interleaved(n, "acct-a", "acct-b", "acct-c", "")...)
			pub := &gatePublisher{Publisher: b.Publisher, fail: map[string]bool{"acct-a/0005": true, "-/0010": true}}
			maxAttempts := 1000
			if !recovers {
				maxAttempts = 3
			}
			// Small batches: acct-a's later rows are held across rounds
			// (and by the claim), not only within one round.
			r := f.relay(t, pub, func(c *outbox.RelayConfig) { c.BatchSize = 7; c.MaxAttempts = maxAttempts })
			go func() { _ = r.Run(ctx) }()

			// Phase 1: the others flow while acct-a/0005 fails.
			if recovers {
				phase1(t, f, got, pub, n)
			}

			// Phase 2.
			want := 4 * n
			if recovers {
				pub.open.Store(true)
			} else {
				want-- // acct-a/0005 dead-lettered; -/0010 too
				want--
			}
			testenv.Eventually(t, 60*time.Second, "every row sent", func() bool { return got.distinct() >= want })
			st, err := r.Stats(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if inv, ex := got.inversions(); inv != 0 {
				t.Errorf("%d inversions: %v", inv, ex)
			}
			wantA := make([]int, 0, n)
			for i := 0; i < n; i++ {
				if recovers || i != 5 {
					wantA = append(wantA, i)
				}
			}
			if a := got.of("acct-a"); !slices.Equal(a, wantA) {
				t.Errorf("acct-a delivered %v, want %v", a, wantA)
			}
			wantDead := int64(0)
			if !recovers {
				wantDead = 2
			}
			// Nothing of acct-a after 0005 went out before its last failure
			// (for the dead-lettered one: its third, then it moved).
			if early := pub.sentBefore("fail acct-a/0005", "sent acct-a/"); len(early) != 5 {
				t.Errorf("before acct-a/0005's last failure the relay sent %v; want acct-a/0000-0004 only", early)
			}
			if got.distinct() != want || got.dups() != 0 || st.Dead != wantDead {
				t.Errorf("%d distinct, %d copies, %d dead; want %d, 0, %d", got.distinct(), got.dups(), st.Dead, want, wantDead)
			}
			t.Logf("%d failed publishes; acct-a %v", pub.failures.Load(), got.of("acct-a"))
		})
	}
}

// flakyPublisher fails the first try of about one message in 25 (chosen by
// its id), once.
type flakyPublisher struct {
	message.Publisher
	mu     sync.Mutex
	failed map[string]bool
	n      *atomic.Int64 // sent by this relay
}

func (p *flakyPublisher) Publish(topic string, msgs ...*message.Message) error {
	for _, m := range msgs {
		h := fnv.New32a()
		_, _ = h.Write([]byte(m.UUID))
		p.mu.Lock()
		fail := h.Sum32()%25 == 0 && !p.failed[m.UUID]
		if fail {
			p.failed[m.UUID] = true
		}
		p.mu.Unlock()
		if fail {
			return errors.New("a passing broker error (test)")
		}
	}
	if err := p.Publisher.Publish(topic, msgs...); err != nil {
		return err
	}
	p.n.Add(int64(len(msgs)))
	return nil
}

// Four relays on one outbox, on Kafka (4 partitions), while four writers
// add rows: two hot keys, hundreds of cold ones, keyless rows, one try in
// 25 failing. Each key's rows arrive in the order they were added (each
// key is written by one writer, in order), none lost, none twice.
func TestManyRelaysKeepEachKeysOrder(t *testing.T) {
	f := newFixture(t)
	b := brokers.Open(t, brokers.Config(t, adapters.KindKafka, brokers.KafkaCluster(4)))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	topic := brokers.Topic("many_")
	got := receiveOrder(t, ctx, b.Subscriber, topic)
	const relays, writers = 4, 4
	var sent [relays]atomic.Int64
	for i := range relays {
		pub := &flakyPublisher{Publisher: b.Publisher, failed: map[string]bool{}, n: &sent[i]}
		r := f.relay(t, pub, func(c *outbox.RelayConfig) { c.BatchSize = 20; c.MaxAttempts = 10 })
		go func() { _ = r.Run(ctx) }()
	}
	// Writer w owns the keys k with k%writers == w (and hot-w for w < 2):
	// a key's rows are committed one after the other, so their ids are
	// their order.
	var total atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			next := map[string]int{}
			msg := func(key string) *message.Message {
				m := keyed(key, next[key])
				next[key]++
				return m
			}
			for i := 0; i < 150; i++ {
				var batch []*message.Message
				if w < 2 {
					batch = append(batch, msg(fmt.Sprintf("hot-%d", w)), msg(fmt.Sprintf("hot-%d", w)))
				}
				batch = append(batch, msg(fmt.Sprintf("cold-%03d", w+writers*(i%100))))
				if i%3 == 0 {
					m := keyed("", i)
					m.UUID = fmt.Sprintf("-%d/%04d", w, i) // keyless: unique across writers
					batch = append(batch, m)
				}
				err := pgx.BeginFunc(ctx, f.pool, func(tx pgx.Tx) error { return f.ob.Add(ctx, tx, topic, batch...) })
				if err != nil {
					errs <- err
					return
				}
				total.Add(int64(len(batch)))
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	n := int(total.Load())
	testenv.Eventually(t, 120*time.Second, "every row sent", func() bool { return got.distinct() >= n })
	if inv, ex := got.inversions(); inv != 0 {
		t.Errorf("%d inversions: %v", inv, ex)
	}
	if got.distinct() != n || got.dups() != 0 {
		t.Errorf("%d distinct of %d, %d copies; want all, none", got.distinct(), n, got.dups())
	}
	var per []string
	for i := range relays {
		per = append(per, strconv.FormatInt(sent[i].Load(), 10))
	}
	t.Logf("%d rows (hot keys %d and %d rows); the relays sent %s", n, len(got.of("hot-0")), len(got.of("hot-1")), strings.Join(per, ", "))
}

// phase1 waits, the failing rows shut out, until acct-b, acct-c and the
// keyless rows (but -/0010) were delivered, acct-a up to 0004 and not
// beyond, and the failing row was tried 3 times; acct-a's rows from 0005 on
// are unsent in the table.
func phase1(t *testing.T, f *fixture, got *orderReceiver, pub *gatePublisher, n int) {
	t.Helper()
	testenv.EventuallyNil(t, 60*time.Second, func() error {
		b, c, free, a := len(got.of("acct-b")), len(got.of("acct-c")), len(got.of("")), got.of("acct-a")
		if len(a) > 5 {
			return nil // fails below
		}
		if b < n || c < n || free < n-1 || len(a) < 5 || pub.failures.Load() < 4 {
			return fmt.Errorf("acct-b %d, acct-c %d, keyless %d of %d, acct-a %v, %d failures", b, c, free, n, a, pub.failures.Load())
		}
		return nil
	})
	if a := got.of("acct-a"); !slices.Equal(a, []int{0, 1, 2, 3, 4}) {
		t.Fatalf("acct-a delivered %v while acct-a/0005 was failing; want 0-4 only", a)
	}
	var unsent int
	if err := f.pool.QueryRow(context.Background(), `SELECT count(*) FROM `+f.table+` WHERE sent_at IS NULL AND message_id LIKE 'acct-a/%'`).Scan(&unsent); err != nil {
		t.Fatal(err)
	}
	if unsent != n-5 {
		t.Errorf("%d rows of acct-a unsent, want %d (0005 and the rows behind it)", unsent, n-5)
	}
}

// blockingPublisher holds the publish of one message until release is
// closed, saying when it started.
type blockingPublisher struct {
	message.Publisher
	id       string
	started  chan struct{}
	release  chan struct{}
	once     sync.Once
	sentByMe atomic.Int64
}

func (p *blockingPublisher) Publish(topic string, msgs ...*message.Message) error {
	for _, m := range msgs {
		if m.UUID == p.id {
			p.once.Do(func() { close(p.started) })
			<-p.release
		}
	}
	if err := p.Publisher.Publish(topic, msgs...); err != nil {
		return err
	}
	p.sentByMe.Add(int64(len(msgs)))
	return nil
}

// A relay whose publish hangs for longer than its lease keeps its rows: it
// renews the lease while it works, so another relay does not take the key
// (and send its later rows first, or the hanging row twice). Against the
// relay before the renewal, the lease is never extended.
func TestLeaseIsRenewedWhilePublishing(t *testing.T) {
	testenv.Integration(t)
	f := newFixture(t)
	b := brokers.Open(t, brokers.Config(t, adapters.KindPostgres))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	topic := brokers.Topic("renew_")
	got := receiveOrder(t, ctx, b.Subscriber, topic)
	var acct []*message.Message
	for i := 0; i < 10; i++ {
		acct = append(acct, keyed("acct", i))
	}
	f.addEach(t, topic, acct...)
	const lease = 2 * time.Second
	hang := &blockingPublisher{Publisher: b.Publisher, id: "acct/0000", started: make(chan struct{}), release: make(chan struct{})}
	a := f.relay(t, hang, func(c *outbox.RelayConfig) { c.Lease = lease; c.Instance = "holder" })
	go func() { _ = a.Run(ctx) }()
	<-hang.started
	var since time.Time
	if err := f.pool.QueryRow(ctx, `SELECT now()`).Scan(&since); err != nil {
		t.Fatal(err)
	}
	var other []*message.Message
	for i := 0; i < 10; i++ {
		other = append(other, keyed("other", i))
	}
	f.addEach(t, topic, other...)
	var bSent atomic.Int64
	bRelay := f.relay(t, countingPublisher{Publisher: b.Publisher, n: &bSent}, func(c *outbox.RelayConfig) { c.Lease = lease })
	go func() { _ = bRelay.Run(ctx) }()
	// Renewed two leases after the publish began, acct's rows are still the
	// first relay's, and the other relay sent the other key.
	testenv.EventuallyNil(t, 60*time.Second, func() error {
		var held int
		if err := f.pool.QueryRow(ctx, `SELECT count(*) FROM `+f.table+` WHERE message_id LIKE 'acct/%' AND sent_at IS NULL
AND locked_by = 'orders-relay/holder' AND locked_until > $1::timestamptz + make_interval(secs => $2)`, since, 3*lease.Seconds()).Scan(&held); err != nil {
			return err
		}
		if held != 10 || len(got.of("other")) < 10 {
			return fmt.Errorf("%d of acct's 10 rows held, renewed two leases on; %d of other sent", held, len(got.of("other")))
		}
		return nil
	})
	if n := len(got.of("acct")); n != 0 {
		t.Fatalf("another relay sent %d rows of acct while the first held it", n)
	}
	close(hang.release)
	testenv.Eventually(t, 60*time.Second, "every row sent", func() bool { return got.distinct() >= 20 })
	if a := got.of("acct"); !slices.Equal(a, []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}) || got.dups() != 0 || hang.sentByMe.Load() != 10 {
		t.Errorf("acct arrived %v, %d copies, %d sent by the relay that held it; want 0-9, 0, 10", a, got.dups(), hang.sentByMe.Load())
	}
}
