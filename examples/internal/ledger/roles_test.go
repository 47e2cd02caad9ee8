package ledger_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/devkafka"
	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/outbox"
	"github.com/antidote-mq/antidote/pgstore"
	"github.com/antidote-mq/antidote/router"
)

// The test binary is also the relay, the worker and the Kafka broker: the
// test re-executes itself with LEDGER_ROLE set, so that each is an OS
// process it can SIGKILL.
const (
	envRole      = "LEDGER_ROLE"      // relay, worker or devkafka
	envPG        = "LEDGER_PG"        // PostgreSQL URL
	envSchema    = "LEDGER_SCHEMA"    // the run's schema
	envBroker    = "LEDGER_BROKER"    // kafka or amqp
	envAddr      = "LEDGER_ADDR"      // Kafka address, or the AMQP URL
	envTopic     = "LEDGER_TOPIC"     // the events' topic
	envDataDir   = "LEDGER_DATA_DIR"  // devkafka's data directory
	envUnordered = "LEDGER_UNORDERED" // the order protections off: outbox, consumer or all
)

// Kafka settings of the workers.
const (
	kafkaGroup       = "ledger"
	kafkaPartitions  = 6
	kafkaConcurrency = 8
)

// relayService names the relays in the producer identity, which is also
// their rows' locked_by ("<service>/<instance>").
const relayService = "ledger-relay"

func TestMain(m *testing.M) {
	role := os.Getenv(envRole)
	if role == "" {
		os.Exit(m.Run())
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var err error
	switch role {
	case "relay":
		err = runRelay(ctx)
	case "worker":
		err = runWorker(ctx)
	case "devkafka":
		err = runDevKafka(ctx)
	default:
		err = fmt.Errorf("unknown %s %q", envRole, role)
	}
	if err != nil && ctx.Err() == nil {
		fmt.Fprintf(os.Stderr, "ledger %s: %v\n", role, err)
		os.Exit(1)
	}
}

// off names the order protections a run turns off, to show that the test
// counts inversions without them: "outbox" (keyless outbox rows: the relay
// keeps no order), "consumer" (kafka.ordering unordered; RabbitMQ without
// single active consumer: competing workers), "all" both; "" none.
type off string

func (o off) outbox() bool   { return o == "outbox" || o == "all" }
func (o off) consumer() bool { return o == "consumer" || o == "all" }

func unordered() off { return off(os.Getenv(envUnordered)) }

// brokerConfig is the broker configuration of the relays and workers (and
// of the test's own lag reads).
func brokerConfig(kind adapters.Kind, addr string, unord off) adapters.Config {
	cfg := adapters.Config{Broker: kind}
	switch kind {
	case adapters.KindKafka:
		cfg.Kafka.Brokers = adapters.HostList{addr}
		cfg.Kafka.ConsumerGroup = kafkaGroup
		cfg.Kafka.Partitions = kafkaPartitions
		cfg.Kafka.Concurrency = kafkaConcurrency
		cfg.Kafka.Ordering = "key"
		if unord.consumer() {
			cfg.Kafka.Ordering = "unordered"
		}
		// A killed worker's partitions move after 6s instead of 10s.
		cfg.Kafka.SessionTimeout = 6 * time.Second
	case adapters.KindAMQP:
		cfg.AMQP.URL = addr
		cfg.AMQP.Quorum = true
		cfg.AMQP.SingleActiveConsumer = !unord.consumer()
	}
	return cfg
}

func childLogger() watermill.LoggerAdapter {
	return watermill.NewStdLoggerWithOut(os.Stderr, false, false)
}

func runRelay(ctx context.Context) error {
	pool, err := pgxpool.New(ctx, os.Getenv(envPG))
	if err != nil {
		return err
	}
	defer pool.Close()
	ob, err := newOutbox(os.Getenv(envSchema), unordered().outbox())
	if err != nil {
		return err
	}
	logger := childLogger()
	b, err := adapters.Open(ctx, brokerConfig(adapters.Kind(os.Getenv(envBroker)), os.Getenv(envAddr), unordered()), logger)
	if err != nil {
		return err
	}
	defer b.Close()
	relay, err := outbox.NewRelay(ctx, outbox.RelayConfig{
		Pool: pool, Outbox: ob, Publisher: b.Publisher, Service: relayService,
		Instance:  relayInstance(os.Getpid()),
		BatchSize: 50, PollInterval: 50 * time.Millisecond,
		// A killed relay's keys wait at most 3s for the other relay.
		Lease: 3 * time.Second,
		// A broker restart is an outage, not poison: a row is retried
		// until the broker is back, never dead-lettered for it.
		MaxAttempts: 1000, RetryBackoff: 100 * time.Millisecond,
		Logger: logger,
	})
	if err != nil {
		return err
	}
	return relay.Run(ctx)
}

func workerClientID(pid int) string { return "ledger-worker-" + strconv.Itoa(pid) }

func relayInstance(pid int) string { return "relay-" + strconv.Itoa(pid) }

// newOutbox is the run's outbox; unord makes every row keyless (a
// KeyMetadata no message has), so the relay keeps no order.
func newOutbox(schema string, unord bool) (*outbox.Outbox, error) {
	cfg := outbox.Config{Table: schema + ".outbox"}
	if unord {
		cfg.KeyMetadata = "ledger_no_such_key"
	}
	return outbox.New(cfg)
}

// event is a transfer's event: the account (its ordering key) and the
// transfer's sequence number within the account, given by the API.
type event struct {
	Account string `json:"account"`
	Seq     int64  `json:"seq"`
}

func runWorker(ctx context.Context) error {
	schema := os.Getenv(envSchema)
	pool, err := pgxpool.New(ctx, os.Getenv(envPG))
	if err != nil {
		return err
	}
	defer pool.Close()
	kind := adapters.Kind(os.Getenv(envBroker))
	cfg := brokerConfig(kind, os.Getenv(envAddr), unordered())
	// The group's members name their process, so the test can tell a
	// live worker's member from a killed one's.
	cfg.Kafka.ClientID = workerClientID(os.Getpid())
	logger := childLogger()
	b, err := adapters.Open(ctx, cfg, logger)
	if err != nil {
		return err
	}
	defer b.Close()
	idem, err := pgstore.NewIdempotencyStore(ctx, pgstore.IdempotencyStoreConfig{Pool: pool, Table: schema + ".idempotency"})
	if err != nil {
		return err
	}
	defer idem.Close()
	tracker, err := pgstore.NewDeliveryTracker(ctx, pgstore.DeliveryTrackerConfig{Pool: pool, Table: schema + ".deliveries"})
	if err != nil {
		return err
	}
	defer tracker.Close()
	group := ""
	if kind == adapters.KindKafka {
		group = kafkaGroup
	}
	rt, err := router.New(router.Config{
		Logger:     logger,
		DeadLetter: middleware.DeadLetterConfig{Publisher: b.Publisher, ConsumerGroup: group},
		// The test's SIGKILLs are not poison: a message that happened to
		// be in flight at several kills must not be quarantined for it.
		CrashLoopGuard: middleware.CrashLoopGuardConfig{Tracker: tracker, MaxDeliveries: 20},
		Idempotency:    &middleware.IdempotencyConfig{Store: idem, Transactional: true},
	})
	if err != nil {
		return err
	}
	instance := "worker-" + strconv.Itoa(os.Getpid())
	rt.AddConsumerHandler("ledger", os.Getenv(envTopic), b.Subscriber, func(msg *message.Message) error {
		return apply(msg, schema, instance)
	})
	return rt.Run(ctx)
}

// apply is the transfer's effect, in the transaction that completes its
// idempotency key: under the account's row lock it reads the highest seq
// applied so far (kept with the application: a lower seq is an inversion),
// logs the application and moves the account's last applied seq.
func apply(msg *message.Message, schema, instance string) error {
	tx, ok := pgstore.TxFromContext(msg.Context())
	if !ok {
		return errors.New("no transaction in the message context: Idempotency.Transactional is off")
	}
	var ev event
	if err := json.Unmarshal(msg.Payload, &ev); err != nil {
		return fmt.Errorf("decode transfer: %w", err)
	}
	ctx := msg.Context()
	var last int64
	if err := tx.QueryRow(ctx, `SELECT last_seq FROM `+schema+`.accounts WHERE account = $1 FOR UPDATE`, ev.Account).Scan(&last); err != nil {
		return fmt.Errorf("lock account %s: %w", ev.Account, err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO `+schema+`.applied (account, seq, prev_max, worker) VALUES ($1, $2, $3, $4)`, ev.Account, ev.Seq, last, instance); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, `UPDATE `+schema+`.accounts SET last_seq = greatest(last_seq, $2), applications = applications + 1 WHERE account = $1`, ev.Account, ev.Seq)
	return err
}

// runDevKafka runs the broker on LEDGER_ADDR and LEDGER_DATA_DIR, prints
// "devkafka listening <addr>" and serves until killed.
func runDevKafka(ctx context.Context) error {
	b, err := devkafka.Start(devkafka.Config{Addr: os.Getenv(envAddr), Partitions: kafkaPartitions, DataDir: os.Getenv(envDataDir)})
	if err != nil {
		return err
	}
	defer b.Close()
	fmt.Println("devkafka listening", b.Addrs()[0])
	<-ctx.Done()
	return nil
}
