package poison_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/poison"
)

// rawPayload is deliberately not valid UTF-8 or JSON: the envelope must keep
// bytes, not text.
var rawPayload = []byte{'{', '"', 'u', 0xff, 0x00, 0xfe, '\n'}

func TestEnvelopeRoundTrip(t *testing.T) {
	msg := message.NewMessage("uuid-1", append([]byte(nil), rawPayload...))
	msg.Metadata.Set(poison.KeyTraceparent, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	msg.Metadata.Set(poison.KeyProducer, "billing-relay")
	msg.Metadata.Set("idempotency_key", "order-42")

	berlin := time.FixedZone("CEST", 2*60*60)
	first := time.Date(2024, 5, 1, 12, 0, 0, 123456789, berlin)
	last := first.Add(1500 * time.Millisecond)
	syntax := jsonSyntaxErr(t)
	o := poison.Origin{Topic: "orders", Handler: "store-orders", ConsumerGroup: "sink", Partition: 7, Offset: 1234567890123, HasOffset: true}
	f := poison.Failure{
		Reason:        poison.ReasonRetriesExhausted,
		Err:           fmt.Errorf("decode order: %w", poison.Permanent(syntax)),
		Attempts:      3,
		FirstFailedAt: first,
		LastFailedAt:  last,
	}

	env := poison.Envelope(msg, o, f)

	assert.Equal(t, msg.UUID, env.UUID)
	assert.Equal(t, rawPayload, []byte(env.Payload))
	msg.Payload[0] = 'X'
	assert.Equal(t, rawPayload, []byte(env.Payload), "the envelope must own a copy of the payload")
	assert.Len(t, msg.Metadata, 3, "the original message must not be modified")

	want := map[string]string{
		poison.KeyOriginalTopic:     "orders",
		poison.KeyOriginalPartition: "7",
		poison.KeyOriginalOffset:    "1234567890123",
		poison.KeyHandler:           "store-orders",
		poison.KeyConsumerGroup:     "sink",
		poison.KeyReason:            "retries_exhausted",
		poison.KeyError:             "decode order: " + syntax.Error(),
		poison.KeyErrorType:         "*json.SyntaxError",
		poison.KeyAttempts:          "3",
		poison.KeyFirstFailedAt:     "2024-05-01T10:00:00.123456789Z",
		poison.KeyLastFailedAt:      "2024-05-01T10:00:01.623456789Z",
		poison.KeyProducer:          "billing-relay",
		poison.KeyTraceparent:       "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"idempotency_key":           "order-42",
	}
	assert.Equal(t, want, map[string]string(env.Metadata))

	l, err := poison.ReadEnvelope(env)
	require.NoError(t, err)
	assert.Equal(t, "uuid-1", l.UUID)
	assert.Equal(t, rawPayload, l.Payload)
	assert.Equal(t, o, l.Origin())
	assert.Equal(t, poison.ReasonRetriesExhausted, l.Reason)
	assert.Equal(t, want[poison.KeyError], l.Error)
	assert.Equal(t, "*json.SyntaxError", l.ErrorType)
	assert.Empty(t, l.Stack)
	assert.Equal(t, 3, l.Attempts)
	assert.True(t, first.Equal(l.FirstFailedAt), "%v != %v", first, l.FirstFailedAt)
	assert.True(t, last.Equal(l.LastFailedAt))
	assert.Equal(t, time.UTC, l.LastFailedAt.Location())
	assert.Equal(t, "billing-relay", l.Producer)
	assert.Equal(t, want[poison.KeyTraceparent], l.Traceparent)
	assert.True(t, l.ReplayedAt.IsZero())
	assert.Zero(t, l.ReplayCount)
	assert.Equal(t, want, map[string]string(l.Metadata))
}

func TestEnvelopeReplacesStaleFailureKeys(t *testing.T) {
	// A message that carries the keys of another death (a subscriber that
	// skipped the adapters, an old replay): they are not this letter's.
	old := poison.Envelope(message.NewMessage("u", []byte("x")),
		poison.Origin{Topic: "orders", Partition: 1, Offset: 2, HasOffset: true, ConsumerGroup: "g"},
		poison.Failure{Err: poison.NewPanicError("boom"), Attempts: 5, FirstFailedAt: time.Now()})
	old.Metadata.Set(poison.KeyReplayedAt, "2024-05-01T10:00:00Z")
	old.Metadata.Set(poison.KeyReplayCount, "1")
	require.NotEmpty(t, old.Metadata.Get(poison.KeyStack))

	env := poison.Envelope(old, poison.Origin{Topic: "orders", Handler: "h"}, poison.Failure{Err: errors.New("second death")})

	md := env.Metadata
	assert.Equal(t, "permanent", md.Get(poison.KeyReason))
	assert.Equal(t, "second death", md.Get(poison.KeyError))
	assert.Equal(t, "*errors.errorString", md.Get(poison.KeyErrorType))
	for _, k := range []string{poison.KeyStack, poison.KeyOriginalPartition, poison.KeyOriginalOffset, poison.KeyConsumerGroup, poison.KeyFirstFailedAt} {
		_, ok := md[k]
		assert.False(t, ok, "stale %s must be removed", k)
	}
	assert.Equal(t, "g", md.Get(antidote.ForeignKey(poison.KeyConsumerGroup)), "kept, foreign, for the post-mortem")
	assert.Equal(t, "1", md.Get(antidote.ForeignKey(poison.KeyOriginalPartition)))
	assert.Equal(t, "5", md.Get(poison.KeyAttempts), "Attempts 0 keeps what the message carries")
	assert.Equal(t, "1", md.Get(poison.KeyReplayCount), "replay history is kept")

	l, err := poison.ReadEnvelope(env)
	require.NoError(t, err)
	assert.Equal(t, 1, l.ReplayCount)
	assert.Equal(t, time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC), l.ReplayedAt)
}

func TestEnvelopeReasonDefaults(t *testing.T) {
	msg := message.NewMessage("u", nil)
	reason := func(err error) string {
		return poison.Envelope(msg, poison.Origin{}, poison.Failure{Err: err}).Metadata.Get(poison.KeyReason)
	}
	assert.Equal(t, "permanent", reason(nil))
	assert.Equal(t, "permanent", reason(errors.New("x")))
	assert.Equal(t, "panic", reason(fmt.Errorf("h: %w", poison.NewPanicError("boom"))))
	assert.Equal(t, "undecodable", reason(poison.WithReason(poison.NewPanicError("boom"), poison.ReasonUndecodable)))
	assert.Equal(t, "crash_loop",
		poison.Envelope(msg, poison.Origin{}, poison.Failure{Reason: poison.ReasonCrashLoop, Err: errors.New("x")}).Metadata.Get(poison.KeyReason))
}

func TestEnvelopePanicStackTruncated(t *testing.T) {
	stack := []byte(strings.Repeat("goroutine 1 [running]:\nmain.handler()\n", 1000))
	require.Greater(t, len(stack), poison.MaxStackBytes)
	env := poison.Envelope(message.NewMessage("u", nil), poison.Origin{Topic: "t"},
		poison.Failure{Err: poison.Permanent(&poison.PanicError{Value: "boom", Stack: stack})})

	got := env.Metadata.Get(poison.KeyStack)
	assert.LessOrEqual(t, len(got), poison.MaxStackBytes+len("\n...[truncated]"))
	assert.True(t, strings.HasPrefix(string(stack), strings.TrimSuffix(got, "\n...[truncated]")))
	assert.True(t, strings.HasSuffix(got, "[truncated]"))
	assert.Equal(t, "panic", env.Metadata.Get(poison.KeyReason))
	assert.Equal(t, "*poison.PanicError", env.Metadata.Get(poison.KeyErrorType))
}

func TestEnvelopeErrorTruncatedOnRuneBoundary(t *testing.T) {
	long := strings.Repeat("ü", poison.MaxErrorBytes) // 2 bytes each
	env := poison.Envelope(message.NewMessage("u", nil), poison.Origin{}, poison.Failure{Err: errors.New("x" + long)})
	got := env.Metadata.Get(poison.KeyError)
	assert.True(t, utf8.ValidString(got))
	assert.LessOrEqual(t, len(got), poison.MaxErrorBytes+len("\n...[truncated]"))
	assert.True(t, strings.HasSuffix(got, "[truncated]"))
}

type myErr struct{}

func (*myErr) Error() string { return "mine" }

func TestErrorType(t *testing.T) {
	syntax := jsonSyntaxErr(t)
	opErr := &net.OpError{Op: "dial", Err: errors.New("refused")}
	tests := []struct {
		err  error
		want string
	}{
		{nil, ""},
		{errors.New("x"), "*errors.errorString"},
		{syntax, "*json.SyntaxError"},
		{fmt.Errorf("a: %w", fmt.Errorf("b: %w", syntax)), "*json.SyntaxError"},
		{poison.Permanent(syntax), "*json.SyntaxError"},
		{poison.Transient(poison.WithReason(&myErr{}, poison.ReasonUndecodable)), "*poison_test.myErr"},
		{fmt.Errorf("%w and %w", &myErr{}, syntax), "*poison_test.myErr"},
		{fmt.Errorf("no wrap: %v", syntax), "*errors.errorString"},
		{opErr, "*net.OpError"},
		{fmt.Errorf("x: %w", poison.NewPanicError(syntax)), "*poison.PanicError"},
		{poison.Invalidf("bad"), "*poison.ValidationError"},
		{context.DeadlineExceeded, "context.deadlineExceededError"},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, poison.ErrorType(tt.err), "%v", tt.err)
	}
}

func TestReadEnvelopeErrors(t *testing.T) {
	valid := func() *message.Message {
		return poison.Envelope(message.NewMessage("u", []byte("p")),
			poison.Origin{Topic: "t", Partition: 1, Offset: 2, HasOffset: true},
			poison.Failure{Err: errors.New("e"), Attempts: 2, FirstFailedAt: time.Now(), LastFailedAt: time.Now()})
	}
	_, err := poison.ReadEnvelope(valid())
	require.NoError(t, err)

	_, err = poison.ReadEnvelope(message.NewMessage("u", []byte("p")))
	assert.ErrorIs(t, err, poison.ErrNotEnvelope)

	tests := []struct {
		key, value string
	}{
		{poison.KeyOriginalPartition, "seven"},
		{poison.KeyOriginalPartition, "2147483648"}, // > int32
		{poison.KeyOriginalPartition, "-1"},
		{poison.KeyOriginalOffset, "1e3"},
		{poison.KeyOriginalOffset, ""},
		{poison.KeyAttempts, "3.0"},
		{poison.KeyAttempts, "-2"},
		{poison.KeyReplayCount, "x"},
		{poison.KeyFirstFailedAt, "yesterday"},
		{poison.KeyLastFailedAt, "2024-05-01 10:00:00"},
		{poison.KeyReplayedAt, "1714557600"},
	}
	for _, tt := range tests {
		t.Run(tt.key+"="+tt.value, func(t *testing.T) {
			msg := valid()
			msg.Metadata.Set(tt.key, tt.value)
			_, err := poison.ReadEnvelope(msg)
			var envErr *poison.EnvelopeError
			require.ErrorAs(t, err, &envErr)
			assert.Equal(t, tt.key, envErr.Key)
			assert.Equal(t, tt.value, envErr.Value)
			assert.Contains(t, err.Error(), tt.key)
		})
	}

	t.Run("partition without offset", func(t *testing.T) {
		msg := valid()
		delete(msg.Metadata, poison.KeyOriginalOffset)
		_, err := poison.ReadEnvelope(msg)
		var envErr *poison.EnvelopeError
		require.ErrorAs(t, err, &envErr)
		assert.Equal(t, poison.KeyOriginalOffset, envErr.Key)
	})
}

// TestOriginOfRouter checks that OriginOf finds what message.Router puts in
// the message context.
func TestOriginOfRouter(t *testing.T) {
	logger := watermill.NopLogger{}
	pubSub := gochannel.NewGoChannel(gochannel.Config{}, logger)
	router, err := message.NewRouter(message.RouterConfig{}, logger)
	require.NoError(t, err)

	origins := make(chan poison.Origin, 1)
	router.AddConsumerHandler("store-orders", "orders", pubSub, func(msg *message.Message) error {
		origins <- poison.OriginOf(msg)
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = router.Run(ctx) }()
	<-router.Running()
	t.Cleanup(func() { _ = router.Close() })

	require.NoError(t, pubSub.Publish("orders", message.NewMessage(watermill.NewUUID(), []byte("{}"))))
	select {
	case o := <-origins:
		assert.Equal(t, poison.Origin{Topic: "orders", Handler: "store-orders"}, o, "gochannel has no partitions")
	case <-time.After(10 * time.Second):
		t.Fatal("message not handled")
	}

	assert.Equal(t, poison.Origin{}, poison.OriginOf(message.NewMessage("u", nil)), "outside a router there is no origin")
}

func TestJSONErrorIsSyntax(t *testing.T) {
	// Guards the assumption behind the "undecodable" default: json.Unmarshal
	// reports truncated input as *json.SyntaxError, not io.ErrUnexpectedEOF.
	var syntax *json.SyntaxError
	assert.ErrorAs(t, jsonSyntaxErr(t), &syntax)
}

// A message that arrives with malformed values in keys the envelope reader
// parses (a foreign producer's, an old tool's) still makes a letter that
// reads back; the bad values are kept under KeyMalformed.
func TestEnvelopeOfMalformedKeysReadsBack(t *testing.T) {
	m := message.NewMessage("u", []byte("p"))
	m.Metadata.Set(poison.KeyReplayCount, "-1")
	m.Metadata.Set(poison.KeyReplayedAt, "yesterday")
	m.Metadata.Set(poison.KeyAttempts, "many")
	letter := poison.Envelope(m, poison.Origin{Topic: "t"}, poison.Failure{Reason: poison.ReasonPermanent})
	l, err := poison.ReadEnvelope(letter)
	if err != nil {
		t.Fatalf("letter does not read back: %v", err)
	}
	for _, want := range []string{"antidote.replay_count=-1", "antidote.replayed_at=yesterday", "antidote.attempts=many"} {
		if !strings.Contains(l.Metadata.Get(poison.KeyMalformed), want) {
			t.Errorf("%s missing from %q", want, l.Metadata.Get(poison.KeyMalformed))
		}
	}
}
