package fingerprint

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// names are words glued to a number that name a thing rather than carry
// data (lower case): "http2" is a protocol, "user2" a user.
var names = map[string]bool{}

func init() {
	for _, w := range strings.Fields(`http1 http2 http3 h2 h2c h3 utf8 utf16 utf32 utf8mb4 ucs2 latin1
		sha1 sha3 sha224 sha256 sha384 sha512 md4 md5 crc16 crc32 crc64 adler32 fnv32 fnv64 fnv128
		base16 base32 base58 base62 base64 b64 int8 int16 int32 int64 uint8 uint16 uint32 uint64
		float32 float64 complex64 complex128 x509 x86 arm64 amd64 ppc64 s390x ipv4 ipv6 s3 ec2 k8s
		i18n l10n e2e oauth1 oauth2 tls10 tls11 tls12 tls13 aes128 aes192 aes256 rsa1024 rsa2048
		rsa4096 p224 p256 p384 p521 es256 es384 es512 rs256 rs384 rs512 hs256 hs384 hs512 ed25519
		x25519 chacha20 poly1305 chacha20poly1305 argon2 argon2id pbkdf2 bcrypt2 mp3 mp4 h264 h265
		iso8601 go1 proto2 proto3 win32 win64 1xx 2xx 3xx 4xx 5xx 2fa 3ds 3des 2pc 3pc`) {
		names[w] = true
	}
}

// isName reports whether w (letters and digits) is one of names, an RFC
// ("RFC3339") or a version: v2, V10, v1beta1, v2alpha3, v1rc2, and the
// CamelCase OrderV2.
func isName(w string) bool { return isKnown(w) || isVersion(w) }

// isKnown reports whether w is one of names or an RFC.
func isKnown(w string) bool {
	if len(w) > 24 {
		return false
	}
	var buf [24]byte
	for i := 0; i < len(w); i++ {
		buf[i] = byte(unicode.ToLower(rune(w[i])))
	}
	lower := buf[:len(w)]
	if names[string(lower)] {
		return true
	}
	return strings.HasPrefix(string(lower), "rfc") && len(w) > 3 && all(w[3:], isDigit)
}

func isVersion(w string) bool {
	v := strings.LastIndexAny(w, "vV")
	if v < 0 || v > 0 && (w[v] != 'V' || !isLower(w[v-1]) || !all(w[:v], isLetter)) {
		return false
	}
	d := digitsLen(w[v+1:])
	if d == 0 || d > 3 {
		return false
	}
	rest := w[v+1+d:]
	for _, pre := range []string{"alpha", "beta", "rc"} {
		if r, ok := strings.CutPrefix(rest, pre); ok && all(r, isDigit) {
			return true
		}
	}
	return rest == ""
}

func digitsLen(s string) int {
	i := 0
	for i < len(s) && isDigit(s[i]) {
		i++
	}
	return i
}

// numeric matches the data that starts with a digit at s[i:].
func (n *normalizer) numeric(i int) (int, string) {
	s := n.s[i:]
	if l := ulidAt(s); l > 0 {
		return l, PlaceholderID
	}
	if l := dashedIPv4At(s); l > 0 {
		return l, PlaceholderIP
	}
	w := 0
	for w < len(s) && isAlnum(s[w]) {
		w++
	}
	if isName(s[:w]) {
		return w, s[:w]
	}
	if l, unit := durationAt(s); l > 0 {
		return l, PlaceholderNumber + unit
	}
	l := numberAt(s)
	if l < w && hasDigit(s[l:w]) || l < w && n.after(prefixed) && isMixedID(s[:w]) {
		return w, PlaceholderID // digits, letters, digits: "8f3k2j"; ord-2716pp
	}
	if l == w && l <= 5 && n.after(codeBefore) {
		return l, s[:l]
	}
	return l, PlaceholderNumber
}

// codeWords name a code whose number tells one bug from another.
var codeWords = map[string]bool{"status": true, "code": true, "statuscode": true, "sqlstate": true, "errno": true, "http": true}

// codeBefore reports whether the number at s[i:] follows a code word
// ("status 404", "code=23505", "(SQLSTATE 23505)").
func codeBefore(s string, i int) bool {
	j := i
	for j > 0 && i-j < 3 && strings.IndexByte(" \t\n:=", s[j-1]) >= 0 {
		j--
	}
	k := j
	for k > 0 && j-k <= 10 && isLetter(s[k-1]) {
		k--
	}
	if j == i || k == j || j-k > 10 || glued(s, k) {
		return false
	}
	var buf [10]byte
	for x := k; x < j; x++ {
		buf[x-k] = s[x] | 0x20
	}
	return codeWords[string(buf[:j-k])]
}

// wordAt matches a word that starts with a letter: letters, digits, '_'
// and other runes. Its '_'-separated parts are read one by one, so that
// "max_retries_3" is "max_retries_<n>"; a part after a lower-case prefix
// ("cus_", or the "ord-" before s when prefixed) may be an id. A prefix
// counts only at the word's start (fresh), not after a placeholder.
func wordAt(s string, prefixed, fresh bool) (int, string) {
	w := 0
	for w < len(s) {
		if c := s[w]; c < utf8.RuneSelf {
			if !isWordByte(c) {
				break
			}
			w++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[w:])
		if unicode.IsSpace(r) {
			break
		}
		w += size
	}
	word := s[:w]
	if !prefixed && !hasDigit(word) && strings.IndexByte(word, '_') < 0 {
		return w, word
	}
	var b strings.Builder
	lower := fresh // the parts so far make a lower-case prefix
	k := 0
	for part := range strings.SplitSeq(word, "_") {
		if k > 0 {
			b.WriteByte('_')
		}
		b.WriteString(part1(part, prefixed && k == 0, k > 0 && lower))
		lower = lower && len(part) >= 2 && len(part) <= 12 && all(part, isLower)
		k++
	}
	return w, b.String()
}

// part1 normalizes one part of a word. afterSep says it follows a prefix
// like "ord-" or "key=", afterUnderscore one like "cus_".
func part1(p string, afterSep, afterUnderscore bool) string {
	letters, digits, switches := 0, 0, 0
	for i := 0; i < len(p); i++ {
		if isDigit(p[i]) {
			digits++
		} else {
			letters++
		}
		if i > 0 && isDigit(p[i]) != isDigit(p[i-1]) {
			switches++
		}
	}
	switch {
	case p == "" || isName(p):
		return p
	case afterUnderscore && isShortID(p, false), afterSep && isShortID(p, true),
		(afterSep || afterUnderscore) && isMixedID(p):
		return PlaceholderID
	case digits == 0:
		return p
	case letters == 0:
		return PlaceholderNumber
	case len(p) >= 8 && all(p, isHex): // letters and digits both
		return PlaceholderHex
	case switches == 1 && isDigit(p[0]):
		return PlaceholderNumber + p[digitsLen(p):] // a unit: "3x"
	case switches == 1:
		return p[:len(p)-digits] + PlaceholderNumber // user7
	}
	// Letters and digits more than once: an id, unless it starts with a
	// name ("sha256sum", "ipv4addr", "OrderV2Payload") or is a CamelCase
	// name going on after its digits ("ErrHTTP2GoAway", not "ab12CD").
	if d := strings.IndexAny(p, "0123456789"); d > 0 {
		e := d + digitsLen(p[d:])
		if isKnown(p[:e]) || identifierLike(p) && isUpper(at(p, e)) && isLower(at(p, e+1)) {
			return p
		}
	}
	return PlaceholderID
}

// prefixed reports whether s[i:] follows an id's prefix: a lower-case word
// of 2 to 12 letters and '-', ':', '#' or '=' ("ord-", "user:", "key=").
func prefixed(s string, i int) bool {
	if i < 3 || strings.IndexByte("-:#=", s[i-1]) < 0 {
		return false
	}
	j := i - 1
	for j > 0 && isLower(s[j-1]) {
		j--
	}
	l := i - 1 - j
	return l >= 2 && l <= 12 && !glued(s, j)
}

// isMixedID reports whether p, after a prefix, is a short id: 6 or more
// letters and digits, both, not a number and its unit ("ord-2716pp",
// "ord-v6b0rp"; not "timeout-1500ms").
func isMixedID(p string) bool {
	d := digitsLen(p)
	if len(p) < 6 || !hasDigit(p) || all(p, isDigit) || !all(p, isAlnum) || isName(p) {
		return false
	}
	return d == 0 || !units[strings.ToLower(p[d:])]
}

// units are what a number is counted in.
var units = map[string]bool{}

func init() {
	for _, u := range strings.Fields("ns us ms s m h d b kb mb gb tb kib mib gib tib bytes x px") {
		units[u] = true
	}
}

// isShortID reports whether p, after a prefix, is an id rather than a
// word or a name: 8 or more letters and digits with an upper-case letter
// or a digit ("cus_NffrFeUfNV2Hib", not "user_id"), not shaped like a Go
// identifier ("test_HandlerFunc", "event=OrderCreated"). After '_' (not
// strict) one with a digit or a hump without a vowel may be shaped so: a
// Stripe id reads as CamelCase humps ("Nffr", "Fe", "Uf", "NV2", "Hib")
// one time in ten.
func isShortID(p string, strict bool) bool {
	if len(p) < 8 || all(p, isDigit) {
		return false
	}
	upperOrDigit := false
	for i := 0; i < len(p); i++ {
		if !isAlnum(p[i]) {
			return false
		}
		upperOrDigit = upperOrDigit || isUpper(p[i]) || isDigit(p[i])
	}
	return upperOrDigit && (!strict && (hasDigit(p) || !allHumpsVoweled(p)) || !identifierLike(p))
}

// allHumpsVoweled reports whether each CamelCase hump of p ("Handler",
// "Func") has a vowel, as words do; "Nffr" has none.
func allHumpsVoweled(p string) bool {
	vowel := true
	for i := 0; i < len(p); i++ {
		if isUpper(p[i]) && !isUpper(at(p, i+1)) || i == 0 {
			if !vowel {
				return false
			}
			vowel = false
		}
		vowel = vowel || strings.IndexByte("aeiouyAEIOUY", p[i]) >= 0
	}
	return vowel
}

// isToken reports whether x (letters, digits, '_', '-') is a random token:
// 16 or more bytes, upper case, lower case and digits, not shaped like a
// Go identifier.
func isToken(x string) bool {
	if len(x) < 16 {
		return false
	}
	var up, low, dig bool
	for i := 0; i < len(x); i++ {
		c := x[i]
		up, low, dig = up || isUpper(c), low || isLower(c), dig || isDigit(c)
	}
	return up && low && dig && !identifierLike(x)
}

// identifierLike reports whether x reads like a CamelCase Go identifier:
// it starts with a letter, has no '-', and randomSignals finds nothing.
func identifierLike(x string) bool {
	return isLetter(x[0]) && strings.IndexByte(x, '-') < 0 && randomSignals(x) == 0
}

// shortWords are the two-letter words a CamelCase name has as a hump
// ("Go" of GoAway, "Is" of IsNotExist).
var shortWords = map[string]bool{}

func init() {
	for _, w := range strings.Fields("go to is at of on in by up or as do no ok id my be we if it an db io os ip ui re un") {
		shortWords[w] = true
	}
}

// randomSignals counts what a CamelCase identifier does not have and a
// random token often does: a lone lower-case letter after a digit or
// upper-case letter (the "d" of "3dK" or "Gn" of "2GnL", not the "o" of
// "GoAway" or the "s" of "IDs"), a digit followed by a lower-case letter
// ("5jd"; not the x of "Int8x16"), a third run of digits, one lower-case
// letter starting a word ("rZitpx").
func randomSignals(x string) int {
	n, runs := 0, 0
	for k := 0; k < len(x); k++ {
		c, prev, next := x[k], at(x, k-1), at(x, k+1)
		switch {
		case isDigit(c):
			if !isDigit(prev) {
				if runs++; runs > 2 {
					n++
				}
			}
			if isLower(next) && !(next == 'x' && isDigit(at(x, k+2))) {
				n++
			}
		case k == 0 && isLower(c) && isUpper(next) && isLower(at(x, k+2)):
			n++ // "rZitpx": a CamelCase name starts with a word, not one letter
		case isLower(c) && isAlnum(prev) && !isLower(prev) && !isLower(next):
			hump := isUpper(prev) && !isUpper(at(x, k-2)) && isUpper(next) && shortWords[string([]byte{prev | 0x20, c})]
			plural := c == 's' && isUpper(prev) && isUpper(at(x, k-2))     // IDs
			dims := c == 'x' && isDigit(prev) && isDigit(next)             // 8x16
			if !hump && !plural && !dims && !(c == 'v' && isDigit(next)) { // IPv6
				n++
			}
		}
	}
	return n
}

// runAt matches, at s[i:], a run of letters, digits, '_' and '-' that is
// one id as a whole: a random token (after a lower-case prefix like
// "pi_", kept). In a Kubernetes pod name it marks the generated part.
func (n *normalizer) runAt(i int) (int, string) {
	s := n.s
	// Only from the start of a run: inside one (after a '-' or a
	// placeholder that took its start) a part could pass where the whole
	// did not.
	if out := n.b.String(); i < n.noRun || glued(out, len(out)) || at(out, len(out)-1) == '-' {
		return 0, ""
	}
	j := i
	for j < len(s) && (isWordByte(s[j]) && s[j] < utf8.RuneSelf || s[j] == '-') {
		j++
	}
	end := j
	for end > i && (s[end-1] == '-' || s[end-1] == '_') {
		end--
	}
	x := s[i:end]
	if wordEnds(s, j) {
		p := lowerPrefix(x)
		if isToken(x[p:]) {
			return len(x), x[:p] + PlaceholderID
		}
		if name, ok := podName(x); ok {
			// The name is read as words are ("a00" is a<n>), the
			// generated part, when the scan gets there, is one id.
			n.pod, n.podEnd = i+len(name)+1, i+len(x)
		}
	}
	n.noRun = j
	return 0, ""
}

// lowerPrefix is the length of x's prefix of lower-case words of 2 to 12
// letters each followed by '_' ("pi_", "cs_test_"), or 0.
func lowerPrefix(x string) int {
	p := 0
	for {
		k := 0
		for p+k < len(x) && isLower(x[p+k]) {
			k++
		}
		if k < 2 || k > 12 || at(x, p+k) != '_' {
			return p
		}
		p += k + 1
	}
}

// k8sAlphabet is what Kubernetes makes a pod name's random suffix and its
// ReplicaSet's hash of (no vowels, so they never spell a word).
const k8sAlphabet = "bcdfghjklmnpqrstvwxz2456789"

func isK8s(c byte) bool     { return strings.IndexByte(k8sAlphabet, c) >= 0 }
func isPodByte(c byte) bool { return isLower(c) || isDigit(c) || c == '-' }

// podName is the name part of a pod name x with a generated suffix: a
// Deployment's "orders-7d9f8b6c5-x2k4p" (a hash of 6 to 10 characters
// with a digit or in the alphabet above, then 5 characters), a DaemonSet's
// or Job's "fluentd-x2k4p" (5 characters of the alphabet).
func podName(x string) (string, bool) {
	d1 := strings.LastIndexByte(x, '-')
	if !isLower(x[0]) || !all(x, isPodByte) || d1 < 0 || len(x)-d1-1 != 5 {
		return "", false
	}
	last := x[d1+1:]
	if d2 := strings.LastIndexByte(x[:d1], '-'); d2 > 0 {
		hash := x[d2+1 : d1]
		if len(hash) >= 6 && len(hash) <= 10 && (hasDigit(hash) || all(hash, isK8s)) {
			return x[:d2], true
		}
	}
	if all(last, isK8s) && !all(last, isDigit) {
		return x[:d1], true
	}
	return "", false
}

// ulidAt matches a ULID: 26 Crockford base32 characters in one case, the
// first 0-7 (the time's top bits), with a letter:
// 01ARZ3NDEKTSV4RRFFQ69G5FAV, 01arz3ndektsv4rrffq69g5fav.
func ulidAt(s string) int {
	const n = 26
	if len(s) < n || s[0] > '7' || !wordEnds(s, n) {
		return 0
	}
	var up, low bool
	for i := 0; i < n; i++ {
		c := s[i]
		switch {
		case isDigit(c):
		case isUpper(c) && strings.IndexByte("ILOU", c) < 0:
			up = true
		case isLower(c) && strings.IndexByte("ilou", c) < 0:
			low = true
		default:
			return 0
		}
	}
	if up == low {
		return 0
	}
	return n
}

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

// hexAt matches 0x followed by hex digits, or a run of 8 or more hex
// digits with a decimal digit (so the words "deadbeef" and "accepted" stay
// words) and a letter (a run of decimal digits is a number).
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
	i, digit, letter := 0, false, false
	for i < len(s) && isHex(s[i]) {
		digit, letter = digit || isDigit(s[i]), letter || !isDigit(s[i])
		i++
	}
	if i >= 8 && digit && letter && wordEnds(s, i) {
		return i
	}
	return 0
}

// numberAt matches a decimal number with an optional sign, fraction and
// exponent. A unit after it ("5ms", "10KiB") is not consumed: the caller
// keeps it.
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
	// A fraction, or the rest of a dotted number (a version): one
	// placeholder either way.
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

// durationAt matches a duration of two or more parts, as Go's
// time.Duration prints one ("1m30.5s", "72h3m0.5s"), and returns its
// length and last unit: the whole is one number in that unit.
func durationAt(s string) (int, string) {
	i, parts, unit := 0, 0, ""
	for i < len(s) && isDigit(s[i]) {
		j := i + digitsLen(s[i:])
		if j+1 < len(s) && s[j] == '.' && isDigit(s[j+1]) {
			j++
			j += digitsLen(s[j:])
		}
		u := durationUnit(s[j:])
		if u == "" {
			break
		}
		i, unit, parts = j+len(u), u, parts+1
	}
	if parts < 2 || !wordEnds(s, i) {
		return 0, ""
	}
	return i, unit
}

func durationUnit(s string) string {
	for _, u := range []string{"ns", "us", "µs", "μs", "ms", "h", "m", "s", "d"} {
		if strings.HasPrefix(s, u) && !isLetter(at(s, len(u))) {
			return u
		}
	}
	return ""
}
