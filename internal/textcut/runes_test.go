package textcut

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestRunes(t *testing.T) {
	for _, tc := range []struct {
		s    string
		n    int
		want string
	}{
		{"hello", 10, "hello"},
		{"hello", 5, "hello"},
		{"hello", 4, "hel…"},
		{"hello", 1, "…"},
		{"hello", 0, ""},
		{"hello", -3, ""},
		{"日本語の文字", 4, "日本語…"},
		{"héllo wörld", 6, "héllo…"},
		{"", 3, ""},
	} {
		got := Runes(tc.s, tc.n, "…")
		if got != tc.want {
			t.Errorf("Runes(%q, %d) = %q, want %q", tc.s, tc.n, got, tc.want)
		}
		if !utf8.ValidString(got) {
			t.Errorf("Runes(%q, %d) = %q is not valid UTF-8", tc.s, tc.n, got)
		}
	}
	if got := Runes("abcdef", 2, "..."); got != ".." {
		t.Errorf("a marker wider than n is cut: %q", got)
	}
	long := strings.Repeat("é", 100)
	for n := 1; n < 105; n++ {
		if got := Runes(long, n, "…"); utf8.RuneCountInString(got) != min(n, 100) || !utf8.ValidString(got) {
			t.Fatalf("Runes(100×é, %d) = %d runes", n, utf8.RuneCountInString(got))
		}
	}
}
