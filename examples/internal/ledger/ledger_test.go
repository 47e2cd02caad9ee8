package ledger_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/outbox"
)

const (
	accounts = 40
	// apiRate is the API's transfers per second, spread over the accounts.
	apiRate = 40
	// rounds of faults: each SIGKILLs a relay (mid-batch), then a worker,
	// then the broker (on RabbitMQ stop_app/start_app), then the broker
	// again with a worker SIGKILLed while it is down, one after the other.
	rounds = 3
	// faultGap is the pause between two faults.
	faultGap = 3 * time.Second
	// convergeWithin bounds how long the consumer group (Kafka) or the
	// queue's consumers (RabbitMQ) take to be whole again after a worker
	// or broker restart.
	convergeWithin = 60 * time.Second
	// applyWithin bounds the wait, once the API stopped, for every
	// committed transfer to be applied.
	applyWithin = 90 * time.Second
)

// TestLedger runs the ledger's shape on each broker: API → outbox.Add in
// the business transaction → two outbox.Relay processes → broker → two
// worker processes (router.New, transactional idempotency) applying each
// transfer, while relays, workers and the broker are killed and restarted,
// and then counts from the tables: every committed transfer applied once,
// in each account's commit order, and the consumers whole again after
// every restart.
func TestLedger(t *testing.T) {
	if testing.Short() {
		t.Skip("starts brokers and processes and kills them; skipped with -short")
	}
	pgURL := testenv.PostgresURL(t)
	// The negative check: ANTIDOTE_LEDGER_UNORDERED=outbox, consumer or
	// all turns order protections off (see off); the run must then count
	// inversions and fail.
	unord := off(os.Getenv("ANTIDOTE_LEDGER_UNORDERED"))
	switch unord {
	case "":
	case "outbox", "consumer", "all":
		t.Logf("ANTIDOTE_LEDGER_UNORDERED=%s: order protections off (outbox: keyless outbox rows; consumer: kafka.ordering unordered, no single active consumer): this run must count inversions and fail", unord)
	default:
		t.Fatalf("ANTIDOTE_LEDGER_UNORDERED=%q: use outbox, consumer or all", unord)
	}
	t.Run("kafka", func(t *testing.T) { runLedger(t, adapters.KindKafka, pgURL, unord) })
	t.Run("rabbitmq", func(t *testing.T) { runLedger(t, adapters.KindAMQP, pgURL, unord) })
}

// run is one broker's run.
type run struct {
	t      *testing.T
	kind   adapters.Kind
	pool   *pgxpool.Pool
	schema string
	topic  string
	addr   string // Kafka address or AMQP URL
	kafka  *kafkaBroker
	rabbit *testenv.RabbitMQ
	relays []*proc
	works  []*proc

	relayKills, relayKillsMidBatch, workerKills, brokerRestarts int
	slowestConverge                                             time.Duration
	converged                                                   []string // per fault: what, and how long the consumers took to be whole
}

func runLedger(t *testing.T, kind adapters.Kind, pgURL string, unord off) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	r := &run{t: t, kind: kind, schema: "ledger_" + strings.ToLower(watermill.NewShortUUID()), topic: "ledger_" + watermill.NewShortUUID()}
	logs := logDir(t)
	pool, err := pgxpool.New(ctx, pgURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	r.pool = pool
	ob := r.createSchema(ctx, unord)

	switch kind {
	case adapters.KindKafka:
		r.kafka = &kafkaBroker{dir: t.TempDir(), addr: "127.0.0.1:0", logs: logs}
		if err := r.kafka.start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(r.kafka.stop)
		r.addr = r.kafka.addr
		if err := createTopic(r.addr, r.topic); err != nil {
			t.Fatal(err)
		}
	case adapters.KindAMQP:
		r.rabbit = testenv.StartRabbitMQ(t)
		r.addr = r.rabbit.URL
	}

	procCtx, stopProcs := context.WithCancel(context.Background())
	env := func(role string) []string {
		e := []string{envRole + "=" + role, envPG + "=" + pgURL, envSchema + "=" + r.schema, envBroker + "=" + string(kind), envAddr + "=" + r.addr, envTopic + "=" + r.topic}
		if unord != "" {
			e = append(e, envUnordered+"="+string(unord))
		}
		return e
	}
	for i := range 2 {
		r.works = append(r.works, startProc(procCtx, fmt.Sprintf("worker-%d", i), logs, env("worker")))
		r.relays = append(r.relays, startProc(procCtx, fmt.Sprintf("relay-%d", i), logs, env("relay")))
	}
	t.Cleanup(func() {
		stopProcs()
		for _, p := range append(r.works, r.relays...) {
			<-p.done
		}
	})
	if err := r.converge(ctx, "start"); err != nil {
		t.Fatalf("the workers never came together before any fault: %v", err)
	}

	apiCtx, stopAPI := context.WithCancel(ctx)
	var apiErr error
	apiDone := make(chan struct{})
	go func() { defer close(apiDone); apiErr = r.api(apiCtx, ob) }()

	start := time.Now()
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 0))
	var faultErr error
faults:
	for round := range rounds {
		for _, fault := range []func(context.Context, *rand.Rand, int) error{r.killRelay, r.killWorker, r.restartBroker, r.restartBrokerKillWorker} {
			time.Sleep(faultGap)
			if err := fault(ctx, rng, round); err != nil {
				faultErr = err
				break faults
			}
		}
	}
	time.Sleep(faultGap)
	stopAPI()
	<-apiDone
	if apiErr != nil {
		t.Errorf("API: %v", apiErr)
	}
	faultsTook := time.Since(start)

	// Every committed transfer applied, or the bound.
	var c counts
	deadline := time.Now().Add(applyWithin)
	for {
		c, err = r.count(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if c.applied >= c.transfers || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	drained := time.Since(start) - faultsTook
	lag, lagErr := r.finalLag(ctx)

	name := filepath.Base(t.Name())
	t.Logf("ledger %s: transfers %d applied %d lost %d twice %d inversions %d restarts broker %d relay %d (%d mid-batch) worker %d; outbox dead %d; lag %d; slowest convergence %.1fs; faults over %.1fs, drained %.1fs after",
		name, c.transfers, c.applied, c.lost, c.twice, c.inversions, r.brokerRestarts, r.relayKills, r.relayKillsMidBatch, r.workerKills, c.outboxDead, lag, r.slowestConverge.Seconds(), faultsTook.Seconds(), drained.Seconds())
	t.Logf("ledger %s: consumers whole after: %s", name, strings.Join(r.converged, ", "))
	if faultErr != nil {
		t.Errorf("%v", faultErr)
	}
	if c.transfers == 0 {
		t.Error("the API committed no transfer")
	}
	if c.lost != 0 {
		t.Errorf("%d committed transfers never applied within %s", c.lost, applyWithin)
	}
	if c.twice != 0 {
		t.Errorf("%d transfers applied more than once", c.twice)
	}
	if c.inversions != 0 {
		t.Errorf("%d transfers applied after a later transfer of their account (e.g. %s)", c.inversions, c.example)
	}
	if c.outboxDead != 0 {
		t.Errorf("%d outbox rows dead-lettered by the relay", c.outboxDead)
	}
	if c.balanceOff != 0 {
		t.Errorf("%d accounts whose last applied seq or application count disagrees with their transfers", c.balanceOff)
	}
	if lagErr != nil {
		t.Errorf("lag: %v", lagErr)
	} else if lag != 0 {
		t.Errorf("lag %d at the end, want 0", lag)
	}
	if faultErr == nil && (r.relayKills < rounds || r.workerKills < rounds || r.brokerRestarts < rounds) {
		t.Errorf("faults: %d relay kills, %d worker kills, %d broker restarts; want %d each", r.relayKills, r.workerKills, r.brokerRestarts, rounds)
	}
	for _, p := range append(r.works, r.relays...) {
		_, _, unexpected := p.counts()
		for _, u := range unexpected {
			// A process exiting during a broker outage is restarted, as
			// a supervisor would; it is logged, not a failure.
			t.Logf("%s", u)
		}
	}
}

// createSchema creates the run's schema and tables in the shared database
// (dropped at the end: the run's own objects only).
func (r *run) createSchema(ctx context.Context, unord off) *outbox.Outbox {
	t, s := r.t, r.schema
	if _, err := r.pool.Exec(ctx, `CREATE SCHEMA `+s); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := r.pool.Exec(ctx, `DROP SCHEMA `+s+` CASCADE`); err != nil {
			t.Logf("drop schema %s: %v", s, err)
		}
	})
	ddl := `
CREATE TABLE ` + s + `.api_accounts (account TEXT PRIMARY KEY, next_seq BIGINT NOT NULL DEFAULT 0);
CREATE TABLE ` + s + `.transfers (account TEXT NOT NULL, seq BIGINT NOT NULL, committed_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(), PRIMARY KEY (account, seq));
CREATE TABLE ` + s + `.accounts (account TEXT PRIMARY KEY, last_seq BIGINT NOT NULL DEFAULT 0, applications BIGINT NOT NULL DEFAULT 0);
CREATE TABLE ` + s + `.applied (id BIGSERIAL PRIMARY KEY, account TEXT NOT NULL, seq BIGINT NOT NULL, prev_max BIGINT NOT NULL, worker TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp());
INSERT INTO ` + s + `.api_accounts (account) SELECT 'acct-' || lpad(i::text, 3, '0') FROM generate_series(1, ` + fmt.Sprint(accounts) + `) i;
INSERT INTO ` + s + `.accounts (account) SELECT account FROM ` + s + `.api_accounts;`
	if _, err := r.pool.Exec(ctx, ddl); err != nil {
		t.Fatal(err)
	}
	ob, err := newOutbox(s, unord.outbox())
	if err != nil {
		t.Fatal(err)
	}
	if err := ob.CreateTables(ctx, r.pool); err != nil {
		t.Fatal(err)
	}
	return ob
}

// api commits transfers at apiRate until ctx ends: each locks its
// account's row (so a key's writers are serialized, as the outbox's order
// promise asks), takes the account's next seq, and writes the transfer
// and its event (outbox.Add, keyed by the account) in one transaction.
func (r *run) api(ctx context.Context, ob *outbox.Outbox) error {
	tick := time.NewTicker(time.Second / apiRate)
	defer tick.Stop()
	jobs := make(chan string)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for acct := range jobs {
				if err := r.transfer(ob, acct); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	defer func() { close(jobs); wg.Wait() }()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errs:
			return err
		case <-tick.C:
		}
		acct := fmt.Sprintf("acct-%03d", 1+rand.IntN(accounts))
		select {
		case jobs <- acct:
		case <-ctx.Done():
			return nil
		case err := <-errs:
			return err
		}
	}
}

func (r *run) transfer(ob *outbox.Outbox, acct string) error {
	// Not the API's ctx: a transfer begun is committed, so that stopping
	// the API never leaves a half-known outcome.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tx, err := r.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(ctx) }()
	var seq int64
	if err := tx.QueryRow(ctx, `UPDATE `+r.schema+`.api_accounts SET next_seq = next_seq + 1 WHERE account = $1 RETURNING next_seq`, acct).Scan(&seq); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `INSERT INTO `+r.schema+`.transfers (account, seq) VALUES ($1, $2)`, acct, seq); err != nil {
		return err
	}
	payload, err := json.Marshal(event{Account: acct, Seq: seq})
	if err != nil {
		return err
	}
	msg := message.NewMessage(watermill.NewUUID(), payload)
	msg.Metadata.Set(outbox.DefaultKeyMetadata, acct)
	if err := ob.Add(ctx, tx, r.topic, msg); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// killRelay SIGKILLs one relay (alternating) while it holds claimed rows
// it has not all sent (mid-batch), or after 3s of trying at a random
// moment; its supervisor starts it again.
func (r *run) killRelay(ctx context.Context, rng *rand.Rand, round int) error {
	p := r.relays[round%len(r.relays)]
	deadline := time.Now().Add(3 * time.Second)
	for {
		pid := p.pid(500 * time.Millisecond)
		if pid != 0 {
			var held int
			err := r.pool.QueryRow(ctx, `SELECT count(*) FROM `+r.schema+`.outbox WHERE locked_by = $1 AND sent_at IS NULL AND locked_until > now()`,
				relayService+"/"+relayInstance(pid)).Scan(&held)
			if err != nil {
				return err
			}
			if held > 0 || time.Now().After(deadline) {
				if p.kill(pid) {
					r.relayKills++
					if held > 0 {
						r.relayKillsMidBatch++
					}
					return nil
				}
			}
		}
		if time.Now().After(deadline.Add(10 * time.Second)) {
			return fmt.Errorf("%s: no process to kill", p.name)
		}
		time.Sleep(time.Duration(1+rng.IntN(5)) * time.Millisecond)
	}
}

// killWorker SIGKILLs one worker (alternating) at a random moment; its
// supervisor starts it again, and the consumers must be whole again.
func (r *run) killWorker(ctx context.Context, rng *rand.Rand, round int) error {
	p := r.works[round%len(r.works)]
	time.Sleep(time.Duration(rng.IntN(300)) * time.Millisecond)
	var pid int
	testenv.Eventually(r.t, 30*time.Second, p.name+" running", func() bool { pid = p.pid(time.Second); return pid != 0 })
	if !p.kill(pid) {
		return fmt.Errorf("%s: could not kill pid %d", p.name, pid)
	}
	r.workerKills++
	if err := r.converge(ctx, "worker kill"); err != nil {
		return fmt.Errorf("after SIGKILL of %s (kill %d): %w", p.name, r.workerKills, err)
	}
	return nil
}

// restartBroker SIGKILLs devkafka and starts it on its data directory, or
// stops and starts the private RabbitMQ node's application.
func (r *run) restartBroker(ctx context.Context, _ *rand.Rand, _ int) error {
	return r.brokerDown(ctx, "broker restart", func() error { return nil })
}

// restartBrokerKillWorker is restartBroker with a worker SIGKILLed while
// the broker is down: the restarted broker still knows the dead worker's
// member, and its replacement joins a group under recovery.
func (r *run) restartBrokerKillWorker(ctx context.Context, _ *rand.Rand, round int) error {
	return r.brokerDown(ctx, "broker restart with a worker killed", func() error {
		p := r.works[(round+1)%len(r.works)]
		pid := p.pid(0)
		if pid == 0 || !p.kill(pid) {
			return fmt.Errorf("%s: nothing to kill while the broker is down", p.name)
		}
		r.workerKills++
		return nil
	})
}

// brokerDown stops the broker (devkafka: SIGKILL; RabbitMQ: stop_app),
// runs meanwhile, starts it again after a second and waits until the
// consumers are whole.
func (r *run) brokerDown(ctx context.Context, what string, meanwhile func() error) error {
	switch r.kind {
	case adapters.KindKafka:
		if err := r.kafka.crash(time.Second, meanwhile); err != nil {
			return err
		}
	case adapters.KindAMQP:
		if err := r.rabbit.StopApp(); err != nil {
			return err
		}
		err := meanwhile()
		time.Sleep(time.Second)
		if err := r.rabbit.StartApp(); err != nil {
			return err
		}
		if err != nil {
			return err
		}
	}
	r.brokerRestarts++
	if err := r.converge(ctx, what); err != nil {
		return fmt.Errorf("after %s (broker restart %d): %w", what, r.brokerRestarts, err)
	}
	return nil
}

// converge waits until the consumers are whole: on Kafka the group is
// Stable with one member per worker; on RabbitMQ the queue has both
// workers as consumers.
func (r *run) converge(ctx context.Context, what string) error {
	start := time.Now()
	var last string
	for time.Since(start) < convergeWithin && ctx.Err() == nil {
		var ok bool
		ok, last = r.whole()
		if ok {
			r.slowestConverge = max(r.slowestConverge, time.Since(start))
			r.converged = append(r.converged, fmt.Sprintf("%s %.1fs", what, time.Since(start).Seconds()))
			return nil
		}
		time.Sleep(250 * time.Millisecond)
	}
	return fmt.Errorf("consumers not whole within %s: %s", convergeWithin, last)
}

// whole reports whether the consumers are whole: on Kafka the group is
// Stable and its members are exactly the live workers (each member's
// client id names its process, so a killed worker's member that has not
// expired yet does not count); on RabbitMQ the queue has one consumer per
// worker and every worker has been up for a second (a killed worker's
// consumer goes the moment the kernel closes its socket).
func (r *run) whole() (bool, string) {
	var live []string
	for _, p := range r.works {
		pid := p.pid(0)
		if pid == 0 {
			return false, p.name + " not running"
		}
		live = append(live, workerClientID(pid))
	}
	switch r.kind {
	case adapters.KindKafka:
		st, members, err := describeGroup(r.addr)
		if err != nil {
			return false, err.Error()
		}
		slices.Sort(live)
		slices.Sort(members)
		return st == "Stable" && slices.Equal(members, live), fmt.Sprintf("group %s with members %v for workers %v", st, members, live)
	default:
		for _, p := range r.works {
			if p.pid(time.Second) == 0 {
				return false, p.name + " started less than a second ago"
			}
		}
		n, err := r.queueConsumers()
		if err != nil {
			return false, err.Error()
		}
		return n == len(r.works), fmt.Sprintf("queue with %d consumers for %d workers", n, len(r.works))
	}
}

// queueConsumers counts the queue's consumers on the node, the waiting
// ones of a single active consumer queue included (queue.declare-ok counts
// only the active one).
func (r *run) queueConsumers() (int, error) {
	out, err := r.rabbit.Eval(`length([C || C <- rabbit_amqqueue:consumers_all(<<"/">>), element(4, proplists:get_value(queue_name, C)) =:= <<"` + r.topic + `">>]).`)
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		return 0, fmt.Errorf("consumers of %s: %q", r.topic, out)
	}
	return n, nil
}

// finalLag is what waits on the broker at the end: the group's lag
// (Kafka, committed offsets: polled, as Sarama commits every second) or
// the queue's ready messages (RabbitMQ).
func (r *run) finalLag(ctx context.Context) (int64, error) {
	var lag int64
	var err error
	deadline := time.Now().Add(30 * time.Second)
	for {
		switch r.kind {
		case adapters.KindKafka:
			var src adapters.LagSource
			src, err = adapters.OpenLagSource(ctx, brokerConfig(r.kind, r.addr, ""))
			if err == nil {
				lag, err = src.Lag(ctx, r.topic)
				_ = src.Close()
			}
		default:
			var q amqp.Queue
			q, err = inspectQueue(r.addr, r.topic)
			lag = int64(q.Messages)
		}
		if (err == nil && lag == 0) || time.Now().After(deadline) {
			return lag, err
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// counts is the outcome, from the tables.
type counts struct {
	transfers, applied, lost, twice, inversions, outboxDead, balanceOff int
	example                                                             string
}

func (r *run) count(ctx context.Context) (counts, error) {
	s := r.schema
	var c counts
	err := r.pool.QueryRow(ctx, `SELECT
  (SELECT count(*) FROM `+s+`.transfers),
  (SELECT count(DISTINCT (account, seq)) FROM `+s+`.applied),
  (SELECT count(*) FROM `+s+`.transfers t WHERE NOT EXISTS (SELECT 1 FROM `+s+`.applied a WHERE a.account = t.account AND a.seq = t.seq)),
  (SELECT count(*) FROM (SELECT 1 FROM `+s+`.applied GROUP BY account, seq HAVING count(*) > 1) d),
  (SELECT count(*) FROM `+s+`.applied WHERE seq < prev_max),
  (SELECT count(*) FROM `+s+`.outbox_dead),
  (SELECT count(*) FROM `+s+`.accounts a JOIN (SELECT account, max(seq) m, count(*) n FROM `+s+`.transfers GROUP BY account) t USING (account) WHERE a.last_seq <> t.m OR a.applications <> t.n),
  coalesce((SELECT account || ' seq ' || seq || ' after ' || prev_max FROM `+s+`.applied WHERE seq < prev_max ORDER BY id LIMIT 1), '')`).
		Scan(&c.transfers, &c.applied, &c.lost, &c.twice, &c.inversions, &c.outboxDead, &c.balanceOff, &c.example)
	return c, err
}

func createTopic(addr, topic string) error {
	adm, err := clusterAdmin(addr)
	if err != nil {
		return err
	}
	defer adm.Close()
	return adm.CreateTopic(topic, &sarama.TopicDetail{NumPartitions: kafkaPartitions, ReplicationFactor: 1}, false)
}

// describeGroup returns the group's state and its members' client ids.
func describeGroup(addr string) (state string, members []string, err error) {
	adm, err := clusterAdmin(addr)
	if err != nil {
		return "", nil, err
	}
	defer adm.Close()
	gs, err := adm.DescribeConsumerGroups([]string{kafkaGroup})
	if err != nil {
		return "", nil, err
	}
	if len(gs) != 1 {
		return "", nil, fmt.Errorf("DescribeGroups returned %d groups", len(gs))
	}
	if gs[0].Err != sarama.ErrNoError {
		return "", nil, gs[0].Err
	}
	for _, m := range gs[0].Members {
		members = append(members, m.ClientId)
	}
	return gs[0].State, members, nil
}

func clusterAdmin(addr string) (sarama.ClusterAdmin, error) {
	sc := sarama.NewConfig()
	sc.Version = sarama.V2_1_0_0
	sc.Net.DialTimeout, sc.Net.ReadTimeout = 3*time.Second, 5*time.Second
	sc.Metadata.Retry.Max = 1
	return sarama.NewClusterAdmin([]string{addr}, sc)
}

func inspectQueue(url, name string) (amqp.Queue, error) {
	conn, err := amqp.DialConfig(url, amqp.Config{Dial: amqp.DefaultDial(3 * time.Second)})
	if err != nil {
		return amqp.Queue{}, err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return amqp.Queue{}, err
	}
	defer ch.Close()
	return ch.QueueDeclarePassive(name, true, false, false, false, nil)
}

// logDir holds the processes' stderr, one file per life: under
// ANTIDOTE_LEDGER_LOGS (kept after the test) or a temporary directory.
func logDir(t *testing.T) string {
	dir := os.Getenv("ANTIDOTE_LEDGER_LOGS")
	if dir == "" {
		return t.TempDir()
	}
	dir = filepath.Join(dir, filepath.Base(t.Name()))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}
