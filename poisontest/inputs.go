package poisontest

import (
	"bytes"
	"strings"
)

// Input is one message of the battery.
type Input struct {
	// Name identifies the input in the report, e.g. "truncated JSON".
	Name string
	// Payload is published byte for byte.
	Payload []byte
	// Metadata is added to the message. Optional.
	Metadata map[string]string
	// Valid marks a healthy input: it must be processed (acked without a
	// dead letter). A bad input may be processed or dead-lettered, as long
	// as it settles without blocking the queue or looping.
	Valid bool
	// WantReason, when set, is the dead-letter reason the input must end
	// with (the kit's injected panic must end as "panic").
	WantReason string

	injectPanic bool
}

// MetadataSentinel marks the kit's sentinel messages. The kit acks them
// itself, below the whole stack, without calling the handler under test: a
// sentinel only proves the queue still moves.
const MetadataSentinel = "poisontest.sentinel"

// MetadataInjectedPanic marks the input on which the kit makes the handler
// panic, as a bug in it would, without calling the handler under test.
const MetadataInjectedPanic = "poisontest.injected_panic"

// Sizes of the large inputs of the battery.
const (
	// LargePayloadBytes is the size of the "10 MB payload" input.
	LargePayloadBytes = 10 << 20
	// HugeMetadataBytes is the size of the "huge metadata value" input's
	// metadata value.
	HugeMetadataBytes = 1 << 20
	// NestingDepth is how deep the "deeply nested JSON" input nests arrays,
	// beyond encoding/json's limit of 10000.
	NestingDepth = 100_000
)

// Battery returns the built-in bad inputs, in the order Run sends them.
// sample, when not nil, is a valid payload used as the body of the inputs
// that are bad only in their metadata (the huge metadata value), so that the
// handler's reaction to the metadata alone is seen; without one "{}" is used.
func Battery(sample []byte) []Input {
	if sample == nil {
		sample = []byte(`{}`)
	}
	large := make([]byte, 0, LargePayloadBytes+64)
	large = append(large, `{"user_id":1,"msg":"`...)
	large = append(large, bytes.Repeat([]byte("a"), LargePayloadBytes)...)
	large = append(large, `"}`...)
	nested := strings.Repeat("[", NestingDepth) + strings.Repeat("]", NestingDepth)
	return []Input{
		{Name: "truncated JSON", Payload: []byte(`{"user_id":1,"msg":"Hello Wor`)},
		{Name: "wrong types", Payload: []byte(`{"user_id":"one","msg":42,"id":[],"amount":{}}`)},
		{Name: "empty payload", Payload: []byte{}},
		{Name: "10 MB payload", Payload: large},
		{Name: "invalid UTF-8", Payload: []byte("{\"user_id\":1,\"msg\":\"\xff\xfe\xc3\x28 Hello\"}")},
		{Name: "huge metadata value", Payload: bytes.Clone(sample), Metadata: map[string]string{"x-huge": strings.Repeat("m", HugeMetadataBytes)}},
		{Name: "null payload", Payload: []byte(`null`)},
		{Name: "deeply nested JSON", Payload: []byte(nested)},
		{Name: "handler panic", Payload: bytes.Clone(sample), WantReason: "panic", injectPanic: true},
	}
}
