package fingerprint

import "strings"

// timeAt matches a timestamp at the start of s: an ISO date and time
// (RFC 3339, "2026-12-07 14:52:44", Go's Time.String, 2026/12/07), a day
// and month name (RFC 1123, RFC 850, RFC 822, common log), a month name
// and day (ANSIC, Unix and Ruby dates, syslog, "December 7, 2026"), a
// numeric 07/12/2026, or a time of day with seconds.
func timeAt(s string) int {
	var n int
	if isDigit(s[0]) {
		n = max(isoAt(s), dayMonthAt(s, 0), clockAt(s, 0, true))
	} else {
		n = textDateAt(s)
	}
	if n == 0 || !wordEnds(s, n) {
		return 0
	}
	return n
}

// num is the end of a run of lo to hi digits at s[i:], or 0.
func num(s string, i, lo, hi int) int {
	n := digitsLen(s[min(i, len(s)):])
	if n < lo || n > hi {
		return 0
	}
	return i + n
}

// isoAt matches 2006-01-02 or 2006/01/02, then optionally a time after
// 'T', ' ' or '_'.
func isoAt(s string) int {
	if num(s, 0, 4, 4) == 0 || len(s) < 10 || s[4] != '-' && s[4] != '/' || num(s, 5, 2, 2) == 0 || s[7] != s[4] || num(s, 8, 2, 2) == 0 {
		return 0
	}
	if c := at(s, 10); c == 'T' || c == ' ' || c == '_' {
		if e := clockAt(s, 11, false); e > 0 {
			return zoneAt(s, e)
		}
	}
	return 10
}

// dayMonthAt matches "02 Jan 2006", "02-Jan-06" or the common log's
// "02/Jan/2006:15:04:05" at s[i:], then optionally a time, or a numeric
// 07/12/2026 (either order of day and month).
func dayMonthAt(s string, i int) int {
	d := num(s, i, 1, 2)
	if d == 0 || d >= len(s) {
		return 0
	}
	sep := s[d]
	if sep == '/' && num(s, d+1, 1, 2) > 0 { // 07/12/2026
		m := num(s, d+1, 1, 2)
		y := num(s, m+1, 4, 4)
		if at(s, m) != '/' || y == 0 {
			return 0
		}
		return clockAfter(s, y, ' ')
	}
	if sep != ' ' && sep != '-' && sep != '/' {
		return 0
	}
	m := d + 1 + nameAt(s[d+1:], months)
	if m == d+1 || at(s, m) != sep {
		return 0
	}
	y := num(s, m+1, 2, 4)
	if y == 0 {
		return 0
	}
	if sep == '/' {
		return clockAfter(s, y, ':')
	}
	return clockAfter(s, y, ' ')
}

// clockAfter is the end of a time of day after s[:i] and sep, with its
// zone, or i.
func clockAfter(s string, i int, sep byte) int {
	if at(s, i) == sep {
		if e := clockAt(s, i+1, false); e > 0 {
			return zoneAt(s, e)
		}
	}
	return i
}

// textDateAt matches a date that starts with a weekday or a month name.
func textDateAt(s string) int {
	i := nameAt(s, weekdays)
	if i > 0 {
		if at(s, i) == ',' {
			i++
		}
		if at(s, i) != ' ' {
			return 0
		}
		i++
		if isDigit(at(s, i)) {
			return dayMonthAt(s, i)
		}
	}
	m := nameAt(s[i:], months)
	if m == 0 {
		return 0
	}
	i = spaces(s, i+m)
	d := num(s, i, 1, 2)
	if d == 0 {
		return 0
	}
	i = d
	if at(s, i) == ',' { // December 7, 2026
		i++
	}
	if y := num(s, spaces(s, i), 4, 4); y > 0 {
		return clockAfter(s, y, ' ')
	}
	e := clockAt(s, spaces(s, i), false)
	if e == 0 {
		return 0
	}
	e = zoneAt(s, e)
	if y := num(s, e+1, 4, 4); at(s, e) == ' ' && y > 0 { // ANSIC, Unix and Ruby dates
		return y
	}
	return e
}

func spaces(s string, i int) int {
	for at(s, i) == ' ' {
		i++
	}
	return i
}

var (
	weekdays = strings.Fields("Monday Tuesday Wednesday Thursday Friday Saturday Sunday Mon Tue Wed Thu Fri Sat Sun")
	months   = strings.Fields("January February March April June July August September October November December Jan Feb Mar Apr May Jun Jul Aug Sep Sept Oct Nov Dec")
)

// nameAt is the length of the name of names s starts with as a word, or 0.
func nameAt(s string, names []string) int {
	if s == "" || strings.IndexByte("ADFJMNOSTW", s[0]) < 0 { // the names' first letters
		return 0
	}
	for _, n := range names {
		if strings.HasPrefix(s, n) && !isLetter(at(s, len(n))) {
			return len(n)
		}
	}
	return 0
}

// clockAt matches 15:04, 15:04:05 or 15:04:05.999 (or ,999) at s[i:];
// secs requires the seconds.
func clockAt(s string, i int, secs bool) int {
	h := num(s, i, 1, 2)
	if h == 0 || at(s, h) != ':' {
		return 0
	}
	e := num(s, h+1, 2, 2)
	if e == 0 {
		return 0
	}
	if at(s, e) == ':' && num(s, e+1, 2, 2) > 0 {
		e = num(s, e+1, 2, 2)
		if c := at(s, e); (c == '.' || c == ',') && isDigit(at(s, e+1)) {
			e = num(s, e+1, 1, 9)
		}
	} else if secs {
		return 0
	}
	if e == 0 || isDigit(at(s, e)) {
		return 0
	}
	return e
}

// zoneAt is the end of a zone after a time at s[:i] (Z, +01:00, -0700,
// " -0700 MST", " UTC", Go's monotonic " m=+0.5"), or i.
func zoneAt(s string, i int) int {
	switch c := at(s, i); {
	case c == 'Z':
		return i + 1
	case c == '+' || c == '-':
		if e := offsetAt(s, i); e > 0 {
			return e
		}
	case c == ' ':
		if e := offsetAt(s, i+1); e > 0 {
			i = e
			if a := abbrAt(s, i+1); at(s, i) == ' ' && a > 0 {
				i = a
			}
		} else if a := abbrAt(s, i+1); a > 0 {
			i = a
		}
		if strings.HasPrefix(s[i:], " m=") && (at(s, i+3) == '+' || at(s, i+3) == '-') {
			if e := numberAt(s[i+3:]); e > 1 {
				i += 3 + e
			}
		}
	}
	return i
}

// offsetAt matches -0700 or +01:00 at s[i:].
func offsetAt(s string, i int) int {
	if c := at(s, i); c != '+' && c != '-' {
		return 0
	}
	if e := num(s, i+1, 4, 4); e > 0 {
		return e
	}
	if e := num(s, i+1, 2, 2); e > 0 && at(s, e) == ':' && num(s, e+1, 2, 2) > 0 {
		return e + 3
	}
	return 0
}

// abbrAt matches a zone's abbreviation at s[i:]: UTC, or 2 to 5 capitals
// ending in T (GMT, MST, CEST), so that a word like ERROR is not one.
func abbrAt(s string, i int) int {
	if i >= len(s) {
		return 0
	}
	e := i
	for e < len(s) && isUpper(s[e]) {
		e++
	}
	if z := s[i:e]; z != "UTC" && (len(z) < 2 || len(z) > 5 || z[len(z)-1] != 'T') || isWordByte(at(s, e)) {
		return 0
	}
	return e
}
