package fingerprint_test

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/antidote-mq/antidote/fingerprint"
)

// Normalizing is idempotent (a normalized message is its own group key),
// stays within its bound, and keeps UTF-8 valid. testdata/fuzz holds seeds
// of every shape NormalizeMessage takes out.
func FuzzNormalizeMessage(f *testing.F) {
	for _, s := range []string{`parsing "abc": invalid syntax`, "dial tcp 10.0.0.5:5432", "2026-11-26T10:00:00Z", "0xdeadbeef 12345678", "'\\'", "-1e-5", "\xff",
		"01ARZ3NDEKTSV4RRFFQ69G5FAV", "cus_NffrFeUfNV2Hib ord-8f3k2j", "a@b.co", "orders-7d9f8b6c5-x2k4p", "[::1]:80", "1m30.5s", "eyJa.eyJb.c", "Mon, 07 Dec 2026 14:52:44 GMT", "status 404"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n := fingerprint.NormalizeMessage(s)
		if again := fingerprint.NormalizeMessage(n); again != n {
			t.Errorf("not idempotent: %q -> %q -> %q", s, n, again)
		}
		if utf8.ValidString(s) && !utf8.ValidString(n) {
			t.Errorf("%q became invalid UTF-8 %q", s, n)
		}
		if len(n) > 4096 {
			t.Errorf("normalized %d bytes to %d", len(s), len(n))
		}
	})
}

// Shape never panics, whatever the bytes, and is a function of them.
func FuzzShape(f *testing.F) {
	for _, s := range []string{`{"a":[1,{"b":null}],"c":{}}`, `[[[`, `{"a":1}{}`, "\x00\x01", `"s"`, ``} {
		f.Add([]byte(s), "")
	}
	f.Add([]byte(`{"x":1}`), "application/json; charset=utf-8")
	f.Fuzz(func(t *testing.T, payload []byte, contentType string) {
		a := fingerprint.Shape(payload, contentType)
		if b := fingerprint.Shape(payload, contentType); a != b {
			t.Errorf("two shapes for one payload: %q, %q", a, b)
		}
		if a == "" {
			t.Error("empty shape")
		}
	})
}

// Any text as a stack: a frame, when found, is one line without spaces.
func FuzzFirstAppFrame(f *testing.F) {
	f.Add("goroutine 1 [running]:\nmain.main()\n\t/x.go:1 +0x1\n")
	f.Add("panic({0x1, 0x2})\n(\n)\n.(\n")
	f.Fuzz(func(t *testing.T, stack string) {
		fr := fingerprint.Options{}.FirstAppFrame(stack)
		if strings.ContainsAny(fr, " \t\n") {
			t.Errorf("frame %q has whitespace", fr)
		}
	})
}
