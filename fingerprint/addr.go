package fingerprint

import (
	"encoding/base64"
	"net/netip"
	"strings"
)

// emailAt matches an e-mail address at s[i:]: local@domain.tld.
func (n *normalizer) emailAt(i int) int {
	// Only from the start of a local part: inside one, after a
	// placeholder that took its start, a part could pass.
	if out := n.b.String(); i < n.noEmail || glued(out, len(out)) || isLocal(at(out, len(out)-1)) {
		return 0
	}
	s := n.s
	j := i
	for j < len(s) && isLocal(s[j]) {
		j++
	}
	if j < len(s) && s[j] == '@' {
		if d := domainLen(s[j+1:]); d > 0 {
			return j + 1 + d - i
		}
	}
	// Any later start in s[i:j] reaches the same '@' or none.
	n.noEmail = j
	return 0
}

func isLocal(c byte) bool {
	return isAlnum(c) || c == '.' || c == '_' || c == '%' || c == '+' || c == '-'
}

// domainLen is the length of the domain name at the start of s: two or
// more labels, the last of letters (a full stop after it is the
// sentence's), or 0.
func domainLen(s string) int {
	i := 0
	for i < len(s) && (isAlnum(s[i]) || s[i] == '-' || s[i] == '.') {
		i++
	}
	d := strings.TrimRight(s[:i], ".-")
	labels := 0
	for l := range strings.SplitSeq(d, ".") {
		if l == "" || l[0] == '-' {
			return 0
		}
		labels++
	}
	// The run must end the word: in "c.io.42ms" no prefix is a domain
	// (the next time it reads "c.io.<n>ms").
	tld := d[strings.LastIndexByte(d, '.')+1:]
	if labels < 2 || len(tld) < 2 || !all(tld, isLetter) || !wordEnds(s, i) {
		return 0
	}
	return len(d)
}

// maxIPLen bounds an address candidate: the longest IPv6 address with a
// zone is well under it.
const maxIPLen = 64

// ipAt matches an IPv4 or IPv6 address at s[i:] (not its port: in
// "10.0.0.5:5432" it is 10.0.0.5), as net/netip parses one.
func (n *normalizer) ipAt(i int) int {
	if i < n.noIP {
		return 0
	}
	s := n.s
	j, colons := i, 0
	for j < len(s) && j-i < maxIPLen && (isHex(s[j]) || s[j] == ':' || s[j] == '.') {
		if s[j] == ':' {
			colons++
		}
		j++
	}
	// The run must end the word: in "::114:52:44id" no prefix of it is
	// an address (the next time it reads "::114:<n>:<n>id").
	cand := strings.TrimRight(s[i:j], ".:")
	if hasDigit(cand) && strings.ContainsAny(cand, ".:") && (wordEnds(s, j) || at(s, j) == '%') {
		if colons >= 2 && at(s, i+len(cand)) == '%' { // fe80::1%eth0
			k := i + len(cand) + 1
			for k < len(s) && (isAlnum(s[k]) || s[k] == '_' || s[k] == '.' || s[k] == '-') {
				k++
			}
			if a, err := netip.ParseAddr(s[i:k]); err == nil && a.Is6() && wordEnds(s, k) {
				return k - i
			}
		}
		if l := ipLen(cand); l > 0 && wordEnds(s, i+l) {
			return l
		}
	}
	n.noIP = j
	return 0
}

// ipLen is the length of the address cand is or starts with ("10.0.0.5"
// of "10.0.0.5:5432"), or 0.
func ipLen(cand string) int {
	if a, err := netip.ParseAddr(cand); err == nil && (a.Is4() || strings.Count(cand, ":") >= 2) {
		return len(cand)
	}
	if k := strings.LastIndexByte(cand, ':'); k > 0 && all(cand[k+1:], isDigit) {
		if a, err := netip.ParseAddr(cand[:k]); err == nil && a.Is4() {
			return k
		}
	}
	return 0
}

// dashedIPv4At matches the dashed IPv4 address in an EC2 host name: the
// 10-0-1-23 of ip-10-0-1-23.ec2.internal.
func dashedIPv4At(s string) int {
	i, dashes := 0, 0
	for i < len(s) && i < 16 && (isDigit(s[i]) || s[i] == '-' && isDigit(at(s, i+1))) {
		if s[i] == '-' {
			dashes++
		}
		i++
	}
	if dashes != 3 || !wordEnds(s, i) || at(s, i) == '-' {
		return 0
	}
	if a, err := netip.ParseAddr(strings.ReplaceAll(s[:i], "-", ".")); err != nil || !a.Is4() {
		return 0
	}
	return i
}

func isBase64URL(c byte) bool { return isAlnum(c) || c == '-' || c == '_' }

// jwtAt matches a JWT: three base64url parts joined by '.', the header a
// JSON object (so "eyJ", the encoding of `{"`), the signature possibly
// empty.
func jwtAt(s string) int {
	if !strings.HasPrefix(s, "eyJ") {
		return 0
	}
	i := 0
	for part := 0; part < 3; part++ {
		j := i
		for j < len(s) && isBase64URL(s[j]) {
			j++
		}
		if j == i && part < 2 {
			return 0
		}
		i = j
		if part < 2 {
			if at(s, i) != '.' {
				return 0
			}
			i++
		}
	}
	if !wordEnds(s, i) {
		return 0
	}
	return i
}

// base64At matches a base64 blob at s[i:]: 20 or more characters of the
// standard alphabet with '+', '/' or padding (without them it is a word,
// or a token for runAt), upper and lower case and digits, that decodes.
// One with a '/' and a segment that reads as a word ("var/lib/App2") is a
// path.
func (n *normalizer) base64At(i int) int {
	s := n.s
	// Only from the start of a run of the alphabet: from inside one (after
	// a '/') the same bytes could decode where the whole did not, and the
	// start would move when what comes before is normalized.
	if out := n.b.String(); i < n.noBase64 || glued(out, len(out)) || isBase64(at(out, len(out)-1)) {
		return 0
	}
	j := i
	for j < len(s) && isBase64(s[j]) {
		j++
	}
	end := j
	for end < len(s) && end-j < 2 && s[end] == '=' {
		end++
	}
	b := s[i:end]
	// Not followed by a word: "=0" after the run is a key and its value.
	if len(b) >= 20 && strings.ContainsAny(b, "+/=") && wordEnds(s, end) && mixed(b) && !pathLike(s[i:j]) {
		enc := base64.StdEncoding
		if end == j && len(b)%4 != 0 {
			enc = base64.RawStdEncoding
		}
		if _, err := enc.DecodeString(b); err == nil {
			return end - i
		}
	}
	n.noBase64 = j
	return 0
}

func isBase64(c byte) bool { return isAlnum(c) || c == '+' || c == '/' }

// mixed reports whether s has upper case, lower case and digits.
func mixed(s string) bool {
	var up, low, dig bool
	for i := 0; i < len(s); i++ {
		up, low, dig = up || isUpper(s[i]), low || isLower(s[i]), dig || isDigit(s[i])
	}
	return up && low && dig
}

// pathLike reports whether a '/'-separated segment of s reads as a word:
// 3 or more lower-case letters, or a capital and 2 or more.
func pathLike(s string) bool {
	for seg := range strings.SplitSeq(s, "/") {
		w := seg
		if w != "" && isUpper(w[0]) {
			w = w[1:]
		}
		if len(w) >= 2 && len(seg) >= 3 && all(w, isLower) {
			return true
		}
	}
	return false
}
