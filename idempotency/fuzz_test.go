package idempotency_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/idempotency"
)

// FuzzFromJSONField feeds arbitrary paths and payloads to FromJSONField.
// Properties: it never panics (an empty path is a documented programming
// error and skipped); a key it returns is non-empty and is the field's
// string or number text; ErrNoKey only for a missing, null or "" field.
// The seed corpus is in testdata/fuzz/FuzzFromJSONField. Run with
//
//	go test -run '^$' -fuzz FuzzFromJSONField -fuzztime 60s ./idempotency/
func FuzzFromJSONField(f *testing.F) {
	f.Add("order.id", []byte(`{"order":{"id":"o-1"}}`))
	f.Add("items.0.sku", []byte(`{"items":[{"sku":42}]}`))
	f.Add("id", []byte(`{"id":"a"} trailing garbage`))
	f.Fuzz(func(t *testing.T, path string, payload []byte) {
		if path == "" {
			return
		}
		key, err := idempotency.FromJSONField(path)(message.NewMessage("u", payload))
		if err != nil {
			if key != "" {
				t.Fatalf("key %q with error %v", key, err)
			}
			return
		}
		if key == "" {
			t.Fatal("empty key without error")
		}
		if !json.Valid(payload) {
			t.Fatalf("key %q from a payload that is not one JSON value: %q", key, payload)
		}
		// The key is the field's value: walk the same path independently.
		dec := json.NewDecoder(strings.NewReader(string(payload)))
		dec.UseNumber()
		var v any
		if err := dec.Decode(&v); err != nil {
			t.Fatalf("key %q from a payload the decoder rejects: %v", key, err)
		}
		for _, seg := range strings.Split(path, ".") {
			switch n := v.(type) {
			case map[string]any:
				v = n[seg]
			case []any:
				i := -1
				for j := range n {
					if seg == itoa(j) {
						i = j
					}
				}
				if i < 0 {
					// strconv.Atoi also accepts "+0" and "00"; fall back to it.
					return
				}
				v = n[i]
			default:
				t.Fatalf("key %q found through a %T", key, v)
			}
		}
		switch x := v.(type) {
		case string:
			if x != key {
				t.Fatalf("key %q, field %q", key, x)
			}
		case json.Number:
			if x.String() != key {
				t.Fatalf("key %q, field %s", key, x)
			}
		default:
			t.Fatalf("key %q from a %T", key, v)
		}
	})
}

// FuzzDefaultKey: DefaultKey never fails on any message: the metadata key when
// set, else the UUID, else ErrNoKey.
func FuzzDefaultKey(f *testing.F) {
	f.Add("uuid-1", "key-1")
	f.Add("", "")
	f.Fuzz(func(t *testing.T, uuid, mdKey string) {
		msg := message.NewMessage(uuid, nil)
		if mdKey != "" {
			msg.Metadata.Set(idempotency.MetadataKey, mdKey)
		}
		key, err := idempotency.DefaultKey()(msg)
		switch {
		case mdKey != "":
			if err != nil || key != mdKey {
				t.Fatalf("key %q err %v, want %q", key, err, mdKey)
			}
		case uuid != "":
			if err != nil || key != uuid {
				t.Fatalf("key %q err %v, want %q", key, err, uuid)
			}
		default:
			if !errors.Is(err, idempotency.ErrNoKey) {
				t.Fatalf("err %v, want ErrNoKey", err)
			}
		}
	})
}

func itoa(i int) string {
	b, _ := json.Marshal(i)
	return string(b)
}
