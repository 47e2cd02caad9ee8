package fingerprint

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// Placeholders NormalizeMessage puts where a message had data.
const (
	PlaceholderNumber = "<n>"      // 42, -2.5, 1e9, a Unix time, the 250 of 250ms
	PlaceholderHex    = "<hex>"    // 0xc000123abc, 9f86d081884c7d65
	PlaceholderUUID   = "<uuid>"   // 7f3c9a2e-1b4d-4c8e-9f00-123456789abc
	PlaceholderTime   = "<time>"   // 2026-12-07T14:52:44Z, Mon, 07 Dec 2026 14:52:44 GMT
	PlaceholderString = "<s>"      // "abc", 'x', `y`, the values of Key (sku)=(ABC-1)
	PlaceholderID     = "<id>"     // 01ARZ3NDEKTSV4RRFFQ69G5FAV, the NffrFeUfNV2Hib of cus_NffrFeUfNV2Hib
	PlaceholderEmail  = "<email>"  // alice@example.com
	PlaceholderIP     = "<ip>"     // 10.0.0.5, 2001:db8::1, the 10-0-1-23 of ip-10-0-1-23
	PlaceholderJWT    = "<jwt>"    // eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig
	PlaceholderBase64 = "<base64>" // SGVsbG8sIHdvcmxkIQ+/aGk=
)

// maxMessage bounds the work on one message: errors are cut to this many
// bytes before normalizing (the envelope keeps errors of up to 8 KiB), and
// the result is cut to it too, so that normalizing a result again changes
// nothing.
const maxMessage = 4096

// NormalizeMessage takes the data out of an error message so that the same
// bug with different ids, numbers and values reads the same. In order of
// precedence:
//
//   - quoted text ("...", '...', `...`, across lines too) becomes <s> (a
//     value the code quoted), and so do PostgreSQL's key values:
//     Key (sku)=(ABC-1) is Key (sku)=(<s>);
//   - e-mail addresses become <email>; UUIDs <uuid>; timestamps <time>
//     (RFC 3339 and "2026-12-07 14:52:44", Go's Time.String, 2026/12/07,
//     RFC 1123 "Mon, 07 Dec 2026 14:52:44 GMT", ANSIC and Unix dates,
//     syslog's "Dec  7 14:52:44", a bare 14:52:44);
//   - IPv4 and IPv6 addresses become <ip> ("10.0.0.5:5432" is <ip>:<n>,
//     and so is "[::1]:5432"), and so does the dashed address of an EC2
//     host name (ip-10-0-1-23 is ip-<ip>); JWTs become <jwt> and base64
//     blobs <base64>;
//   - ids become <id>: ULIDs (01ARZ3NDEKTSV4RRFFQ69G5FAV, either case),
//     random tokens (see below), the generated part of a Kubernetes pod
//     name (orders-7d9f8b6c5-x2k4p is orders-<id>, fluentd-x2k4p is
//     fluentd-<id>), words that mix letters and digits more than once
//     (8f3k2j, a1b2c3), and an id after a lower-case prefix
//     (cus_NffrFeUfNV2Hib is cus_<id>, ord-8f3k2j and ord-2716pp
//     ord-<id>, key=AbCdEfGhXy key=<id>; a prefix's numbers are numbers:
//     user:12345 is user:<n>; letters alone are a word: ord-cancel);
//   - hex runs of 8 or more digits with a decimal one (hashes, object ids)
//     and 0x... numbers become <hex>;
//   - numbers become <n> (1, -2.5, 1e9, 10.5.1, a Unix time), a unit
//     after one stays (250ms is <n>ms, 1.5GiB <n>GiB, a Go duration 1m30.5s
//     is <n>s), and so does the word before one (user7 is user<n>,
//     max_retries_3 max_retries_<n>) unless the word and number are one
//     name: http2, utf8, sha256, base64, int64, x509, md5, 5xx, a version
//     (v2, v1beta1, OrderV2) and the like stay;
//   - a status or error code stays: "status 404", "exit status 2",
//     "SQLSTATE 23505", "errno 111" are different bugs from "status 500";
//   - whitespace runs become one space.
//
// A random token is a word of 16 or more letters, digits, '_' and '-'
// mixing upper case, lower case and digits in a way no CamelCase name
// does: with a '-', starting with a digit, with a lone lower-case letter
// inside ("Gn" of "2GnL", not "Go" of "GoAway"), a digit followed by a
// lower-case letter, or a third run of digits ("vytxeTZskVKR7C7WgdSP3d",
// "V1StGXR8_Z5jdHi6B-myT"). CamelCase names ("UnmarshalTypeError",
// "ErrConnectionRefused", "ErrHTTP2GoAway", "Int64Slice") stay, and so
// does a token without a digit (about one random 22-character token in
// 27), and one in a hundred or so of the others: they read as names.
//
// Words, field names (user_id), punctuation and the message's structure
// stay, so two different errors ("invalid syntax" vs "value out of range",
// "user not found" vs "order not found", "missing field user_id" vs
// "missing field msg") stay different. The work is linear in the
// message's length.
func NormalizeMessage(s string) string {
	n := normalizer{s: cut(s, maxMessage)}
	n.b.Grow(len(n.s))
	n.run()
	return strings.TrimRight(cut(n.b.String(), maxMessage), " ")
}

// cut shortens s to at most max bytes, between two words (a cut "sha256"
// would read "sha2", which normalizes again to "sha<n>") and runes.
func cut(s string, max int) string {
	if len(s) <= max {
		return s
	}
	i := max
	for i > 0 && (!utf8.RuneStart(s[i]) || isWordByte(s[i]) && isWordByte(s[i-1])) {
		i--
	}
	if i == 0 { // one word of max bytes: cut it at a rune
		for i = max; i > 0 && !utf8.RuneStart(s[i]); i-- {
		}
	}
	return s[:i]
}

type normalizer struct {
	s     string
	b     strings.Builder
	space bool // the last rune was whitespace
	glued bool // the last rune copied continues a word: nothing starts here
	// Where a scan ahead already failed: a later start inside the same
	// stretch would fail the same way, so it is not scanned again. This
	// keeps the work linear in the message's length.
	noEmail, noIP, noBase64, noRun int
	noQuote                        [3]bool // '"', '\'', '`' with no closing one left
	noParen                        bool
	pod, podEnd                    int // the generated part of a pod name
}

func (n *normalizer) run() {
	s := n.s
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if unicode.IsSpace(r) {
			if !n.space && n.b.Len() > 0 {
				n.b.WriteByte(' ')
			}
			n.space, n.glued = true, false
			i += size
			continue
		}
		n.space = false
		if l, text := n.match(i); l > 0 {
			// A placeholder ends a word: what follows is read afresh, as
			// it will be when the result is normalized again.
			n.b.WriteString(text)
			n.glued = false
			i += l
			continue
		}
		n.b.WriteString(s[i : i+size])
		n.glued = r >= utf8.RuneSelf || isWordByte(byte(r))
		i += size
	}
}

// after applies a look-behind test to what was written so far: the text
// before s[i:] as it reads normalized, so that normalizing the result
// again sees the same.
func (n *normalizer) after(test func(s string, i int) bool) bool {
	out := n.b.String()
	return test(out, len(out))
}

// match is the length of the data at s[i:] and what replaces it, or 0.
func (n *normalizer) match(i int) (int, string) {
	s := n.s
	if l := n.quoted(i); l > 0 {
		return l, PlaceholderString
	}
	if n.glued {
		return 0, ""
	}
	switch c := s[i]; {
	case isAlnum(c):
		return n.word(i)
	case c == '-' || c == '+':
		// A sign, not a dash between words or numbers ("10-20").
		if !n.after(glued) {
			if l := numberAt(s[i:]); l > 0 {
				return l, PlaceholderNumber
			}
		}
	case c == ':':
		if l := n.ipAt(i); l > 0 { // ::1
			return l, PlaceholderIP
		}
	case c == '[':
		// An IPv6 address in brackets, before its port: "[2001:db8::1]:443"
		// reads as "10.0.0.5:443" does, <ip>:<n>.
		if l := n.ipAt(i + 1); l > 0 && at(s, i+1+l) == ']' {
			return l + 2, PlaceholderIP
		}
	case c == '(':
		return n.keyValues(i)
	}
	return 0, ""
}

// word matches the data that starts with a letter or digit at s[i:].
func (n *normalizer) word(i int) (int, string) {
	s := n.s[i:]
	if i == n.pod && i > 0 {
		return n.podEnd - i, PlaceholderID
	}
	if l := n.emailAt(i); l > 0 {
		return l, PlaceholderEmail
	}
	if l := uuidAt(s); l > 0 {
		return l, PlaceholderUUID
	}
	if l := timeAt(s); l > 0 {
		return l, PlaceholderTime
	}
	if l := n.ipAt(i); l > 0 {
		return l, PlaceholderIP
	}
	if l := jwtAt(s); l > 0 {
		return l, PlaceholderJWT
	}
	if l := n.base64At(i); l > 0 {
		return l, PlaceholderBase64
	}
	if l, text := n.runAt(i); l > 0 {
		return l, text
	}
	if l := hexAt(s); l > 0 {
		return l, PlaceholderHex
	}
	if isDigit(s[0]) {
		return n.numeric(i)
	}
	return wordAt(s, n.after(prefixed), !n.after(glued))
}

func isWordByte(c byte) bool {
	return c == '_' || isAlnum(c) || c >= utf8.RuneSelf
}

func isAlnum(c byte) bool     { return isDigit(c) || isLetter(c) }
func isLetter(c byte) bool    { return isLower(c) || isUpper(c) }
func isLower(c byte) bool     { return c >= 'a' && c <= 'z' }
func isUpper(c byte) bool     { return c >= 'A' && c <= 'Z' }
func isDigit(c byte) bool     { return c >= '0' && c <= '9' }
func isHex(c byte) bool       { return isDigit(c) || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' }
func hasDigit(s string) bool  { return strings.IndexFunc(s, isDigitRune) >= 0 }
func isDigitRune(r rune) bool { return r >= '0' && r <= '9' }

// all reports whether every byte of s is one f accepts.
func all(s string, f func(byte) bool) bool {
	for i := 0; i < len(s); i++ {
		if !f(s[i]) {
			return false
		}
	}
	return true
}

// at is s[i], or 0 outside s.
func at(s string, i int) byte {
	if i < 0 || i >= len(s) {
		return 0
	}
	return s[i]
}

// wordEnds reports whether s[n:] does not continue a word: it is empty or
// starts with whitespace or punctuation other than '<' (a placeholder
// there stands for a word: "code2001" is "code<n>" the next time).
func wordEnds(s string, n int) bool {
	if n >= len(s) {
		return true
	}
	if c := s[n]; c < utf8.RuneSelf {
		return !isWordByte(c) && c != '<'
	}
	r, _ := utf8.DecodeRuneInString(s[n:])
	return unicode.IsSpace(r)
}

// glued reports whether s[i:] continues what is before it: a word, or a
// placeholder (which stands for one: "0ax" is "<n>ax" the next time).
// Whitespace, a non-breaking space too, is no word.
func glued(s string, i int) bool {
	if i == 0 {
		return false
	}
	if c := s[i-1]; c < utf8.RuneSelf {
		return isWordByte(c) || c == '>'
	}
	r, _ := utf8.DecodeLastRuneInString(s[:i])
	return !unicode.IsSpace(r)
}

// quoted is the length of a quoted string at s[i:] (with its quotes and
// Go-style backslash escapes), or 0.
func (n *normalizer) quoted(i int) int {
	s := n.s
	q := strings.IndexByte("\"'`", s[i])
	if q < 0 || n.noQuote[q] {
		return 0
	}
	// An apostrophe after a word ("can't"), or a placeholder, is no quote.
	if s[i] == '\'' && n.after(glued) {
		return 0
	}
	if l := quotedLen(s[i:]); l > 0 {
		return l
	}
	// No closing quote after i: none after a later quote either (it is
	// among the ones this scan passed, escaped, so a scan from it goes on
	// in the same state).
	n.noQuote[q] = true
	return 0
}

func quotedLen(s string) int {
	q := s[0]
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

// keyValues matches the values of PostgreSQL's "Key (sku)=(ABC-1) already
// exists" (a unique or foreign key violation): the row's data.
func (n *normalizer) keyValues(i int) (int, string) {
	if n.noParen || !strings.HasSuffix(n.b.String(), ")=") {
		return 0, ""
	}
	j := strings.IndexByte(n.s[i+1:], ')')
	if j < 0 {
		n.noParen = true
		return 0, ""
	}
	return j + 2, "(" + PlaceholderString + ")"
}
