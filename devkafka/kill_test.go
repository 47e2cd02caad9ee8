package devkafka_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/antidote-mq/antidote/devkafka"
	"github.com/antidote-mq/antidote/internal/testenv"
)

// These tests run `antidote devkafka --data-dir` as its own process, the
// command users run, and SIGKILL it: whatever a producer was acknowledged
// for must be served again, at the offset it was acknowledged with, by the
// broker started next on the same directory and address.

// killParts is the partition count of auto-created topics in these tests.
const killParts = 3

var antidoteBin struct {
	once sync.Once
	path string
	err  error
}

// antidote builds the CLI once per test binary (removed by TestMain).
func antidote(t *testing.T) string {
	t.Helper()
	antidoteBin.once.Do(func() {
		dir, err := os.MkdirTemp("", "devkafka-bin-")
		if err != nil {
			antidoteBin.err = err
			return
		}
		binDir = dir
		antidoteBin.path = filepath.Join(dir, "antidote")
		out, err := exec.Command("go", "build", "-o", antidoteBin.path, "github.com/antidote-mq/antidote/cmd/antidote").CombinedOutput()
		if err != nil {
			antidoteBin.err = fmt.Errorf("go build cmd/antidote: %v\n%s", err, out)
		}
	})
	if antidoteBin.err != nil {
		t.Fatal(antidoteBin.err)
	}
	return antidoteBin.path
}

// binDir is where antidote built the CLI; TestMain removes it.
var binDir string

// broker is one `antidote devkafka` process.
type broker struct {
	cmd   *exec.Cmd
	addr  string
	extra []string // flags, for the next start
}

// startBroker runs devkafka on dir at addr (port 0: a free one), with
// extra flags, and waits for its listening line.
func startBroker(t *testing.T, dir, addr string, extra ...string) *broker {
	t.Helper()
	args := append([]string{"devkafka", "--addr", addr, "--partitions", strconv.Itoa(killParts), "--data-dir", dir}, extra...)
	cmd := exec.Command(antidote(t), args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	f := strings.Fields(line)
	if err != nil || len(f) < 4 || f[1] != "listening" {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("devkafka on %s: %q (%v); stderr: %s", dir, line, err, stderr.String())
	}
	// A cluster lists its brokers' addresses: clients bootstrap from the
	// first, and the next cluster starts from its port.
	first, _, _ := strings.Cut(f[3], ",")
	return &broker{cmd: cmd, addr: first, extra: extra}
}

// kill SIGKILLs the broker, as a crash, and waits until it is gone.
func (b *broker) kill(t *testing.T) {
	t.Helper()
	if err := b.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = b.cmd.Wait()
}

// restart kills b and starts the next broker on the same directory and
// address, as a supervisor would. A cluster (extra flags) starts on free
// ports instead: the ports after its first one, which the next would need,
// may have been taken meanwhile.
func (b *broker) restart(t *testing.T, dir string) *broker {
	t.Helper()
	b.kill(t)
	addr := b.addr
	if len(b.extra) > 0 {
		addr = "127.0.0.1:0"
	}
	return startBroker(t, dir, addr, b.extra...)
}

func killConfig(autoCreate bool) *sarama.Config {
	c := saramaConfig()
	c.Metadata.AllowAutoTopicCreation = autoCreate
	c.Producer.Partitioner = sarama.NewManualPartitioner
	c.Producer.Retry.Max = 10
	c.Producer.Retry.Backoff = 50 * time.Millisecond
	c.Metadata.Retry.Backoff = 50 * time.Millisecond
	return c
}

// rec is one acknowledged record.
type rec struct {
	offset int64
	value  string
}

// model is what the broker acknowledged: per topic, per partition, records
// in offset order.
type model map[string][][]rec

func (m model) add(topic string, p int32, offset int64, value string) {
	if m[topic] == nil {
		m[topic] = make([][]rec, killParts)
	}
	m[topic][p] = append(m[topic][p], rec{offset, value})
}

// saramaProduce produces n records to topic through a Sarama producer that
// lets the broker create the topic from its metadata request, partition i%3,
// and records each acknowledgement in m.
func saramaProduce(t *testing.T, addr, topic, prefix string, n int, m model) {
	t.Helper()
	p, err := sarama.NewSyncProducer([]string{addr}, killConfig(true))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for i := range n {
		v := fmt.Sprintf("%s-%d", prefix, i)
		part, off, err := p.SendMessage(&sarama.ProducerMessage{Topic: topic, Partition: int32(i % killParts), Value: sarama.StringEncoder(v)})
		if err != nil {
			t.Fatalf("produce %s to %s: %v", v, topic, err)
		}
		m.add(topic, part, off, v)
	}
}

// kgoProduce is saramaProduce through franz-go (idempotent, acks=all by
// default), with AllowAutoTopicCreation.
func kgoProduce(t *testing.T, addr, topic, prefix string, n int, m model) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.AllowAutoTopicCreation(), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	for i := range n {
		v := fmt.Sprintf("%s-%d", prefix, i)
		r, err := cl.ProduceSync(ctx, &kgo.Record{Topic: topic, Partition: int32(i % killParts), Value: []byte(v)}).First()
		if err != nil {
			t.Fatalf("produce %s to %s: %v", v, topic, err)
		}
		m.add(topic, r.Partition, r.Offset, v)
	}
}

// autoCreate makes the broker create topics from a metadata request alone,
// as a client that looks a topic up before producing does.
func autoCreate(t *testing.T, addr string, topics ...string) {
	t.Helper()
	c, err := sarama.NewClient([]string{addr}, killConfig(true))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.RefreshMetadata(topics...); err != nil {
		t.Fatalf("metadata for %v: %v", topics, err)
	}
}

// createTopic creates topic with a CreateTopics request.
func createTopic(t *testing.T, addr, topic string) {
	t.Helper()
	admin, err := sarama.NewClusterAdmin([]string{addr}, killConfig(false))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if err := admin.CreateTopic(topic, &sarama.TopicDetail{NumPartitions: killParts, ReplicationFactor: 1}, false); err != nil {
		t.Fatalf("create %s: %v", topic, err)
	}
}

// highWatermarks reads topic's partitions and their high watermarks
// through a client that never creates topics: a topic the broker forgot
// is an error here, not a new empty topic.
func highWatermarks(t *testing.T, addr, topic string) []int64 {
	t.Helper()
	c, err := sarama.NewClient([]string{addr}, killConfig(false))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	parts, err := c.Partitions(topic)
	if err != nil {
		t.Fatalf("topic %s after restart: %v", topic, err)
	}
	if len(parts) != killParts {
		t.Fatalf("topic %s has partitions %v, want %d", topic, parts, killParts)
	}
	hw := make([]int64, killParts)
	for _, p := range parts {
		if hw[p], err = c.GetOffset(topic, p, sarama.OffsetNewest); err != nil {
			t.Fatalf("high watermark of %s/%d: %v", topic, p, err)
		}
	}
	return hw
}

// readAll reads every record of topic's partition p below its high
// watermark hw, in order, with a plain Sarama consumer.
func readAll(t *testing.T, addr, topic string, p int32, hw int64) []rec {
	t.Helper()
	if hw == 0 {
		return nil
	}
	cfg := killConfig(false)
	// Closing waits for the fetch in flight: keep its long poll short.
	cfg.Consumer.MaxWaitTime = 10 * time.Millisecond
	c, err := sarama.NewConsumer([]string{addr}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pc, err := c.ConsumePartition(topic, p, sarama.OffsetOldest)
	if err != nil {
		t.Fatalf("consume %s/%d: %v", topic, p, err)
	}
	defer pc.Close()
	var got []rec
	timeout := time.After(time.Minute)
	for {
		select {
		case m := <-pc.Messages():
			got = append(got, rec{m.Offset, string(m.Value)})
			if m.Offset >= hw-1 {
				return got
			}
		case err := <-pc.Errors():
			t.Fatalf("consume %s/%d: %v", topic, p, err)
		case <-timeout:
			t.Fatalf("%s/%d: %d records read of high watermark %d", topic, p, len(got), hw)
		}
	}
}

// checkModel asserts that the broker serves exactly the acknowledged records of
// every topic in m, at their offsets, and that its high watermarks are the
// ones after the last acknowledged record.
func checkModel(t *testing.T, addr string, m model) {
	t.Helper()
	for _, topic := range slices.Sorted(mapKeys(m)) {
		hw := highWatermarks(t, addr, topic)
		for p := range int32(killParts) {
			want := m[topic][p]
			wantHW := int64(0)
			if len(want) > 0 {
				wantHW = want[len(want)-1].offset + 1
			}
			if hw[p] != wantHW {
				t.Errorf("%s/%d: high watermark %d, want %d (%d records acknowledged)", topic, p, hw[p], wantHW, len(want))
				continue
			}
			if got := readAll(t, addr, topic, p, hw[p]); !slices.Equal(got, want) {
				t.Errorf("%s/%d: served %d records %v, acknowledged %d %v", topic, p, len(got), got, len(want), want)
			}
		}
	}
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// consumeGroup reads every record of topics through a Sarama consumer group
// (the adapters' stack: Sarama, protocol V2_1, read_committed) and asserts
// it gets exactly the acknowledged records of m and no error at all (a
// wrongly indexed segment shows as "invalid byteslice length").
func consumeGroup(t *testing.T, addr, group string, m model, topics ...string) {
	t.Helper()
	cfg := killConfig(false)
	cfg.Consumer.Return.Errors = true
	cfg.Consumer.IsolationLevel = sarama.ReadCommitted
	g, err := sarama.NewConsumerGroup([]string{addr}, group, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	want := 0
	for _, topic := range topics {
		for _, rs := range m[topic] {
			want += len(rs)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	if want == 0 {
		t.Fatalf("group %s: nothing to consume in %v", group, topics)
	}
	h := &collector{want: want, cancel: cancel, got: model{}, seen: map[string]bool{}}
	errs := make(chan error, 1)
	go func() {
		for err := range g.Errors() {
			select {
			case errs <- err:
			default:
			}
			cancel()
		}
	}()
	for ctx.Err() == nil {
		if err := g.Consume(ctx, topics, h); err != nil && ctx.Err() == nil {
			t.Fatalf("consumer group: %v", err)
		}
	}
	select {
	case err := <-errs:
		t.Fatalf("consumer group error: %v", err)
	default:
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, topic := range topics {
		for p := range killParts {
			got := h.got[topic]
			var gp []rec
			if got != nil {
				gp = got[p]
			}
			slices.SortFunc(gp, func(a, b rec) int { return int(a.offset - b.offset) })
			if !slices.Equal(gp, m[topic][p]) {
				t.Errorf("group %s, %s/%d: consumed %d records, acknowledged %d", group, topic, p, len(gp), len(m[topic][p]))
			}
		}
	}
}

// collector gathers records until it has want distinct ones (a record
// delivered again after a rebalance counts once).
type collector struct {
	mu     sync.Mutex
	want   int
	seen   map[string]bool
	got    model
	cancel func()
}

func (*collector) Setup(sarama.ConsumerGroupSession) error   { return nil }
func (*collector) Cleanup(sarama.ConsumerGroupSession) error { return nil }
func (c *collector) ConsumeClaim(s sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	for msg := range claim.Messages() {
		c.mu.Lock()
		if key := fmt.Sprintf("%s/%d/%d", msg.Topic, msg.Partition, msg.Offset); !c.seen[key] {
			c.seen[key] = true
			c.got.add(msg.Topic, msg.Partition, msg.Offset, string(msg.Value))
		}
		done := len(c.seen) >= c.want
		c.mu.Unlock()
		s.MarkMessage(msg, "")
		if done {
			c.cancel()
		}
	}
	return nil
}

// The issue-24 report: a topic created by a producer's metadata request
// (auto-create), records acknowledged, SIGKILL. The broker started next on
// the directory and address has the topic with every record at its offset
// and the same high watermarks; records produced after the restart get the
// next offsets; a consumer group reads them all without an error.
func TestKillKeepsAutoCreatedTopic(t *testing.T) {
	testenv.Integration(t)
	for _, client := range []struct {
		name    string
		produce func(t *testing.T, addr, topic, prefix string, n int, m model)
		flags   []string
	}{
		{"sarama", saramaProduce, nil},
		{"franz-go", kgoProduce, nil},
		{"franz-go, 3 brokers", kgoProduce, []string{"--brokers", "3"}},
	} {
		t.Run(client.name, func(t *testing.T) {
			dir := t.TempDir()
			b := startBroker(t, dir, "127.0.0.1:0", client.flags...)
			m := model{}
			client.produce(t, b.addr, "auto", "before", 30, m)
			before := highWatermarks(t, b.addr, "auto")

			b = b.restart(t, dir)
			if after := highWatermarks(t, b.addr, "auto"); !slices.Equal(after, before) {
				t.Fatalf("high watermarks %v before the kill, %v after", before, after)
			}
			checkModel(t, b.addr, m)
			client.produce(t, b.addr, "auto", "after", 9, m)
			for p := range int32(killParts) {
				rs := m["auto"][p]
				for i, r := range rs {
					if r.offset != int64(i) {
						t.Fatalf("auto/%d: record %d (%s) acknowledged at offset %d", p, i, r.value, r.offset)
					}
				}
			}
			checkModel(t, b.addr, m)
			consumeGroup(t, b.addr, "g-"+strings.ReplaceAll(client.name, " ", ""), m, "auto")
		})
	}
}

// topic makes m know topic, with no record yet.
func (m model) topic(name string) {
	if m[name] == nil {
		m[name] = make([][]rec, killParts)
	}
}

// Topics auto-created in different orders, from metadata alone or by a
// producer, mixed with CreateTopics-made ones, and the broker killed right
// after an auto-create (no record yet), after records, and after a
// CreateTopics that rewrote the topic list: each restart has every topic,
// every record at its offset and the high watermarks after them.
func TestKillMatrix(t *testing.T) {
	testenv.Integration(t)
	dir := t.TempDir()
	b := startBroker(t, dir, "127.0.0.1:0")
	m := model{}

	// Killed right after the auto-create, before any record.
	autoCreate(t, b.addr, "m-b", "m-a")
	m.topic("m-a")
	m.topic("m-b")
	b = b.restart(t, dir)
	checkModel(t, b.addr, m)

	// Killed after records, to old and new auto-created topics and to a
	// CreateTopics-made one.
	createTopic(t, b.addr, "m-made")
	kgoProduce(t, b.addr, "m-c", "c1", 12, m) // created by this produce
	saramaProduce(t, b.addr, "m-a", "a1", 9, m)
	kgoProduce(t, b.addr, "m-made", "made1", 6, m)
	b = b.restart(t, dir)
	checkModel(t, b.addr, m)

	// An auto-created topic, then a CreateTopics (which used to be what
	// saved the auto-created ones), then more records; then the other
	// order.
	saramaProduce(t, b.addr, "m-d", "d1", 6, m)
	createTopic(t, b.addr, "m-made2")
	m.topic("m-made2")
	saramaProduce(t, b.addr, "m-d", "d2", 6, m)
	b = b.restart(t, dir)
	checkModel(t, b.addr, m)
	createTopic(t, b.addr, "m-made3")
	m.topic("m-made3")
	autoCreate(t, b.addr, "m-f", "m-e")
	m.topic("m-f")
	kgoProduce(t, b.addr, "m-e", "e1", 6, m)
	b = b.restart(t, dir)
	checkModel(t, b.addr, m)

	// Killed twice in a row with nothing in between, then once more
	// after records to every topic.
	b = b.restart(t, dir)
	for _, topic := range slices.Sorted(mapKeys(m)) {
		saramaProduce(t, b.addr, topic, "last", 3, m)
	}
	b = b.restart(t, dir)
	checkModel(t, b.addr, m)
	consumeGroup(t, b.addr, "g-matrix", m, slices.Sorted(mapKeys(m))...)
}

// flood is what producers flooding the broker sent and were acknowledged.
type flood struct {
	mu     sync.Mutex
	m      model
	sent   map[string]bool
	acked  map[string]int // per producer
	failed map[string][]error
	tick   chan struct{}
	quota  map[string]chan struct{} // one token per record a producer may send
}

// grant lets every producer send n more records.
func (f *flood) grant(n int) {
	for _, q := range f.quota {
		for range n {
			q <- struct{}{}
		}
	}
}

func (f *flood) send(v string) {
	f.mu.Lock()
	f.sent[v] = true
	f.mu.Unlock()
}

func (f *flood) ack(producer, topic string, p int32, offset int64, v string) {
	f.mu.Lock()
	f.m.add(topic, p, offset, v)
	f.acked[producer]++
	f.mu.Unlock()
	select {
	case f.tick <- struct{}{}:
	default:
	}
}

func (f *flood) fail(producer string, err error) {
	f.mu.Lock()
	f.failed[producer] = append(f.failed[producer], err)
	f.mu.Unlock()
}

func (f *flood) count(producer string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.acked[producer]
}

// waitAcks waits until each of producers has more acks than now.
func (f *flood) waitAcks(t *testing.T, more int, producers ...string) {
	t.Helper()
	want := map[string]int{}
	for _, p := range producers {
		want[p] = f.count(p) + more
	}
	timeout := time.After(2 * time.Minute)
	for {
		done := true
		for _, p := range producers {
			done = done && f.count(p) >= want[p]
		}
		if done {
			return
		}
		select {
		case <-f.tick:
		case <-timeout:
			f.mu.Lock()
			defer f.mu.Unlock()
			t.Fatalf("producers stopped: acks %v, wanted %v; failures %v", f.acked, want, f.failed)
		}
	}
}

// floodSarama produces to topics from a Sarama async producer (50 in
// flight, as many records as f grants) until stop is closed; the returned
// function waits for every outcome.
func floodSarama(t *testing.T, addr string, f *flood, stop chan struct{}, topics ...string) func() {
	cfg := killConfig(true)
	cfg.Producer.Return.Errors = true
	cfg.Producer.Retry.Max = 200 // 10 s of 50 ms backoffs: a restart is shorter
	p, err := sarama.NewAsyncProducer([]string{addr}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	sem := make(chan struct{}, 50)
	quota := f.quota["sarama"]
	done := make(chan struct{})
	go func() {
		defer close(done)
		succ, errs := p.Successes(), p.Errors()
		for succ != nil || errs != nil {
			select {
			case m, ok := <-succ:
				if !ok {
					succ = nil
					continue
				}
				f.ack("sarama", m.Topic, m.Partition, m.Offset, m.Metadata.(string))
				<-sem
			case e, ok := <-errs:
				if !ok {
					errs = nil
					continue
				}
				f.fail("sarama", e.Err)
				<-sem
			}
		}
	}()
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				p.AsyncClose()
				return
			case <-quota:
			}
			sem <- struct{}{}
			v := fmt.Sprintf("s-%d", i)
			f.send(v)
			p.Input() <- &sarama.ProducerMessage{Topic: topics[i%len(topics)], Partition: int32(i % killParts), Value: sarama.StringEncoder(v), Metadata: v}
		}
	}()
	return func() { <-done }
}

// floodKgo is floodSarama through franz-go (idempotent).
func floodKgo(t *testing.T, addr string, f *flood, stop chan struct{}, topics ...string) func() {
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.AllowAutoTopicCreation(), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	sem := make(chan struct{}, 50)
	quota := f.quota["franz-go"]
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer cl.Close()
		for i := 0; ; i++ {
			select {
			case <-stop:
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				if err := cl.Flush(ctx); err != nil {
					f.fail("franz-go", err)
				}
				return
			case <-quota:
			}
			sem <- struct{}{}
			v := fmt.Sprintf("k-%d", i)
			f.send(v)
			cl.Produce(context.Background(), &kgo.Record{Topic: topics[i%len(topics)], Partition: int32(i % killParts), Value: []byte(v)}, func(r *kgo.Record, err error) {
				if err != nil {
					f.fail("franz-go", err)
				} else {
					f.ack("franz-go", r.Topic, r.Partition, r.Offset, v)
				}
				<-sem
			})
		}
	}()
	return func() { <-done }
}

// Producers (Sarama, and franz-go's idempotent one) flood the broker while
// it is killed, started again, stopped cleanly, started again, killed and
// started again, without ever stopping: every record acknowledged at any
// point is served at its offset afterwards, the logs hold no offset twice
// and nothing that was never sent, and a consumer group reads them all.
func TestKillDuringFlood(t *testing.T) {
	testenv.Integration(t)
	dir := t.TempDir()
	b := startBroker(t, dir, "127.0.0.1:0")
	createTopic(t, b.addr, "f-made")
	f := &flood{m: model{}, sent: map[string]bool{}, acked: map[string]int{}, failed: map[string][]error{}, tick: make(chan struct{}, 1),
		quota: map[string]chan struct{}{"sarama": make(chan struct{}, 2000), "franz-go": make(chan struct{}, 2000)}}
	stop := make(chan struct{})
	// f-sarama and f-kgo are auto-created by the flood itself.
	waitSarama := floodSarama(t, b.addr, f, stop, "f-sarama", "f-made")
	waitKgo := floodKgo(t, b.addr, f, stop, "f-kgo", "f-made")

	// Each stage lets every producer send 400 records and acts once 300
	// more are acknowledged, so that about 100 are in flight.
	stage := func() {
		f.grant(400)
		f.waitAcks(t, 300, "sarama", "franz-go")
	}
	stage()
	b = b.restart(t, dir) // SIGKILL in the middle of the flood
	stage()
	if err := b.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	_ = b.cmd.Wait()
	b = startBroker(t, dir, b.addr)
	stage()
	b = b.restart(t, dir) // SIGKILL again, after a clean stop
	stage()
	close(stop)
	waitSarama()
	waitKgo()
	b = b.restart(t, dir) // and once more with nothing in flight

	f.mu.Lock()
	defer f.mu.Unlock()
	t.Logf("acknowledged %v; failed %d (sarama) and %d (franz-go)", f.acked, len(f.failed["sarama"]), len(f.failed["franz-go"]))
	served := model{}
	dups := 0
	for _, topic := range []string{"f-sarama", "f-kgo", "f-made"} {
		served.topic(topic)
		hw := highWatermarks(t, b.addr, topic)
		for p := range int32(killParts) {
			got := readAll(t, b.addr, topic, p, hw[p])
			seen := map[string]bool{}
			for i, r := range got {
				if r.offset != int64(i) || !f.sent[r.value] {
					t.Fatalf("%s/%d: record %d is %v: not at its offset, or never sent", topic, p, i, r)
				}
				if seen[r.value] {
					dups++ // a retry of a batch whose ack the crash lost
				}
				seen[r.value] = true
			}
			for _, r := range f.m[topic][p] {
				if r.offset >= hw[p] || got[r.offset] != r {
					t.Errorf("%s/%d: acknowledged %v, not served (high watermark %d)", topic, p, r, hw[p])
				}
			}
			served[topic][p] = got
		}
	}
	t.Logf("served again after a lost ack: %d records", dups)
	consumeGroup(t, b.addr, "g-flood", served, "f-sarama", "f-kgo", "f-made")
}

// A batch the kill cut short, and other damaged tails, are cut off when
// the broker starts again, in auto-created and CreateTopics-made topics
// alike: the records before them are served, the next record gets the
// next offset, and a consumer group reads them all without an error.
func TestKillTornTail(t *testing.T) {
	testenv.Integration(t)
	dir := t.TempDir()
	b := startBroker(t, dir, "127.0.0.1:0")
	m := model{}
	createTopic(t, b.addr, "torn-made")
	saramaProduce(t, b.addr, "torn", "a", 30, m)
	saramaProduce(t, b.addr, "torn-made", "a", 30, m)
	b.kill(t)
	for _, topic := range []string{"torn", "torn-made"} {
		// kfake's layout: partitions/<topic>-<partition>/<base offset>.dat.
		seg := func(p int) string { return filepath.Join(dir, "partitions", fmt.Sprintf("%s-%d", topic, p), "0.dat") }
		raw, err := os.ReadFile(seg(0))
		if err != nil {
			t.Fatal(err)
		}
		batch := raw[:12+int(binary.BigEndian.Uint32(raw[8:12]))]
		zeroed := slices.Clone(batch)
		clear(zeroed[61:])
		for p, tail := range [][]byte{
			batch[:40], // a write cut short: the length says more follows
			zeroed,     // a whole batch whose records never reached the disk
			{0, 0, 0},  // less than a batch header
		} {
			f, err := os.OpenFile(seg(p), os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.Write(tail); err != nil {
				t.Fatal(err)
			}
			_ = f.Close()
		}
	}
	b = startBroker(t, dir, b.addr)
	checkModel(t, b.addr, m)
	saramaProduce(t, b.addr, "torn", "b", 9, m)
	kgoProduce(t, b.addr, "torn-made", "b", 9, m)
	for _, topic := range []string{"torn", "torn-made"} {
		for p, rs := range m[topic] {
			if last := rs[len(rs)-1]; last.offset != int64(len(rs)-1) {
				t.Fatalf("%s/%d: record %s acknowledged at offset %d, want %d", topic, p, last.value, last.offset, len(rs)-1)
			}
		}
	}
	checkModel(t, b.addr, m)
	consumeGroup(t, b.addr, "g-torn", m, "torn", "torn-made")
	b = b.restart(t, dir)
	checkModel(t, b.addr, m)
}

// startLegacy runs a broker as devkafka was before issue 24's fix, on dir;
// segment is its segment size in bytes ("" for kfake's default).
func startLegacy(t *testing.T, dir, segment string) *broker {
	t.Helper()
	cmd, addr := startChildEnv(t, legacyDirEnv+"="+dir, legacySegmentEnv+"="+segment)
	return &broker{cmd: cmd, addr: addr}
}

// A data directory a devkafka before issue 24's fix left behind: the next
// broker serves what was acknowledged in it. A topic the old broker forgot
// is adopted with its records; a log where the old broker, having forgotten
// the topic, appended records numbered from 0 again after the earlier ones
// is renumbered (its records keep their order, the later ones after the
// earlier), listed or not; one that did so across segments is refused with
// an error that names it and says what to do.
func TestStartRepairsLegacyDataDir(t *testing.T) {
	testenv.Integration(t)
	t.Run("forgotten topic", func(t *testing.T) {
		dir := t.TempDir()
		old := startLegacy(t, dir, "")
		m := model{}
		saramaProduce(t, old.addr, "legacy", "a", 30, m)
		old.kill(t)

		b := startBroker(t, dir, "127.0.0.1:0")
		checkModel(t, b.addr, m)
		kgoProduce(t, b.addr, "legacy", "b", 6, m)
		checkModel(t, b.addr, m)
		b = b.restart(t, dir)
		checkModel(t, b.addr, m)
		consumeGroup(t, b.addr, "g-legacy", m, "legacy")
	})
	for _, listed := range []bool{false, true} {
		t.Run(fmt.Sprintf("restarted log, listed %t", listed), func(t *testing.T) {
			dir := t.TempDir()
			old := startLegacy(t, dir, "")
			first, second := model{}, model{}
			saramaProduce(t, old.addr, "legacy", "a", 30, first)
			old.kill(t)
			old = startLegacy(t, dir, "")
			saramaProduce(t, old.addr, "legacy", "b", 9, second)
			if listed {
				// A CreateTopics saves the list, the forgotten topic in it.
				createTopic(t, old.addr, "other")
			}
			old.kill(t)
			for p, rs := range second["legacy"] {
				if rs[0].offset != 0 {
					t.Fatalf("the old broker remembered legacy/%d: offset %d", p, rs[0].offset)
				}
			}

			// What the new broker must serve: the first records, then the
			// second ones after them.
			m := model{}
			for p := range int32(killParts) {
				for _, r := range first["legacy"][p] {
					m.add("legacy", p, r.offset, r.value)
				}
				n := int64(len(first["legacy"][p]))
				for _, r := range second["legacy"][p] {
					m.add("legacy", p, n+r.offset, r.value)
				}
			}
			b := startBroker(t, dir, "127.0.0.1:0")
			checkModel(t, b.addr, m)
			saramaProduce(t, b.addr, "legacy", "c", 6, m)
			checkModel(t, b.addr, m)
			b = b.restart(t, dir)
			checkModel(t, b.addr, m)
			consumeGroup(t, b.addr, "g-legacy", m, "legacy")
		})
	}
	t.Run("restarted log across segments", func(t *testing.T) {
		dir := t.TempDir()
		old := startLegacy(t, dir, "400") // a few batches a segment
		saramaProduce(t, old.addr, "legacy", "a", 30, model{})
		old.kill(t)
		old = startLegacy(t, dir, "400")
		saramaProduce(t, old.addr, "legacy", "b", 3, model{})
		old.kill(t)
		_, err := devkafka.Start(devkafka.Config{DataDir: dir})
		pdir := filepath.Join(dir, "partitions", "legacy-0")
		if err == nil || !strings.Contains(err.Error(), pdir) || !strings.Contains(err.Error(), "move the directory away") {
			t.Fatalf("start on a log restarted across segments: %v", err)
		}
	})
}
