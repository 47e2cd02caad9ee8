// Command keyed measures a slow handler on Kafka (issue 17): Watermill's
// one-at-a-time consumption (kafka.concurrency 1: watermill-kafka's
// subscriber, one message per partition at a time) against key-ordered
// concurrency (kafka.concurrency N, kafka.ordering key), in the same run,
// for messages spread over 1, 10, 100 and 10,000 record keys.
//
// Method. The embedded broker (4 partitions). For each key count and mode a
// fresh topic gets -n messages first (key i mod K, numbered per key in
// publish order; the messages of one key go through one publishing
// goroutine, so the partition holds them in that order). Then one consumer
// (adapters.Open and a bare Watermill router, no middleware: what is
// measured is the consumption, not Antidote's stack) handles them; the
// handler sleeps -work (default 5ms: a database round trip). The time is
// from the first message handled to the last, so neither publishing nor
// the group's join is in it. The handler counts order violations: a
// message of a key started while another of its key runs, or before the
// one numbered just before it is done. It must be 0.
//
//	go run ./bench/keyed
//	go run ./bench/keyed -keys 100 -n 4000 -concurrency 32
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/bench/internal/benchutil"
	"github.com/antidote-mq/antidote/devkafka"
)

const seqKey = "bench.key_seq"

func main() {
	n := flag.Int("n", 10000, "messages per measurement")
	keyList := flag.String("keys", "1,10,100,10000", "comma-separated key counts")
	conc := flag.Int("concurrency", 64, "kafka.concurrency of the key-ordered mode")
	partitions := flag.Int("partitions", 4, "partitions of the topics")
	work := flag.Duration("work", 5*time.Millisecond, "handler sleep per message")
	timeout := flag.Duration("timeout", 5*time.Minute, "give up a measurement after this long")
	flag.Parse()
	var keys []int
	for _, s := range strings.Split(*keyList, ",") {
		k, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || k < 1 {
			fmt.Fprintf(os.Stderr, "-keys: %q is not a positive count\n", s)
			os.Exit(2)
		}
		keys = append(keys, k)
	}
	k, err := devkafka.Start(devkafka.Config{Partitions: *partitions})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer k.Close()
	fmt.Printf("slow handler on Kafka: %d messages, %d partitions, handler sleeps %s; one-at-a-time (kafka.concurrency 1) against key-ordered (kafka.concurrency %d)\n\n",
		*n, *partitions, *work, *conc)
	fmt.Printf("| keys | one-at-a-time | msg/s | key-ordered | msg/s | speed-up | order violations (1 / N) |\n")
	fmt.Printf("|---:|---:|---:|---:|---:|---:|---:|\n")
	failed := false
	for _, keyCount := range keys {
		var res [2]result
		for i, c := range []int{1, *conc} {
			res[i], err = measure(k.Addrs(), *partitions, *n, keyCount, c, *work, *timeout)
			if err != nil {
				fmt.Fprintf(os.Stderr, "keys %d, concurrency %d: %v\n", keyCount, c, err)
				os.Exit(1)
			}
			failed = failed || res[i].violations > 0
		}
		fmt.Printf("| %d | %.2f s | %.0f | %.2f s | %.0f | %.1fx | %d / %d |\n", keyCount,
			res[0].elapsed.Seconds(), float64(*n)/res[0].elapsed.Seconds(),
			res[1].elapsed.Seconds(), float64(*n)/res[1].elapsed.Seconds(),
			res[0].elapsed.Seconds()/res[1].elapsed.Seconds(), res[0].violations, res[1].violations)
	}
	if failed {
		fmt.Fprintln(os.Stderr, "order violations: per-key order was broken")
		os.Exit(1)
	}
}

type result struct {
	elapsed    time.Duration
	violations int64
}

func measure(brokers []string, partitions, n, keys, concurrency int, work, timeout time.Duration) (result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	id := watermill.NewShortUUID()
	topic := "keyed_" + id
	cfg := adapters.Config{Broker: adapters.KindKafka, Kafka: adapters.KafkaConfig{
		Brokers: brokers, ConsumerGroup: "keyed-" + id, Partitions: partitions, Concurrency: concurrency,
	}}
	b, err := adapters.Open(ctx, cfg, watermill.NopLogger{})
	if err != nil {
		return result{}, err
	}
	defer b.Close()
	if err := publish(b.Publisher, topic, n, keys); err != nil {
		return result{}, err
	}

	var (
		mu         sync.Mutex
		done       = map[string]int{}
		busy       = map[string]bool{}
		violations atomic.Int64
		handled    atomic.Int64
		first      atomic.Int64
		last       atomic.Int64
	)
	finished := make(chan struct{})
	r, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, watermill.NopLogger{})
	if err != nil {
		return result{}, err
	}
	r.AddConsumerHandler("keyed", topic, b.Subscriber, func(m *message.Message) error {
		first.CompareAndSwap(0, time.Now().UnixNano())
		key := m.Metadata.Get("partition_key")
		seq, _ := strconv.Atoi(m.Metadata.Get(seqKey))
		mu.Lock()
		if busy[key] || seq != done[key]+1 {
			violations.Add(1)
		}
		busy[key] = true
		mu.Unlock()
		benchutil.Work(work, true)
		mu.Lock()
		busy[key] = false
		done[key] = max(done[key], seq)
		mu.Unlock()
		last.Store(time.Now().UnixNano())
		if handled.Add(1) == int64(n) {
			close(finished)
		}
		return nil
	})
	rctx, stop := context.WithCancel(ctx)
	runDone := make(chan error, 1)
	go func() { runDone <- r.Run(rctx) }()
	defer func() { stop(); <-runDone }()
	select {
	case <-finished:
	case <-ctx.Done():
		return result{}, fmt.Errorf("handled %d of %d in %s", handled.Load(), n, timeout)
	}
	return result{elapsed: time.Duration(last.Load() - first.Load()), violations: violations.Load()}, nil
}

// publish sends n messages over keys keys ("k0".."k<keys-1>"), numbered per
// key; each key's messages go through one of 4 goroutines, in order.
func publish(pub message.Publisher, topic string, n, keys int) error {
	const workers, batch = 4, 100
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var msgs []*message.Message
			per := map[int]int{}
			for i := range n {
				key := i % keys
				if key%workers != w {
					continue
				}
				per[key]++
				m := message.NewMessage(watermill.NewUUID(), []byte("x"))
				m.Metadata.Set("partition_key", "k"+strconv.Itoa(key))
				m.Metadata.Set(seqKey, strconv.Itoa(per[key]))
				msgs = append(msgs, m)
				if len(msgs) == batch {
					if err := pub.Publish(topic, msgs...); err != nil {
						errs <- err
						return
					}
					msgs = nil
				}
			}
			if len(msgs) > 0 {
				if err := pub.Publish(topic, msgs...); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}
