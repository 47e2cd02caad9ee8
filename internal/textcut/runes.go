package textcut

import "unicode/utf8"

// Runes fits s into n runes (terminal columns, counting one per rune): s
// itself when it has at most n runes, else its first runes followed by
// marker, the whole at most n runes long. A cut never splits a UTF-8
// sequence. When n cannot hold even the marker, the marker is cut too.
func Runes(s string, n int, marker string) string {
	if n <= 0 {
		return ""
	}
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	keep := n - utf8.RuneCountInString(marker)
	if keep < 0 {
		return Runes(marker, n, "")
	}
	i := 0
	for k := 0; k < keep; k++ {
		_, size := utf8.DecodeRuneInString(s[i:])
		i += size
	}
	return Prefix(s, i) + marker
}
