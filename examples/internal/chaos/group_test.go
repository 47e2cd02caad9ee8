package chaos_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/internal/testenv"
)

// groupWorkerEnv makes the test binary a group worker (see TestMain).
const groupWorkerEnv = "ANTIDOTE_CHAOS_GROUP_WORKER"

func TestMain(m *testing.M) {
	if os.Getenv(groupWorkerEnv) != "" {
		if err := groupWorker(os.Getenv(groupWorkerEnv)); err != nil {
			fmt.Fprintln(os.Stderr, "group worker:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// groupWorker consumes the group test's topic (config from ANTIDOTE_*),
// appending each message's UUID to out before acking it, until killed.
func groupWorker(out string) error {
	cfg, err := adapters.ConfigFromEnv("")
	if err != nil {
		return err
	}
	f, err := os.OpenFile(out, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	ctx := context.Background()
	b, err := adapters.Open(ctx, cfg, watermill.NopLogger{})
	if err != nil {
		return err
	}
	msgs, err := b.Subscriber.Subscribe(ctx, groupTopic)
	if err != nil {
		return err
	}
	for msg := range msgs {
		if _, err := f.WriteString(msg.UUID + "\n"); err != nil {
			return err
		}
		msg.Ack()
	}
	return nil
}

const (
	groupTopic     = "group_chaos"
	groupName      = "group-chaos"
	groupWorkers   = 3
	groupRounds    = 3
	groupSession   = 6 * time.Second // kfake's smallest
	groupRebalance = 10 * time.Second
	// groupBound is how soon after a round's last fault the group must
	// be stable with the live workers: the dead expire (a session
	// timeout), then at most two rebalances, each within its timeout.
	groupBound = groupSession + 2*groupRebalance
)

// A consumer group on `antidote devkafka --data-dir` converges after every
// broker crash with workers SIGKILLed around it: each round SIGKILLs the
// broker (a producer publishing meanwhile), SIGKILLs a worker while the
// broker is down, restarts the broker on its directory and address,
// replaces the worker, and SIGKILLs the replacement as soon as it is seen a
// member of the rebalancing group (in a JoinGroup, not always its first),
// and replaces it. After
// each round, within groupBound, the group is Stable with exactly the live
// workers as members and its lag is 0; at the end every message whose
// Publish returned nil was consumed (lost 0).
//
// It passed, too, in two runs with devkafka's groupConn taken out: the
// killed member had had a JoinGroup answered, so kfake had started its
// session timer. The member killed in its first JoinGroup is
// devkafka's TestMembersKilledInAJoinExpire.
func TestKafkaGroupConverges(t *testing.T) {
	if testing.Short() {
		t.Skip("a minute of broker and worker kills")
	}
	bins := t.TempDir()
	if out, err := exec.Command("go", "build", "-o", bins+string(os.PathSeparator), "github.com/antidote-mq/antidote/cmd/antidote").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	k := startDevKafka(t, filepath.Join(bins, "antidote"))
	cfg := adapters.Config{Broker: adapters.KindKafka, Kafka: adapters.KafkaConfig{
		Brokers: []string{k.addr}, ConsumerGroup: groupName, Partitions: 6,
		SessionTimeout: groupSession, RebalanceTimeout: groupRebalance, CommitInterval: 200 * time.Millisecond,
	}}
	env := []string{
		groupWorkerEnv + "=" + filepath.Join(t.TempDir(), "consumed"),
		"ANTIDOTE_BROKER=kafka",
		"ANTIDOTE_KAFKA_BROKERS=" + k.addr,
		"ANTIDOTE_KAFKA_CONSUMER_GROUP=" + groupName,
		"ANTIDOTE_KAFKA_PARTITIONS=6",
		"ANTIDOTE_KAFKA_SESSION_TIMEOUT=" + groupSession.String(),
		"ANTIDOTE_KAFKA_REBALANCE_TIMEOUT=" + groupRebalance.String(),
		"ANTIDOTE_KAFKA_COMMIT_INTERVAL=200ms",
	}
	consumedFile := env[0][len(groupWorkerEnv)+1:]

	// Each worker has a client ID of its own, so that the group's members
	// can be told from the live workers.
	type worker struct {
		cmd *exec.Cmd
		id  string
	}
	var (
		workers []worker
		started int
	)
	start := func() {
		started++
		id := "worker-" + strconv.Itoa(started)
		cmd := exec.Command(os.Args[0])
		cmd.Env = childEnv(append(env, "ANTIDOTE_KAFKA_CLIENT_ID="+id))
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		workers = append(workers, worker{cmd, id})
	}
	kill := func(i int) {
		_ = workers[i].cmd.Process.Kill()
		_ = workers[i].cmd.Wait()
		workers = slices.Delete(workers, i, i+1)
	}
	live := func() []string {
		var ids []string
		for _, w := range workers {
			ids = append(ids, w.id)
		}
		slices.Sort(ids)
		return ids
	}
	t.Cleanup(func() {
		for len(workers) > 0 {
			kill(0)
		}
	})
	for range groupWorkers {
		start()
	}

	pub, err := adapters.Open(t.Context(), cfg, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pub.Close() })
	obs, err := kgo.NewClient(kgo.SeedBrokers(k.addr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(obs.Close)

	var (
		mu    sync.Mutex
		acked []string // messages whose Publish returned nil
		next  int
	)
	produce := func(n int, stop <-chan struct{}) {
		for range n {
			select {
			case <-stop:
				return
			default:
			}
			mu.Lock()
			next++
			id := "m-" + strconv.Itoa(next)
			mu.Unlock()
			if pub.Publisher.Publish(groupTopic, message.NewMessage(id, nil)) == nil {
				mu.Lock()
				acked = append(acked, id)
				mu.Unlock()
			}
			time.Sleep(2 * time.Millisecond) // spread the batch over the faults
		}
	}

	converge := func(round int, lastFault time.Time) {
		t.Helper()
		want := live()
		testenv.EventuallyNil(t, groupBound-time.Since(lastFault), func() error {
			state, members, err := describeGroup(t.Context(), obs, groupName)
			if err != nil || state != "Stable" || !slices.Equal(members, want) {
				return fmt.Errorf("round %d: group %s with members %v, live workers %v (describe: %v)", round, state, members, want, err)
			}
			return nil
		})
		converged := time.Since(lastFault)
		began := time.Now()
		// The lag of what was published comes back to 0 (the workers
		// commit every 200ms).
		testenv.EventuallyNil(t, groupBound, func() error {
			lag, err := kafkaLag(t.Context(), cfg)
			if err != nil || lag != 0 {
				return fmt.Errorf("round %d: lag %d (%v)", round, lag, err)
			}
			return nil
		})
		t.Logf("round %d: stable with the live workers %v %s after the last fault, lag 0 %s later", round, want, converged.Round(time.Millisecond), time.Since(began).Round(time.Millisecond))
	}

	converge(0, time.Now())
	for round := 1; round <= groupRounds; round++ {
		stop := make(chan struct{})
		produced := make(chan struct{})
		go func() { defer close(produced); produce(400, stop) }()
		time.Sleep(300 * time.Millisecond) // the producer is mid-batch
		if err := k.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		_ = k.cmd.Wait()
		kill(0) // while the broker is down
		if err := k.start(); err != nil {
			t.Fatal(err)
		}
		start()
		// The replacement is killed in its first JoinGroup: once it is a
		// member of the rebalancing group, waiting for the others to
		// rejoin.
		newest := workers[len(workers)-1].id
		midJoin := false
		for deadline := time.Now().Add(groupBound); !midJoin && time.Now().Before(deadline); {
			state, members, _ := describeGroup(t.Context(), obs, groupName)
			midJoin = state == "PreparingRebalance" && slices.Contains(members, newest)
		}
		kill(len(workers) - 1)
		if !midJoin {
			t.Logf("round %d: %s killed without having been seen in a JoinGroup", round, newest)
		}
		lastFault := time.Now()
		start()
		<-produced
		close(stop)
		converge(round, lastFault)
	}

	// Lost: acked messages no worker wrote down.
	consumed, err := readLines(consumedFile)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	var lost []string
	for _, id := range acked {
		if !consumed[id] {
			lost = append(lost, id)
		}
	}
	t.Logf("published %d (acked %d), consumed %d distinct, lost %d", next, len(acked), len(consumed), len(lost))
	if len(acked) == 0 {
		t.Fatal("nothing was published")
	}
	if len(lost) > 0 {
		t.Fatalf("lost %d acked messages, e.g. %v", len(lost), lost[:min(5, len(lost))])
	}
}

// describeGroup returns the group's state and its members' client IDs,
// sorted.
func describeGroup(ctx context.Context, cl *kgo.Client, group string) (string, []string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req := kmsg.NewPtrDescribeGroupsRequest()
	req.Groups = []string{group}
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		return "", nil, err
	}
	if len(resp.Groups) != 1 {
		return "", nil, errors.New("no group described")
	}
	var ids []string
	for _, m := range resp.Groups[0].Members {
		ids = append(ids, m.ClientID)
	}
	slices.Sort(ids)
	return resp.Groups[0].State, ids, nil
}

// kafkaLag reads the group's lag on the topic with a client of its own
// (the broker may have restarted since the last reading).
func kafkaLag(ctx context.Context, cfg adapters.Config) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	l, err := adapters.NewKafkaLag(ctx, cfg)
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Lag(ctx, groupTopic)
}

func readLines(path string) (map[string]bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]bool{}
	s := bufio.NewScanner(f)
	for s.Scan() {
		out[s.Text()] = true
	}
	return out, s.Err()
}
