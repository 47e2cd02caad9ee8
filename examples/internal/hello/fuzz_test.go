package hello

import (
	"encoding/json"
	"errors"
	"testing"
	"unicode/utf8"
)

// FuzzParse: Parse never panics; every error wraps ErrInvalid (permanent
// poison); an accepted payload is a JSON object that meets the rule, and the
// Hello it yields re-encodes to a payload Parse accepts as the same Hello.
// The seed corpus is in testdata/fuzz/FuzzParse. Run with
//
//	go test -run '^$' -fuzz FuzzParse -fuzztime 60s ./examples/internal/hello/
func FuzzParse(f *testing.F) {
	f.Add(Payload(1))
	f.Add([]byte(`{"user_id":1,"msg":"Hello Wor`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		h, err := Parse(payload)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error does not wrap ErrInvalid: %v", err)
			}
			return
		}
		if h.UserID <= 0 || h.Msg == "" || utf8.RuneCountInString(h.Msg) > MaxMsgLen {
			t.Fatalf("accepted %q as %+v, which breaks the rule", payload, h)
		}
		var obj map[string]json.RawMessage
		if json.Unmarshal(payload, &obj) != nil {
			t.Fatalf("accepted %q, not a JSON object", payload)
		}
		again, err := json.Marshal(h)
		if err != nil {
			t.Fatal(err)
		}
		h2, err := Parse(again)
		if err != nil || h2 != h {
			t.Fatalf("round trip of %+v: %+v, %v", h, h2, err)
		}
	})
}
