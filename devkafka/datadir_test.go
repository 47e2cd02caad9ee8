package devkafka_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/antidote-mq/antidote/devkafka"
	"github.com/antidote-mq/antidote/internal/testenv"
)

// childDirEnv, when set, makes the test binary a broker process on that
// data directory (see TestMain): the kill test SIGKILLs it, as a crash.
const childDirEnv = "DEVKAFKA_TEST_CHILD_DIR"

// legacyDirEnv, when set, makes the test binary a bare kfake broker on that
// directory configured as devkafka was before issue 24's fix (kfake's own
// auto-creation), and legacySegmentEnv its segment size.
const (
	legacyDirEnv     = "DEVKAFKA_TEST_LEGACY_DIR"
	legacySegmentEnv = "DEVKAFKA_TEST_LEGACY_SEGMENT"
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(legacyDirEnv); dir != "" {
		// What devkafka ran before auto-created topics were saved.
		opts := []kfake.Opt{kfake.DataDir(dir), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(killParts)}
		if n := os.Getenv(legacySegmentEnv); n != "" {
			opts = append(opts, kfake.BrokerConfigs(map[string]string{"log.segment.bytes": n}))
		}
		c, err := kfake.NewCluster(opts...)
		if err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		fmt.Println("listening", c.ListenAddrs()[0])
		select {}
	}
	if dir := os.Getenv(childDirEnv); dir != "" {
		b, err := devkafka.Start(devkafka.Config{Partitions: 1, DataDir: dir})
		if err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		fmt.Println("listening", b.Addrs()[0])
		select {}
	}
	code := m.Run()
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	os.Exit(code)
}

const (
	dataTopic = "kept"
	dataGroup = "kept-group"
	records   = 50
	committed = 20
)

// A broker started again on its data directory after Close has the
// topic, every record and the group's committed offset.
func TestDataDirResumesAfterClose(t *testing.T) {
	testenv.Integration(t)
	dir := t.TempDir()
	b, err := devkafka.Start(devkafka.Config{Partitions: 1, DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	fill(t, b.Addrs()[0])
	b.Close()

	b, err = devkafka.Start(devkafka.Config{Partitions: 1, DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	check(t, b.Addrs()[0])
}

// A broker process killed with SIGKILL loses nothing acknowledged: its
// successor on the same directory serves every record and the commit.
func TestDataDirSurvivesKill(t *testing.T) {
	dir := t.TempDir()
	child, addr := startChild(t, dir)
	fill(t, addr)
	if err := child.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = child.Wait()

	_, addr = startChild(t, dir)
	check(t, addr)
}

// Two brokers on one directory would overwrite each other's state: the
// second is refused, by name, and the directory is free again after Close.
func TestDataDirOneBrokerAtATime(t *testing.T) {
	dir := t.TempDir()
	b, err := devkafka.Start(devkafka.Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := devkafka.Start(devkafka.Config{DataDir: dir}); err == nil || !strings.Contains(err.Error(), "in use by another running broker") || !strings.Contains(err.Error(), dir) {
		t.Fatalf("second broker on %s: %v", dir, err)
	}
	b.Close()
	b, err = devkafka.Start(devkafka.Config{DataDir: dir})
	if err != nil {
		t.Fatalf("after Close: %v", err)
	}
	b.Close()

	// A lock left by a killed process does not count: the kernel drops it.
	child, _ := startChild(t, dir)
	if _, err := devkafka.Start(devkafka.Config{DataDir: dir}); err == nil {
		t.Fatal("started beside a running child broker")
	}
	_ = child.Process.Kill()
	_ = child.Wait()
	b, err = devkafka.Start(devkafka.Config{DataDir: dir})
	if err != nil {
		t.Fatalf("after the holder was killed: %v", err)
	}
	b.Close()
}

// A data directory that is a file is a clear error naming it.
func TestDataDirNotADirectory(t *testing.T) {
	f := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(f, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := devkafka.Start(devkafka.Config{DataDir: f}); err == nil || !strings.Contains(err.Error(), f) {
		t.Fatalf("data dir %s is a file: %v", f, err)
	}
}

// Damaged state files are an error naming the directory and the file,
// never a broker that starts with part of its data.
func TestDataDirDamaged(t *testing.T) {
	dir := t.TempDir()
	b, err := devkafka.Start(devkafka.Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	if err := os.WriteFile(filepath.Join(dir, "meta.json"), []byte("{damaged"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = devkafka.Start(devkafka.Config{DataDir: dir})
	if err == nil || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "meta.json") || !strings.Contains(err.Error(), "move the directory away") {
		t.Fatalf("damaged meta.json: %v", err)
	}
	// The failed start released the directory.
	if err := os.Remove(filepath.Join(dir, "meta.json")); err != nil {
		t.Fatal(err)
	}
	b, err = devkafka.Start(devkafka.Config{DataDir: dir})
	if err != nil {
		t.Fatalf("after the damaged file was removed: %v", err)
	}
	b.Close()
}

// startChild runs this test binary as a broker process on dir.
func startChild(t *testing.T, dir string) (*exec.Cmd, string) {
	t.Helper()
	return startChildEnv(t, childDirEnv+"="+dir)
}

// startChildEnv runs this test binary as a broker process with env.
func startChildEnv(t *testing.T, env ...string) (*exec.Cmd, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
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
	if err != nil || len(f) != 2 || f[0] != "listening" {
		t.Fatalf("child broker: %q (%v)", line, err)
	}
	return cmd, f[1]
}

func saramaConfig() *sarama.Config {
	c := sarama.NewConfig()
	c.Version = sarama.V2_1_0_0
	c.Producer.Return.Successes = true
	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Consumer.Offsets.Initial = sarama.OffsetOldest
	c.Consumer.Offsets.AutoCommit.Enable = false
	return c
}

// fill produces records acknowledged by the broker and commits offset
// committed for the group, synchronously.
func fill(t *testing.T, addr string) {
	t.Helper()
	client, err := sarama.NewClient([]string{addr}, saramaConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	admin, err := sarama.NewClusterAdminFromClient(client)
	if err != nil {
		t.Fatal(err)
	}
	if err := admin.CreateTopic(dataTopic, &sarama.TopicDetail{NumPartitions: 1, ReplicationFactor: 1}, false); err != nil {
		t.Fatal(err)
	}
	p, err := sarama.NewSyncProducerFromClient(client)
	if err != nil {
		t.Fatal(err)
	}
	for i := range records {
		if _, _, err := p.SendMessage(&sarama.ProducerMessage{Topic: dataTopic, Value: sarama.StringEncoder(strconv.Itoa(i))}); err != nil {
			t.Fatal(err)
		}
	}
	_ = p.Close()
	// Commit as a consumer group member does: join, take records, mark
	// the first ones, commit synchronously.
	g, err := sarama.NewConsumerGroup([]string{addr}, dataGroup, saramaConfig())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	h := &committer{cancel: cancel}
	if err := g.Consume(ctx, []string{dataTopic}, h); err != nil && ctx.Err() == nil {
		t.Fatal(err)
	}
	_ = g.Close()
	if !h.done {
		t.Fatal("the consumer group never committed")
	}
	// The commit was answered: read it back through a new client.
	if got := committedOffset(t, addr); got != committed {
		t.Fatalf("committed %d, read back %d", committed, got)
	}
}

// check reads back every record in order and the committed offset.
func check(t *testing.T, addr string) {
	t.Helper()
	if got := committedOffset(t, addr); got != committed {
		t.Errorf("committed offset after restart %d, want %d", got, committed)
	}
	c, err := sarama.NewConsumer([]string{addr}, saramaConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pc, err := c.ConsumePartition(dataTopic, 0, sarama.OffsetOldest)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	timeout := time.After(30 * time.Second)
	for i := range records {
		select {
		case m := <-pc.Messages():
			if string(m.Value) != strconv.Itoa(i) || m.Offset != int64(i) {
				t.Fatalf("record %d: offset %d value %q", i, m.Offset, m.Value)
			}
		case <-timeout:
			t.Fatalf("after restart only %d of %d records came back", i, records)
		}
	}
}

// committer marks records below committed, commits, and ends the session.
type committer struct {
	cancel func()
	done   bool
}

func (*committer) Setup(sarama.ConsumerGroupSession) error   { return nil }
func (*committer) Cleanup(sarama.ConsumerGroupSession) error { return nil }
func (c *committer) ConsumeClaim(s sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	for m := range claim.Messages() {
		if m.Offset < committed {
			s.MarkMessage(m, "")
		}
		if m.Offset == committed-1 {
			s.Commit()
			c.done = true
			c.cancel()
			return nil
		}
	}
	return nil
}

func committedOffset(t *testing.T, addr string) int64 {
	t.Helper()
	admin, err := sarama.NewClusterAdmin([]string{addr}, saramaConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	res, err := admin.ListConsumerGroupOffsets(dataGroup, map[string][]int32{dataTopic: {0}})
	if err != nil {
		t.Fatal(err)
	}
	b := res.GetBlock(dataTopic, 0)
	if b == nil {
		return -1
	}
	return b.Offset
}
