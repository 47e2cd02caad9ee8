package textcut

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestPrefix(t *testing.T) {
	for _, tc := range []struct {
		s    string
		n    int
		want string
	}{
		{"hello", 10, "hello"},
		{"hello", 5, "hello"},
		{"hello", 3, "hel"},
		{"hello", 0, ""},
		{"hello", -1, ""},
		{"héllo", 2, "h"},  // é is two bytes: not split
		{"héllo", 3, "hé"}, // ends right after é
		{"日本語", 4, "日"},
		{"日本語", 2, ""},
	} {
		got := Prefix(tc.s, tc.n)
		if got != tc.want {
			t.Errorf("Prefix(%q, %d) = %q, want %q", tc.s, tc.n, got, tc.want)
		}
		if !utf8.ValidString(got) {
			t.Errorf("Prefix(%q, %d) = %q is not valid UTF-8", tc.s, tc.n, got)
		}
	}
}

func TestTruncate(t *testing.T) {
	if got := Truncate("short", 5, "..."); got != "short" {
		t.Errorf("a fitting text is kept whole, got %q", got)
	}
	if got := Truncate("abcdef", 3, "...[truncated]"); got != "abc...[truncated]" {
		t.Errorf("got %q", got)
	}
	long := strings.Repeat("é", 100) // 200 bytes
	got := Truncate(long, 101, "…")
	if !utf8.ValidString(got) || got != strings.Repeat("é", 50)+"…" {
		t.Errorf("cut inside a character: %q", got)
	}
}
