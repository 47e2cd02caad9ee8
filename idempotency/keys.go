package idempotency

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/poison"
)

// MetadataKey is the metadata key that carries a message's idempotency key,
// the header name HTTP APIs use for the same purpose. NewPublisher sets it;
// FromMetadata(MetadataKey) and DefaultKey read it.
const MetadataKey = poison.KeyIdempotencyKey

// ErrNoKey is returned (wrapped) by a KeyFunc when the message has no key.
// middleware.Idempotency then runs the handler without deduplication, or
// rejects the message when its RequireKey is set.
var ErrNoKey = errors.New("idempotency: message has no idempotency key")

// KeyFunc extracts the idempotency key of a message: two messages with the
// same key are the same operation, processed once. Return an error wrapping
// ErrNoKey when the message has none; any other error means the message is
// malformed (middleware.Idempotency classifies it permanent).
//
// Any func(*message.Message) (string, error) converts to a KeyFunc, e.g. a
// business key:
//
//	idempotency.KeyFunc(func(m *message.Message) (string, error) {
//		return "invoice/" + m.Metadata.Get("invoice_id"), nil
//	})
type KeyFunc func(msg *message.Message) (string, error)

// FromMetadata reads the key from metadata key name (MetadataKey when name
// is ""). An empty value is ErrNoKey.
func FromMetadata(name string) KeyFunc {
	if name == "" {
		name = MetadataKey
	}
	// Built once: a message without the key is common (DefaultKey falls
	// back to the UUID), and an error per message would cost allocations.
	errEmpty := fmt.Errorf("%w: metadata %q is empty", ErrNoKey, name)
	return func(msg *message.Message) (string, error) {
		if v := msg.Metadata.Get(name); v != "" {
			return v, nil
		}
		return "", errEmpty
	}
}

// FromUUID uses the Watermill message UUID. It catches broker redeliveries
// and producers that re-send the very same message, but not a producer that
// publishes the same operation again as a new message (a new UUID): for that
// the producer must stamp a business key (NewPublisher).
func FromUUID() KeyFunc {
	return func(msg *message.Message) (string, error) {
		if msg.UUID == "" {
			return "", errEmptyUUID
		}
		return msg.UUID, nil
	}
}

var errEmptyUUID = fmt.Errorf("%w: the message UUID is empty", ErrNoKey)

// FromJSONField reads the key from the JSON payload at a dot-separated path
// ("order.id"; a numeric segment indexes an array: "items.0.sku"). Strings
// are used as they are, numbers as written in the payload (so 42 and 42.0
// are different keys). A missing field, null or "" is ErrNoKey; a payload
// that is not JSON, or a field that is an object, array or boolean, is an
// error (the message is malformed). It panics on an empty path, a
// programming error.
func FromJSONField(path string) KeyFunc {
	if path == "" {
		panic("idempotency: FromJSONField needs a path such as \"order.id\"")
	}
	segments := strings.Split(path, ".")
	return func(msg *message.Message) (string, error) {
		dec := json.NewDecoder(bytes.NewReader(msg.Payload))
		dec.UseNumber()
		var doc any
		if err := dec.Decode(&doc); err != nil {
			return "", fmt.Errorf("idempotency: key field %q: payload is not JSON: %w", path, err)
		}
		// One JSON value and nothing after it: `{"id":"a"} garbage` is not a
		// payload to take a key from.
		if _, err := dec.Token(); err != io.EOF {
			return "", fmt.Errorf("idempotency: key field %q: payload is not JSON: data after the top-level value", path)
		}
		v := doc
		for i, seg := range segments {
			switch node := v.(type) {
			case map[string]any:
				v = node[seg]
			case []any:
				n, err := strconv.Atoi(seg)
				if err != nil || n < 0 || n >= len(node) {
					v = nil
				} else {
					v = node[n]
				}
			default:
				v = nil
			}
			if v == nil {
				return "", fmt.Errorf("%w: JSON field %q is missing (at %q)", ErrNoKey, path, strings.Join(segments[:i+1], "."))
			}
		}
		switch k := v.(type) {
		case string:
			if k == "" {
				return "", fmt.Errorf("%w: JSON field %q is empty", ErrNoKey, path)
			}
			return k, nil
		case json.Number:
			return k.String(), nil
		default:
			return "", fmt.Errorf("idempotency: JSON field %q is a %T, not a string or number", path, v)
		}
	}
}

// FirstOf tries each KeyFunc in order and returns the first key found; only
// ErrNoKey moves on to the next. With none found it returns ErrNoKey.
func FirstOf(fns ...KeyFunc) KeyFunc {
	errNone := fmt.Errorf("%w: none of %d key functions found one", ErrNoKey, len(fns)) // built once
	return func(msg *message.Message) (string, error) {
		for _, f := range fns {
			k, err := f(msg)
			if err == nil && k != "" {
				return k, nil
			}
			if err != nil && !errors.Is(err, ErrNoKey) {
				return "", err
			}
		}
		return "", errNone
	}
}

// DefaultKey is the Idempotency-Key metadata when the producer set it,
// otherwise the message UUID. Written out rather than as FirstOf, which
// would build an ErrNoKey error for every message without the metadata.
func DefaultKey() KeyFunc {
	uuid := FromUUID()
	return func(msg *message.Message) (string, error) {
		if v := msg.Metadata.Get(MetadataKey); v != "" {
			return v, nil
		}
		return uuid(msg)
	}
}
