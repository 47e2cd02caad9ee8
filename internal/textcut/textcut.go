// Package textcut cuts text to a byte budget without splitting a UTF-8
// sequence: the one truncation of error texts, UUIDs and names put in logs,
// spans and error messages.
package textcut

import "unicode/utf8"

// Prefix returns the longest prefix of s that has at most n bytes and does
// not end inside a multi-byte character; s itself when it fits. A cut
// prefix of valid UTF-8 is valid UTF-8.
func Prefix(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := max(n, 0)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}

// Truncate returns s when it has at most n bytes, else Prefix(s, n)
// followed by marker, so a cut value is visibly incomplete. The marker is
// not counted in n.
func Truncate(s string, n int, marker string) string {
	if len(s) <= n {
		return s
	}
	return Prefix(s, n) + marker
}
