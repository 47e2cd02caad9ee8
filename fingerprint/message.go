package fingerprint

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// Placeholders NormalizeMessage puts where a message had data.
const (
	PlaceholderNumber = "<n>"
	PlaceholderHex    = "<hex>"
	PlaceholderUUID   = "<uuid>"
	PlaceholderTime   = "<time>"
	PlaceholderString = "<s>"
)

// maxMessage bounds the work on one message: errors are cut to this many
// bytes before normalizing (the envelope keeps errors of up to 8 KiB).
const maxMessage = 4096

// NormalizeMessage takes the data out of an error message so that the same
// bug with different ids, numbers and values reads the same:
//
//   - quoted text ("...", '...', `...`, across lines too) becomes <s> (a
//     value the code quoted: an id, a field's content);
//   - UUIDs become <uuid>, RFC 3339 timestamps <time>, hex runs of 8 or more
//     digits (hashes, object ids) and 0x... numbers <hex>;
//   - numbers not glued to a word (1, -2.5, 1e9, the 3 of "3 items", but not
//     the 2 of "http2" or "v2") become <n>;
//   - whitespace runs become one space.
//
// Words, punctuation and the message's structure stay, so two different
// errors ("invalid syntax" vs "value out of range") stay different.
func NormalizeMessage(s string) string {
	if len(s) > maxMessage {
		s = s[:maxMessage]
		for !utf8.ValidString(s) {
			s = s[:len(s)-1]
		}
	}
	var b strings.Builder
	b.Grow(len(s))
	space := false
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if unicode.IsSpace(r) {
			if !space && b.Len() > 0 {
				b.WriteByte(' ')
			}
			space = true
			i += size
			continue
		}
		space = false
		// An apostrophe after a word ("can't") is no quote; '>' counts as
		// a word here so that a placeholder before one reads the same.
		if r != '\'' || i == 0 || !isWordByte(s[i-1]) && s[i-1] != '>' {
			if n := quoted(s[i:]); n > 0 {
				b.WriteString(PlaceholderString)
				i += n
				continue
			}
		}
		if glued := i > 0 && isWordByte(s[i-1]); !glued {
			if n := uuidAt(s[i:]); n > 0 {
				b.WriteString(PlaceholderUUID)
				i += n
				continue
			}
			if n := timeAt(s[i:]); n > 0 {
				b.WriteString(PlaceholderTime)
				i += n
				continue
			}
			if n := hexAt(s[i:]); n > 0 {
				b.WriteString(PlaceholderHex)
				i += n
				continue
			}
			if n := numberAt(s[i:]); n > 0 {
				b.WriteString(PlaceholderNumber)
				i += n
				continue
			}
		}
		b.WriteString(s[i : i+size])
		i += size
	}
	return strings.TrimRight(b.String(), " ")
}

func isWordByte(c byte) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c >= utf8.RuneSelf
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// quoted is the length of a quoted string at the start of s (with its
// quotes and Go-style backslash escapes), or 0.
func quoted(s string) int {
	q := s[0]
	if q != '"' && q != '`' && q != '\'' {
		return 0
	}
	for i := 1; i < len(s); i++ {
		switch s[i] {
		case '\\':
			if q != '`' {
				i++
			}
		case q:
			return i + 1
		}
	}
	return 0
}

// wordEnds reports whether s[n:] does not continue a word.
func wordEnds(s string, n int) bool { return n >= len(s) || !isWordByte(s[n]) }

func uuidAt(s string) int {
	const n = 36
	if len(s) < n {
		return 0
	}
	for i := 0; i < n; i++ {
		switch i {
		case 8, 13, 18, 23:
			if s[i] != '-' {
				return 0
			}
		default:
			if !isHex(s[i]) {
				return 0
			}
		}
	}
	if !wordEnds(s, n) {
		return 0
	}
	return n
}

// timeAt matches an RFC 3339 date-time (2006-01-02T15:04:05, a fraction
// and a zone optional) or a bare date.
func timeAt(s string) int {
	digits := func(i, k int) bool {
		if i+k > len(s) {
			return false
		}
		for j := i; j < i+k; j++ {
			if !isDigit(s[j]) {
				return false
			}
		}
		return true
	}
	if !digits(0, 4) || len(s) < 10 || s[4] != '-' || !digits(5, 2) || s[7] != '-' || !digits(8, 2) {
		return 0
	}
	i := 10
	if i < len(s) && (s[i] == 'T' || s[i] == ' ') && digits(i+1, 2) && i+3 < len(s) && s[i+3] == ':' && digits(i+4, 2) {
		i += 6
		if i < len(s) && s[i] == ':' && digits(i+1, 2) {
			i += 3
		}
		if i < len(s) && s[i] == '.' && digits(i+1, 1) {
			i++
			for i < len(s) && isDigit(s[i]) {
				i++
			}
		}
		switch {
		case i < len(s) && s[i] == 'Z':
			i++
		case i < len(s) && (s[i] == '+' || s[i] == '-') && digits(i+1, 2) && i+3 < len(s) && s[i+3] == ':' && digits(i+4, 2):
			i += 6
		}
	}
	if !wordEnds(s, i) {
		return 0
	}
	return i
}

// hexAt matches 0x followed by hex digits, or a run of 8 or more hex
// digits with at least one decimal digit (so the words "deadbeef" and
// "accepted" stay words).
func hexAt(s string) int {
	if len(s) > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X') && isHex(s[2]) {
		i := 2
		for i < len(s) && isHex(s[i]) {
			i++
		}
		if wordEnds(s, i) {
			return i
		}
		return 0
	}
	i, hasDigit := 0, false
	for i < len(s) && isHex(s[i]) {
		hasDigit = hasDigit || isDigit(s[i])
		i++
	}
	if i >= 8 && hasDigit && wordEnds(s, i) {
		return i
	}
	return 0
}

// numberAt matches a decimal number with an optional sign, fraction and
// exponent, followed by a unit-like suffix of letters at most ("5ms",
// "10KiB" become "<n>ms", "<n>KiB": the suffix is kept by the caller as
// it is not consumed here).
func numberAt(s string) int {
	i := 0
	if s[0] == '-' || s[0] == '+' {
		i++
	}
	start := i
	for i < len(s) && isDigit(s[i]) {
		i++
	}
	if i == start {
		return 0
	}
	// A fraction, or the rest of a dotted number (an IPv4 address, a
	// version): one placeholder either way.
	for i+1 < len(s) && s[i] == '.' && isDigit(s[i+1]) {
		i++
		for i < len(s) && isDigit(s[i]) {
			i++
		}
	}
	if i+1 < len(s) && (s[i] == 'e' || s[i] == 'E') {
		j := i + 1
		if j < len(s) && (s[j] == '-' || s[j] == '+') {
			j++
		}
		if j < len(s) && isDigit(s[j]) {
			for j < len(s) && isDigit(s[j]) {
				j++
			}
			i = j
		}
	}
	return i
}
