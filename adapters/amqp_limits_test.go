package adapters_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/adapters"
)

// amqpReceiver consumes topic through the adapter's own subscriber.
type amqpReceiver struct {
	t    *testing.T
	msgs <-chan *message.Message
}

func receiveAMQP(t *testing.T, b *adapters.Broker, topic string) *amqpReceiver {
	t.Helper()
	return receiveAMQPWith(t, b.Subscriber, topic)
}

// receiveAMQPLetters reads a DLQ as the hospital does: believing the
// letters' envelope keys.
func receiveAMQPLetters(t *testing.T, b *adapters.Broker, topic string) *amqpReceiver {
	t.Helper()
	return receiveAMQPWith(t, b.LetterSubscriber(), topic)
}

func receiveAMQPWith(t *testing.T, sub message.Subscriber, topic string) *amqpReceiver {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	msgs, err := sub.Subscribe(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	return &amqpReceiver{t: t, msgs: msgs}
}

// next returns the next message (acked), failing the test after 20s.
func (r *amqpReceiver) next() *message.Message {
	r.t.Helper()
	select {
	case m := <-r.msgs:
		m.Ack()
		return m
	case <-time.After(20 * time.Second):
		r.t.Fatal("no message within 20s")
		return nil
	}
}

// expectIntact receives the next message and compares it with want.
func (r *amqpReceiver) expectIntact(want *message.Message) {
	r.t.Helper()
	got := r.next()
	if got.UUID != want.UUID {
		r.t.Fatalf("got message %.40q, want %.40q", got.UUID, want.UUID)
	}
	if string(got.Payload) != string(want.Payload) {
		r.t.Fatalf("%.40s: payload changed", want.UUID)
	}
	md := maps.Clone(got.Metadata)
	delete(md, "_watermill_amqp_redelivered")
	if !maps.Equal(md, want.Metadata) {
		r.t.Fatalf("%.40s: %d metadata entries arrived, %d sent, or values changed", want.UUID, len(md), len(want.Metadata))
	}
}

func tooLarge(t *testing.T, err error, what string) *antidote.TooLargeError {
	t.Helper()
	if !errors.Is(err, antidote.ErrMessageTooLarge) {
		t.Fatalf("want antidote.ErrMessageTooLarge (%s), got %v", what, err)
	}
	var tl *antidote.TooLargeError
	if !errors.As(err, &tl) {
		t.Fatalf("want *antidote.TooLargeError, got %T", err)
	}
	if tl.What != what || tl.Broker != string(adapters.KindAMQP) || tl.Size <= tl.Limit || tl.Setting == "" {
		t.Fatalf("TooLargeError %+v: want What %q, Size over Limit, a Setting", *tl, what)
	}
	return tl
}

// normalGoesThrough publishes an ordinary message at once and sees it
// arrive: the refused message left the connection and channel usable.
func normalGoesThrough(t *testing.T, b *adapters.Broker, topic string, r *amqpReceiver) {
	t.Helper()
	m := message.NewMessage(watermill.NewUUID(), []byte("normal"))
	m.Metadata.Set("k", "v")
	if err := b.Publisher.Publish(topic, m); err != nil {
		t.Fatalf("ordinary publish right after the refused one: %v", err)
	}
	r.expectIntact(m)
}

func TestAMQPBodyOverMaxMessageBytesIsRefused(t *testing.T) {
	rb := newRabbit(t)
	b := openAMQP(t, func(c *adapters.AMQPConfig) { c.MaxMessageBytes = 1024 })
	topic := "antidote_test_body_" + watermill.NewShortUUID()
	rb.cleanup(topic)
	r := receiveAMQP(t, b, topic)

	atLimit := message.NewMessage(watermill.NewUUID(), []byte(strings.Repeat("b", 1024)))
	if err := b.Publisher.Publish(topic, atLimit); err != nil {
		t.Fatalf("body of exactly max_message_bytes: %v", err)
	}
	r.expectIntact(atLimit)

	over := message.NewMessage(watermill.NewUUID(), []byte(strings.Repeat("b", 1025)))
	tl := tooLarge(t, b.Publisher.Publish(topic, over), "message")
	if tl.Size != 1025 || tl.Limit != 1024 || tl.Setting != "amqp.max_message_bytes" || tl.UUID != over.UUID || tl.Topic != topic {
		t.Fatalf("TooLargeError %+v", *tl)
	}
	normalGoesThrough(t, b, topic, r)
}

// A 1 MB metadata value cannot travel in one 128 KiB frame. Without the
// check amqp091-go sends it, RabbitMQ closes the whole connection
// (FRAME_ERROR frame_too_large) and the next publishes fail until the
// connection is back.
func TestAMQPMetadataOverOneFrameIsRefused(t *testing.T) {
	rb := newRabbit(t)
	b := openAMQP(t, nil)
	topic := "antidote_test_frame_" + watermill.NewShortUUID()
	rb.cleanup(topic)
	r := receiveAMQP(t, b, topic)

	big := message.NewMessage(watermill.NewUUID(), []byte("x"))
	big.Metadata.Set("big", strings.Repeat("v", 1<<20))
	tl := tooLarge(t, b.Publisher.Publish(topic, big), "metadata")
	if !strings.Contains(tl.Setting, "frame_max (131072)") {
		t.Fatalf("setting %q does not name frame_max", tl.Setting)
	}
	normalGoesThrough(t, b, topic, r)
}

// A value exactly at the header limit arrives intact (the limit is not
// conservative, and RabbitMQ takes the frame); one byte more is refused.
func TestAMQPMetadataAtTheFrameLimit(t *testing.T) {
	rb := newRabbit(t)
	b := openAMQP(t, nil)
	topic := "antidote_test_frame_limit_" + watermill.NewShortUUID()
	rb.cleanup(topic)
	r := receiveAMQP(t, b, topic)

	id := watermill.NewUUID()
	exact := exactMetadataValue(t, id, false, publishTo(b, topic))
	atLimit := message.NewMessage(id, []byte("x"))
	atLimit.Metadata.Set("k", strings.Repeat("v", exact))
	if err := b.Publisher.Publish(topic, atLimit); err != nil {
		t.Fatalf("metadata value of %d bytes, exactly at the limit: %v", exact, err)
	}
	r.expectIntact(atLimit)

	over := message.NewMessage(id, []byte("x"))
	over.Metadata.Set("k", strings.Repeat("v", exact+1))
	tl := tooLarge(t, b.Publisher.Publish(topic, over), "metadata")
	if tl.Size != tl.Limit+1 {
		t.Fatalf("one byte over: Size %d, Limit %d", tl.Size, tl.Limit)
	}
	normalGoesThrough(t, b, topic, r)

	// A letter may use the room kept for the envelope, up to the frame.
	letterExact := exactMetadataValue(t, id, true, publishTo(b, topic))
	letter := message.NewMessage(id, []byte("x"))
	letter.Metadata.Set("k", strings.Repeat("v", letterExact))
	letter.SetContext(antidote.WithLetter(context.Background()))
	if err := b.Publisher.Publish(topic, letter); err != nil {
		t.Fatalf("letter at its limit: %v", err)
	}
	r.expectIntact(letter)
	t.Logf("largest metadata value with a 36-byte UUID: %d bytes (headers table limit %d); in a letter: %d", exact, tl.Limit, letterExact)
}

// AMQP header names are shortstr: 255 bytes arrive, 256 are refused.
// Without the check amqp091-go fails mid-publish and closes the connection.
func TestAMQPMetadataKeyOver255BytesIsRefused(t *testing.T) {
	rb := newRabbit(t)
	b := openAMQP(t, nil)
	topic := "antidote_test_key_" + watermill.NewShortUUID()
	rb.cleanup(topic)
	r := receiveAMQP(t, b, topic)

	ok := message.NewMessage(watermill.NewUUID(), []byte("x"))
	ok.Metadata.Set(strings.Repeat("k", 255), "v")
	if err := b.Publisher.Publish(topic, ok); err != nil {
		t.Fatalf("255-byte key: %v", err)
	}
	r.expectIntact(ok)

	long := message.NewMessage(watermill.NewUUID(), []byte("x"))
	long.Metadata.Set(strings.Repeat("k", 256), "v")
	tl := tooLarge(t, b.Publisher.Publish(topic, long), "metadata key")
	if tl.Size != 256 || tl.Limit != 255 {
		t.Fatalf("TooLargeError %+v", *tl)
	}
	normalGoesThrough(t, b, topic, r)
}

// The UUID travels only as a header (the adapter sets no AMQP message-id,
// a 255-byte shortstr): a 40 KB UUID arrives intact; a 100 KB one does not
// fit the metadata budget and is refused like metadata, with an error that
// does not quote all of it.
func TestAMQPLongUUID(t *testing.T) {
	rb := newRabbit(t)
	b := openAMQP(t, nil)
	topic := "antidote_test_uuid_" + watermill.NewShortUUID()
	rb.cleanup(topic)
	r := receiveAMQP(t, b, topic)

	long := message.NewMessage(strings.Repeat("u", 40<<10), []byte("x"))
	if err := b.Publisher.Publish(topic, long); err != nil {
		t.Fatalf("40 KB UUID: %.300v", err)
	}
	r.expectIntact(long)

	huge := message.NewMessage(strings.Repeat("u", 100<<10), []byte("x"))
	err := b.Publisher.Publish(topic, huge)
	tooLarge(t, err, "metadata")
	if len(err.Error()) > 1000 {
		t.Fatalf("error of %d bytes quotes the UUID", len(err.Error()))
	}
	normalGoesThrough(t, b, topic, r)
}

// amqp091-go's reader takes at most 8192 entries per headers table; a
// delivery with more closes the consumer's connection and RabbitMQ
// redelivers it forever. 10,000 entries, however small, are refused (as
// metadata bytes: 120 KB, though they would fit a frame); a letter, which
// may use more bytes, is held to the entry count.
func TestAMQPMetadataEntries(t *testing.T) {
	rb := newRabbit(t)
	b := openAMQP(t, nil)
	topic := "antidote_test_entries_" + watermill.NewShortUUID()
	rb.cleanup(topic)
	r := receiveAMQP(t, b, topic)

	withEntries := func(n int, key, value func(int) string) *message.Message {
		m := message.NewMessage(watermill.NewUUID(), []byte("x"))
		for i := 0; i < n; i++ {
			m.Metadata.Set(key(i), value(i))
		}
		return m
	}
	small := func(i int) string { return fmt.Sprintf("%04x", i) }
	v := func(int) string { return "v" }
	for _, n := range []int{0, 1} {
		m := withEntries(n, small, v)
		if err := b.Publisher.Publish(topic, m); err != nil {
			t.Fatalf("%d entries: %v", n, err)
		}
		r.expectIntact(m)
	}
	if !errors.Is(b.Publisher.Publish(topic, withEntries(10000, small, v)), antidote.ErrMessageTooLarge) {
		t.Fatal("10,000 small entries: not refused")
	}
	// 10,000 entries "key<i>"="value<i>" (~220 KB) are refused too.
	tooLarge(t, b.Publisher.Publish(topic, withEntries(10000, func(i int) string { return fmt.Sprintf("key%d", i) }, func(i int) string { return fmt.Sprintf("value%d", i) })), "metadata")
	normalGoesThrough(t, b, topic, r)

	// A letter of 10,000 small entries fits the bytes, not the entry count.
	letter := withEntries(10000, small, func(int) string { return "" })
	letter.SetContext(antidote.WithLetter(context.Background()))
	err := b.Publisher.Publish(topic, letter)
	tl := tooLarge(t, err, "metadata entries")
	if tl.Size != 10001 || !strings.Contains(err.Error(), "10001 entries") {
		t.Fatalf("10,000 entries and the UUID: %v", err)
	}
	// At the limit (with the UUID header): delivered intact, so amqp091-go
	// reads it.
	atLimit := withEntries(tl.Limit-1, small, func(int) string { return "" })
	atLimit.SetContext(antidote.WithLetter(context.Background()))
	if err := b.Publisher.Publish(topic, atLimit); err != nil {
		t.Fatalf("%d entries and the UUID, the limit: %v", tl.Limit-1, err)
	}
	r.expectIntact(atLimit)
	over := withEntries(tl.Limit, small, func(int) string { return "" })
	over.SetContext(antidote.WithLetter(context.Background()))
	tooLarge(t, b.Publisher.Publish(topic, over), "metadata entries")
	normalGoesThrough(t, b, topic, r)
	t.Logf("most metadata entries in a letter: %d (+ the UUID header)", tl.Limit-1)
}

// exactMetadataValue returns the length of a value for key "k" that makes
// a message with UUID id exactly fill the metadata budget of publish.
func exactMetadataValue(t *testing.T, id string, letter bool, publish func(*message.Message) error) int {
	t.Helper()
	probe := message.NewMessage(id, []byte("x"))
	probe.Metadata.Set("k", strings.Repeat("v", 200<<10))
	if letter {
		probe.SetContext(antidote.WithLetter(context.Background()))
	}
	tl := tooLarge(t, publish(probe), "metadata")
	return 200<<10 - (tl.Size - tl.Limit)
}

func publishTo(b *adapters.Broker, topic string) func(*message.Message) error {
	return func(m *message.Message) error { return b.Publisher.Publish(topic, m) }
}

// A message at the metadata limit that waits in a delay queue comes back
// with RabbitMQ's x-death headers added: it must still be readable. (A
// header frame over frame_max is delivered by RabbitMQ and rejected by
// amqp091-go, which closes the consumer's connection: the queue would be
// blocked by it forever.)
func TestAMQPMetadataAtTheLimitSurvivesTheDelayQueue(t *testing.T) {
	rb := newRabbit(t)
	b := openAMQP(t, nil)
	topic := "antidote_test_frame_delay_" + watermill.NewShortUUID()
	const after = 100 * time.Millisecond
	rb.cleanup(topic, adapters.AMQPDelayQueue(topic, after))
	r := receiveAMQP(t, b, topic)

	id := watermill.NewUUID()
	schedule := func(m *message.Message) error { return b.Scheduler().Schedule(context.Background(), topic, m, after) }
	// Schedule stamps antidote.retry_due, whose RFC 3339 text varies by a
	// few bytes (trailing zeros of the nanoseconds are dropped): stay that
	// much under the limit.
	n := exactMetadataValue(t, id, false, schedule) - 16
	m := message.NewMessage(id, []byte("x"))
	m.Metadata.Set("k", strings.Repeat("v", n))
	if err := schedule(m); err != nil {
		t.Fatal(err)
	}
	got := r.next()
	if got.UUID != id || got.Metadata.Get("k") != m.Metadata.Get("k") || got.Metadata.Get("x-death") == "" {
		t.Fatalf("got %.40s with %d metadata entries", got.UUID, len(got.Metadata))
	}
}

// A dead letter may be larger than its original by the envelope: the
// ordinary budget keeps that room, a letter (antidote.WithLetter) may use it. So a
// message at the ordinary limit can always be dead-lettered.
func TestAMQPLetterMayUseTheEnvelopeRoom(t *testing.T) {
	rb := newRabbit(t)
	b := openAMQP(t, nil)
	topic := "antidote_test_letter_room_" + watermill.NewShortUUID()
	dlq := topic + antidote.DeadLetterSuffix
	rb.cleanup(topic, dlq)
	r := receiveAMQPLetters(t, b, dlq)

	id := watermill.NewUUID()
	n := exactMetadataValue(t, id, false, publishTo(b, topic))
	original := message.NewMessage(id, []byte("x"))
	original.Metadata.Set("k", strings.Repeat("v", n))
	if err := b.Publisher.Publish(topic, original); err != nil {
		t.Fatalf("original at the limit: %v", err)
	}
	// The envelope's largest values: a 4 KiB error and an 8 KiB stack.
	letter := original.Copy()
	letter.Metadata.Set("antidote.error", strings.Repeat("e", 4<<10))
	letter.Metadata.Set("antidote.stack", strings.Repeat("s", 8<<10))
	letter.Metadata.Set("antidote.reason", "permanent")
	tooLarge(t, b.Publisher.Publish(dlq, letter), "metadata")
	letter.SetContext(antidote.WithLetter(context.Background()))
	if err := b.Publisher.Publish(dlq, letter); err != nil {
		t.Fatalf("letter of a message at the limit: %v", err)
	}
	r.expectIntact(letter)
}

// A batch with one message that cannot fit publishes nothing: the refusal
// comes before anything is sent.
func TestAMQPBatchWithOneTooLargeMessagePublishesNothing(t *testing.T) {
	rb := newRabbit(t)
	b := openAMQP(t, func(c *adapters.AMQPConfig) { c.MaxMessageBytes = 10 })
	topic := "antidote_test_batch_limit_" + watermill.NewShortUUID()
	rb.cleanup(topic)
	ok := message.NewMessage(watermill.NewUUID(), []byte("small"))
	if err := b.Publisher.Publish(topic, ok); err != nil {
		t.Fatal(err)
	}
	tooLarge(t, b.Publisher.Publish(topic,
		message.NewMessage(watermill.NewUUID(), []byte("small")),
		message.NewMessage(watermill.NewUUID(), []byte("far too large")),
	), "message")
	if got := rb.drain(topic); len(got) != 1 || uuidHeader(got[0]) != ok.UUID {
		t.Fatalf("%d messages in the queue, want only the first ordinary one", len(got))
	}
}

// amqp.max_message_bytes set above the server's max_message_size (128 MiB
// on RabbitMQ 3.x): RabbitMQ closes the channel; Publish fails with its
// reason and the next publish gets a fresh channel.
func TestAMQPBodyOverServerMaxMessageSize(t *testing.T) {
	if testing.Short() {
		t.Skip("sends 128 MiB")
	}
	rb := newRabbit(t)
	b := openAMQP(t, func(c *adapters.AMQPConfig) { c.MaxMessageBytes = 256 << 20 })
	topic := "antidote_test_server_max_" + watermill.NewShortUUID()
	rb.cleanup(topic)
	r := receiveAMQP(t, b, topic)
	err := b.Publisher.Publish(topic, message.NewMessage(watermill.NewUUID(), make([]byte, 128<<20+1)))
	if err == nil || !strings.Contains(err.Error(), "max size") {
		t.Fatalf("body over the server's max_message_size: %v", err)
	}
	normalGoesThrough(t, b, topic, r)
}
