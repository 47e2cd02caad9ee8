package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/antidote-mq/antidote/adapters"
	"github.com/antidote-mq/antidote/devkafka"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/poison"
)

// One bad letter never stops a treatment: letters a raw client put in the
// DLQ ahead of the good ones (no original topic, metadata NULL or an array
// or with fields that do not parse, a claim that is gone) are each left
// dead with the reason, every good letter behind them is replayed, and the
// exit code says some were left (5). On each broker, through the CLI.
func TestDLQReplayGoesOnPastBadLetters(t *testing.T) {
	t.Setenv("COLUMNS", "")
	t.Setenv("ANTIDOTE_REDIS_ADDR", testenv.RedisAddr(t))
	ctx := context.Background()
	// A letter whose payload is in a claim that is not there (the claim
	// store lost it): it names its topic, so only the claim stops it.
	claimGone := func(topic string) *message.Message {
		m := message.NewMessage("claim-gone-"+watermill.NewShortUUID(), nil)
		m.Metadata.Set(poison.KeyOriginalTopic, topic)
		m.Metadata.Set(poison.KeyReason, string(poison.ReasonPermanent))
		m.Metadata.Set(poison.KeyClaimCheck, "sha256:"+strings.Repeat("0", 64))
		m.Metadata.Set(poison.KeyClaimCheckBytes, "1000000")
		return m
	}
	for _, tc := range []struct {
		kind adapters.Kind
		// bad puts letters in topic's DLQ with a raw client and returns
		// how many.
		bad func(t *testing.T, cfg adapters.Config, topic string) int
	}{
		{adapters.KindPostgres, func(t *testing.T, cfg adapters.Config, topic string) int {
			pool, err := pgxpool.New(ctx, cfg.Postgres.URL)
			if err != nil {
				t.Fatal(err)
			}
			defer pool.Close()
			if err := adapters.EnsurePostgresTable(ctx, cfg, pool, topic+".dlq"); err != nil {
				t.Fatal(err)
			}
			table := adapters.PostgresTable(cfg.Postgres, topic+".dlq")
			rows := []any{nil, `[1, 2, 3]`, `{"antidote.reason": "permanent", "antidote.attempts": "many", "antidote.last_failed_at": "yesterday"}`,
				`{"antidote.reason": ["not", "a", "string"]}`, `null`}
			for i, md := range rows {
				if _, err := pool.Exec(ctx, `INSERT INTO `+table+` (uuid, payload, metadata) VALUES ($1, $2, $3)`,
					"raw-"+watermill.NewShortUUID(), []byte{byte(i), 0xff}, md); err != nil {
					t.Fatal(err)
				}
			}
			return len(rows)
		}},
		{adapters.KindAMQP, func(t *testing.T, cfg adapters.Config, topic string) int {
			conn, err := amqp.Dial(cfg.AMQP.URL)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			ch, err := conn.Channel()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := ch.QueueDeclare(topic+".dlq", true, false, false, false, nil); err != nil {
				t.Fatal(err)
			}
			for _, p := range []amqp.Publishing{
				{Body: []byte("no headers at all")},
				{Headers: amqp.Table{"antidote.reason": amqp.Table{"nested": []any{int32(1), "x"}}, "antidote.attempts": int64(-3)}, Body: []byte{0xff}},
				{Headers: amqp.Table{"antidote.original_partition": "abc", "antidote.reason": "permanent"}, MessageId: strings.Repeat("m", 255)},
			} {
				if err := ch.PublishWithContext(ctx, "", topic+".dlq", false, false, p); err != nil {
					t.Fatal(err)
				}
			}
			return 3
		}},
		{adapters.KindKafka, func(t *testing.T, cfg adapters.Config, topic string) int {
			sc := sarama.NewConfig()
			sc.Version = sarama.V2_1_0_0
			sc.Producer.Return.Successes = true
			p, err := sarama.NewSyncProducer(cfg.Kafka.Brokers, sc)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			for _, m := range []*sarama.ProducerMessage{
				{Topic: topic + ".dlq", Value: sarama.StringEncoder("no headers at all")},
				{Topic: topic + ".dlq", Headers: []sarama.RecordHeader{{Key: []byte("antidote.reason"), Value: []byte("permanent")},
					{Key: []byte("antidote.original_offset"), Value: []byte("-1")}, {Key: []byte("\xff\xfe"), Value: []byte("\x00")}}},
			} {
				if _, _, err := p.SendMessage(m); err != nil {
					t.Fatal(err)
				}
			}
			return 2
		}},
	} {
		t.Run(string(tc.kind), func(t *testing.T) {
			var cfg adapters.Config
			switch tc.kind {
			case adapters.KindPostgres:
				cfg = postgresCLI(t)
			case adapters.KindAMQP:
				url := testenv.AMQPURL(t)
				t.Setenv("ANTIDOTE_BROKER", "amqp")
				t.Setenv("ANTIDOTE_AMQP_URL", url)
				cfg = adapters.Config{Broker: adapters.KindAMQP, AMQP: adapters.AMQPConfig{URL: url}}
			case adapters.KindKafka:
				k, err := devkafka.Start(devkafka.Config{Addr: "127.0.0.1:0", Partitions: 1})
				if err != nil {
					t.Fatal(err)
				}
				defer k.Close()
				t.Setenv("ANTIDOTE_BROKER", "kafka")
				t.Setenv("ANTIDOTE_KAFKA_BROKERS", strings.Join(k.Addrs(), ","))
				cfg = adapters.Config{Broker: adapters.KindKafka, Kafka: adapters.KafkaConfig{Brokers: k.Addrs()}}
			}
			cfg.SetDefaults()
			topic := "bad_" + strings.ToLower(watermill.NewShortUUID())
			bad := tc.bad(t, cfg, topic)
			b, err := adapters.Open(ctx, cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := b.Publisher.Publish(topic+".dlq", claimGone(topic)); err != nil {
				t.Fatal(err)
			}
			_ = b.Close()
			bad++
			const good = 3
			for i := range good {
				publishLetter(t, cfg, topic, "good-"+string(rune('a'+i))+"-"+watermill.NewShortUUID(), []byte(`{"id":1}`), "not found")
			}
			code, out, errOut := runCode(t, "", "dlq", "replay", "--topic", topic, "--yes", "--claim-check", "redis")
			if code != exitPartial {
				t.Errorf("exit code %d, want %d (some letters left dead); stderr %q", code, exitPartial, errOut)
			}
			if !strings.Contains(out, "replayed 3 letters from "+topic+".dlq") || strings.Count(out, "left dead: ") != bad {
				t.Errorf("want the 3 good letters replayed and the %d bad ones left dead, each with why; got:\n%s", bad, out)
			}
			if !strings.Contains(out, "claim") || !strings.Contains(out, "original topic") {
				t.Errorf("the reasons do not name the claim and the missing topic:\n%s", out)
			}
			// What is left is exactly the bad letters.
			code, out, _ = runCode(t, "", "dlq", "list", "--topic", topic, "--json")
			if code != exitOK || strings.Count(out, "\n") != bad {
				t.Errorf("after the replay: exit code %d, %d letters left, want the %d bad ones:\n%s", code, strings.Count(out, "\n"), bad, out)
			}
			for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
				var v letterView
				if err := json.Unmarshal([]byte(line), &v); err != nil || strings.HasPrefix(v.UUID, "good-") {
					t.Errorf("left: %s (%v)", line, err)
				}
			}
			// --json reports the same, one object.
			code, out, _ = runCode(t, "", "dlq", "replay", "--topic", topic, "--yes", "--json", "--claim-check", "redis")
			var res struct {
				Matched, Replayed int
				Failed            []struct{ UUID, Reason string }
			}
			if err := json.Unmarshal([]byte(out), &res); err != nil || code != exitPartial || res.Matched != bad || res.Replayed != 0 || len(res.Failed) != bad {
				t.Errorf("replay --json of the bad ones: exit code %d, %+v (%v):\n%s", code, res, err, out)
			}
		})
	}
}
