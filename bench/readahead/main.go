// Command readahead measures what the key-ordered Kafka subscriber holds in
// memory while one key is held back: the case a hostile or unlucky topic
// makes (large records, all of one key, whose first message fails again
// and again), bounded by kafka.read_ahead_bytes.
//
// Method. `antidote devkafka` as a process of its own (so the heap measured
// is the consumer's only), one partition, -n records of -size bytes, all of
// one record key. A consumer (adapters.Open, no router) nacks every message
// it gets: the key's first message, over and over, while the subscriber
// reads ahead behind it. Its Go heap (after a GC, every 500 ms, for -hold)
// is reported as the peak above the heap before subscribing, for
// kafka.concurrency 1 (watermill-kafka's subscriber) and for the
// key-ordered subscriber with each -read-ahead value.
//
//	go run ./bench/readahead
//	go run ./bench/readahead -n 1100 -size 921600 -read-ahead 0,1099511627776
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/adapters"
)

func main() {
	n := flag.Int("n", 1100, "records published, all of one key")
	size := flag.Int("size", 900<<10, "bytes per record value")
	conc := flag.Int("concurrency", 8, "kafka.concurrency of the key-ordered subscriber")
	readAheads := flag.String("read-ahead", "0,1099511627776", "comma-separated kafka.read_ahead_bytes values (0: the default, 64 MiB; 1 TiB: no byte bound, only the record count)")
	hold := flag.Duration("hold", 8*time.Second, "how long the key is held back")
	flag.Parse()

	addr, stop, err := startBroker()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer stop()
	fmt.Printf("%d records of %d KiB, one key, held back for %s; kafka.concurrency %d\n\n", *n, *size>>10, *hold, *conc)
	fmt.Println("| subscriber | kafka.read_ahead_bytes | peak heap above baseline |")
	fmt.Println("|---|---:|---:|")
	run := func(label string, concurrency, readAhead int) {
		mib, err := measure(addr, *n, *size, concurrency, readAhead, *hold)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		ra := "—"
		if concurrency > 1 {
			ra = strconv.Itoa(readAhead)
			if readAhead == 0 {
				ra = "default (64 MiB)"
			}
		}
		fmt.Printf("| %s | %s | %d MiB |\n", label, ra, mib)
	}
	run("watermill-kafka (concurrency 1)", 1, 0)
	for _, s := range strings.Split(*readAheads, ",") {
		ra, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			fmt.Fprintf(os.Stderr, "-read-ahead %q: %v\n", s, err)
			os.Exit(2)
		}
		run(fmt.Sprintf("key-ordered (concurrency %d)", *conc), *conc, ra)
	}
}

// startBroker runs `go run ./cmd/antidote devkafka` and returns its address.
func startBroker() (string, func(), error) {
	cmd := exec.Command("go", "run", "./cmd/antidote", "devkafka", "--addr", "127.0.0.1:0", "--partitions", "1")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return "", nil, err
	}
	// Its own process group, so that stopping it stops the broker that
	// go run started.
	setProcessGroup(cmd)
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	stop := func() { killGroup(cmd); _ = cmd.Wait() }
	line, err := bufio.NewReader(out).ReadString('\n')
	f := strings.Fields(line)
	if err != nil || len(f) < 4 || f[1] != "listening" {
		stop()
		return "", nil, fmt.Errorf("devkafka: unexpected first line %q (%v)", line, err)
	}
	return f[3], stop, nil
}

func measure(addr string, n, size, concurrency, readAhead int, hold time.Duration) (uint64, error) {
	topic := "readahead_" + watermill.NewShortUUID()
	cfg := adapters.Config{Broker: adapters.KindKafka, Kafka: adapters.KafkaConfig{Brokers: []string{addr},
		ConsumerGroup: "readahead-" + topic, Concurrency: concurrency, Partitions: 1, ReadAheadBytes: readAhead,
		NackResendSleep: 50 * time.Millisecond, MaxMessageBytes: size + 64<<10}}
	b, err := adapters.Open(context.Background(), cfg, watermill.NopLogger{})
	if err != nil {
		return 0, err
	}
	defer b.Close()
	val := make([]byte, size)
	for range n {
		m := message.NewMessage(watermill.NewUUID(), val)
		m.Metadata.Set("partition_key", "k")
		if err := b.Publisher.Publish(topic, m); err != nil {
			return 0, err
		}
	}
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	base := ms.HeapAlloc
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, err := b.Subscriber.Subscribe(ctx, topic)
	if err != nil {
		return 0, err
	}
	end := time.After(hold)
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	var peak uint64
	for {
		select {
		case m := <-ch:
			m.Nack()
		case <-tick.C:
			runtime.GC()
			runtime.ReadMemStats(&ms)
			if ms.HeapAlloc > base && ms.HeapAlloc-base > peak {
				peak = ms.HeapAlloc - base
			}
		case <-end:
			return peak >> 20, nil
		}
	}
}
