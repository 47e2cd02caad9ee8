package fingerprint_test

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/antidote-mq/antidote/fingerprint"
)

func TestNormalizeMessage(t *testing.T) {
	for in, want := range map[string]string{
		// quoted text, numbers, hex, UUIDs, RFC 3339
		`strconv.Atoi: parsing "abc": invalid syntax`:                  `strconv.Atoi: parsing <s>: invalid syntax`,
		"order 7f3c9a2e-1b4d-4c8e-9f00-123456789abc not found":         "order <uuid> not found",
		"took 250ms, limit 1.5s":                                       "took <n>ms, limit <n>s",
		"at 2026-11-26T10:00:00.5+01:00 and 2026-11-26":                "at <time> and <time>",
		"sum 9f86d081884c7d65, ptr 0xc000123abc":                       "sum <hex>, ptr <hex>",
		"accepted deadbeef facade":                                     "accepted deadbeef facade",
		"can't  read\n\tline 3":                                        "can't read line <n>",
		"balance -20.50 below 1e-3":                                    "balance <n> below <n>",
		"10-20 items":                                                  "<n>-<n> items",
		`unknown field 'x' in "a \"quoted\" b" and unterminated "tail`: `unknown field <s> in <s> and unterminated "tail`,
		"": "",

		// ULIDs, either case
		"order 01ARZ3NDEKTSV4RRFFQ69G5FAV not found": "order <id> not found",
		"order 01arz3ndektsv4rrffq69g5fav not found": "order <id> not found",
		// random tokens: ShortUUID, nanoid, KSUID
		"session vytxeTZskVKR7C7WgdSP3d expired":     "session <id> expired",
		"session V1StGXR8_Z5jdHi6B-myT expired":      "session <id> expired",
		"event 0ujtsYcgvSTl8PAuAdqWYSMnLOv replayed": "event <id> replayed",
		// prefixed ids keep their prefix
		"customer cus_NffrFeUfNV2Hib has no source":                   "customer cus_<id> has no source",
		"payment pi_3MtwBwLkdIwHu7ix28a3tqPa declined":                "payment pi_<id> declined",
		"session cs_test_a1B2c3D4e5F6g7H8i9J0 expired":                "session cs_test_<id> expired",
		"order ord-8f3k2j, user:12345, order#991":                     "order ord-<id>, user:<n>, order#<n>",
		"lookup key=AbCdEfGhXy failed":                                "lookup key=<id> failed",
		"id42 user7 42abc max_retries_3 address_line2":                "id<n> user<n> <n>abc max_retries_<n> address_line<n>",
		"e-mail alice.smith+test@example.com not found.":              "e-mail <email> not found.",
		"mail to <bob@mail.example.co.uk>":                            "mail to <<email>>",
		"Key (email)=(a@b.com) already exists.":                       "Key (email)=(<s>) already exists.",
		"Key (sku, region)=(ABC-123, eu-1) already exists.":           "Key (sku, region)=(<s>) already exists.",
		"upstream orders-7d9f8b6c5-x2k4p refused":                     "upstream orders-<id> refused",
		"upstream web-5f7c9d-abcde refused":                           "upstream web-<id> refused",
		"pod fluentd-x2k4p and worker-0 gone":                         "pod fluentd-<id> and worker-<n> gone",
		"host ip-10-0-1-23.ec2.internal:8080 down":                    "host ip-<ip>.ec2.internal:<n> down",
		"dial tcp 10.0.0.5:5432: connect: connection refused":         "dial tcp <ip>:<n>: connect: connection refused",
		"dial tcp [2001:db8::1]:443: i/o timeout":                     "dial tcp <ip>:<n>: i/o timeout",
		"dial tcp [::1]:5432 and fe80::1%eth0":                        "dial tcp <ip>:<n> and <ip>",
		"GET https://api.example.com/v2/orders/991/items?page=2: 503": "GET https://api.example.com/v2/orders/<n>/items?page=<n>: <n>",
		"GET /users/AbC123xyz/cart":                                   "GET /users/<id>/cart",
		"took 1m30.5s, then 72h3m0.5s and 1.5µs":                      "took <n>s, then <n>s and <n>µs",
		"body of 1048576 bytes exceeds 10MiB (1.5 GB)":                "body of <n> bytes exceeds <n>MiB (<n> GB)",
		"offset orders/3/1042 and orders-3@1042":                      "offset orders/<n>/<n> and orders-<n>@<n>",
		"bad token eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c": "bad token <jwt>",
		"blob SGVsbG8sIHdvcmxkIQ+/aGkgdGhlcmU= rejected":   "blob <base64> rejected",
		"open /var/lib/App2/data/File.json: no such file":  "open /var/lib/App<n>/data/File.json: no such file",
		"at Mon, 07 Dec 2026 14:52:44 GMT":                 "at <time>",
		"at Tue, 08 Dec 2026 09:01:02 +0100 then":          "at <time> then",
		"at Monday, 07-Dec-26 14:52:44 UTC":                "at <time>",
		"at Mon Dec  7 14:52:44 UTC 2026":                  "at <time>",
		"at 2026-12-07 14:52:44 ERROR":                     "at <time> ERROR",
		"at 2026-12-07 14:52:44.1 +0000 UTC m=+0.001 then": "at <time> then",
		"at 2026/12/07 14:52:44, Dec  7 14:52:44 host":     "at <time>, <time> host",
		"at [07/Dec/2026:14:52:44 +0000], 12/07/2026":      "at [<time>], <time>",
		"at December 7, 2026 and 14:52:44.123":             "at <time> and <time>",
		"since 1733580764 (1733580764123 ms)":              "since <n> (<n> ms)",
		// codes tell bugs apart
		"unexpected status 404, exit status 2, errno 111": "unexpected status 404, exit status 2, errno 111",
		`duplicate key "orders_pkey" (SQLSTATE 23505)`:    `duplicate key <s> (SQLSTATE 23505)`,
	} {
		if got := fingerprint.NormalizeMessage(in); got != want {
			t.Errorf("NormalizeMessage(%q)\n got %q\nwant %q", in, got, want)
		}
	}
}

// Names are not data: words glued to a number that name a protocol, an
// encoding, a type or a version, CamelCase identifiers, field names.
func TestNormalizeKeepsNames(t *testing.T) {
	for _, s := range []string{
		"http2 utf8 sha256 base64 int64 x509 md5 HTTP2 UTF8 Int64", "v2 v10 V3 v1beta1 v2alpha1 OrderV2 apiV3 ParseV2Payload",
		"RFC3339 iso8601 5xx 4xx 2fa sha256sum ipv4addr utf8mb4 base64url go1",
		"*json.UnmarshalTypeError ErrConnectionRefused ErrHTTP2GoAwayReceived Int64Slice ChaCha20Poly1305 Float32x4",
		"json: cannot unmarshal string into Go struct field OrderPayload.items.qty of type int64",
		"missing field user_id", "missing field msg", "field created_at", "x-request-id", "Content-Type",
		"test_HandlerFunc event=OrderCreated mode=ReadWrite", "IsNotExist GoAway ToUpper URLs IPv6",
		"context deadline exceeded (Client.Timeout exceeded while awaiting headers)",
		"http2: server sent GOAWAY and closed the connection; LastStreamID=1999",
	} {
		want := strings.ReplaceAll(s, "1999", fingerprint.PlaceholderNumber)
		if got := fingerprint.NormalizeMessage(s); got != want {
			t.Errorf("NormalizeMessage(%q)\n got %q\nwant it unchanged", s, got)
		}
	}
}

// Messages that differ in a word, a field name, a name, a unit or a code
// are different bugs and must stay different once normalized.
func TestNormalizeTellsBugsApart(t *testing.T) {
	for _, pair := range [][2]string{
		{`strconv.Atoi: parsing "x": invalid syntax`, `strconv.Atoi: parsing "x": value out of range`},
		{"user 42 not found", "order 42 not found"},
		{"dial tcp 10.0.0.5:5432: connect: connection refused", "read tcp 10.0.0.5:5432: connection reset by peer"},
		{"missing field user_id", "missing field msg"},
		{"missing field user_id", "missing field order_id"},
		{"unexpected status 404", "unexpected status 503"},
		{"exit status 1", "exit status 2"},
		{"http2: stream closed", "http3: stream closed"},
		{"unsupported API v1", "unsupported API v2"},
		{"took 5ms", "took 5s"},
		{"user cus_NffrFeUfNV2Hib not found", "user sub_NffrFeUfNV2Hib not found"},
		{"upstream orders-7d9f8b6c5-x2k4p refused", "upstream payments-7d9f8b6c5-x2k4p refused"},
		{"cannot decode sha256 digest", "cannot decode md5 digest"},
		{"user alice@example.com not found", "user alice not found"},
		{"key (sku)=(A-1) exists", "Key (sku)=(A-1) is not present in table"},
	} {
		a, b := fingerprint.NormalizeMessage(pair[0]), fingerprint.NormalizeMessage(pair[1])
		if a == b {
			t.Errorf("%q and %q both normalize to %q", pair[0], pair[1], a)
		}
	}
}

const (
	base62    = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	shortUUID = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
	nanoID    = base62 + "_-"
	crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
	k8s       = "bcdfghjklmnpqrstvwxz2456789"
)

func random(r *rand.Rand, alphabet string, n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = alphabet[r.IntN(len(alphabet))]
	}
	return string(b)
}

// How many random tokens stay as they are, as NormalizeMessage's doc says:
// the ones without a digit (they read as words), and under 1% of the
// others (they read as CamelCase names). Ids after a "cus_"-like prefix
// are taken out whatever they look like, but for under 0.5% of the
// shortest ones (14 characters).
func TestRandomTokens(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 11))
	for _, c := range []struct {
		name, alphabet, prefix string
		n                      int
		missed                 float64 // at most this share of the counted tokens stays
	}{
		{"ShortUUID", shortUUID, "", 22, 0.01},
		{"nanoid", nanoID, "", 21, 0.01},
		{"KSUID", base62, "", 27, 0.005},
		{"base62", base62, "", 16, 0.03},
		{"Stripe customer", base62, "cus_", 14, 0.005},
		{"Stripe payment", base62, "pi_", 24, 0.001},
	} {
		const runs = 5000
		// Counted: the tokens with a digit, or all after a prefix.
		var kept, keptCounted, counted int
		var example string
		for range runs {
			tok := random(r, c.alphabet, c.n)
			if strings.Trim(tok, "-_") != tok { // a word does not end in them
				tok = "a" + tok[1:len(tok)-1] + "a"
			}
			count := c.prefix != "" || strings.ContainsAny(tok, "0123456789")
			if count {
				counted++
			}
			got := fingerprint.NormalizeMessage("session " + c.prefix + tok + " expired")
			if got != "session "+c.prefix+"<id> expired" {
				kept++
				if count {
					keptCounted++
					example = tok
				}
			}
		}
		share := float64(keptCounted) / float64(counted)
		t.Logf("%s: %d of %d stay, %d of the %d counted (%.2f%%)", c.name, kept, runs, keptCounted, counted, 100*share)
		if share > c.missed {
			t.Errorf("%s: %.2f%% of the counted tokens stay (e.g. %q), want at most %.2f%%", c.name, 100*share, example, 100*c.missed)
		}
	}
}

// A message longer than the bound normalizes within it, and again to
// itself, even when every byte became a placeholder; a bad byte at its
// start does not empty it.
func TestNormalizeLongMessages(t *testing.T) {
	for _, s := range []string{
		strings.Repeat("1 ", 5000), strings.Repeat("1,", 5000), strings.Repeat("sha256,1,", 1000),
		"\xff" + strings.Repeat("word ", 2000), strings.Repeat("é", 3000),
	} {
		n := fingerprint.NormalizeMessage(s)
		if len(n) > 4096 || len(n) < 1000 {
			t.Errorf("%q...: normalized to %d bytes", s[:10], len(n))
		}
		if again := fingerprint.NormalizeMessage(n); again != n {
			t.Errorf("%q...: not idempotent:\n%q\n%q", s[:10], n[len(n)-40:], again[len(again)-40:])
		}
	}
}

// Normalizing is idempotent on messages made of pieces of every shape
// glued in any order (the fuzz test finds such pieces slowly): each
// decision reads what was written before it, never the text a match
// consumed, and no match ends where the next time a placeholder would
// begin.
func TestNormalizeIsIdempotent(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 9))
	frags := []string{"a", "Z", "0", "9", "x", "v", "V", "-", "_", ":", ".", "@", "/", "+", "=", "(", ")", ")=(", " ", "'", "\"", "\\", "eyJ", "Mon", "Dec", "07", "2026", "µ", "m", "s", "ms", "%", "#", "<", ">", "[", "]", "\xff", "\u00a0",
		"status", "code", "cus_", "ord-", "http2", "sha256", "0x1f", "ab12", "Go", "Away", "x2k4p", "7d9f8b6c5", "orders", "10.0.0.5", "::1", "2001:db8", "14:52:44", "1m30s", "GMT", "+0000", "UTC", "<n>", "<id>", "user", "id", "42", "abc", "T", "Z", "e", "E", "é", "用户", "\u2003", "ip-", "10-0-1-23", "01ARZ3NDEKTSV4RRFFQ69G5FAV", "vytxeTZskVKR7C7WgdSP3d", "7f3c9a2e-1b4d-4c8e-9f00-123456789abc", "Key (a)=(", "SGVsbG8sIHdvcmxkIQ+/", "2026-12-07", "T14:52:44", ".5", "-0700", " m=+0.5", "1.5", "e9", "b@c.io", "MiB", "5xx", "v1beta1"}
	fails := 0
	for range 200000 {
		var b strings.Builder
		for n := r.IntN(12); n >= 0; n-- {
			b.WriteString(frags[r.IntN(len(frags))])
		}
		s := b.String()
		out := fingerprint.NormalizeMessage(s)
		if again := fingerprint.NormalizeMessage(out); again != out {
			t.Errorf("not idempotent: %q -> %q -> %q", s, out, again)
			if fails++; fails == 10 {
				return
			}
		}
	}
}

// producerInstance is a random instance name of the shapes
// idempotency.ProducerConfig's default and Kubernetes give.
func producerInstance(r *rand.Rand) string {
	switch r.IntN(4) {
	case 0:
		return fmt.Sprintf("host-%c-%d", 'a'+r.IntN(26), r.IntN(100000))
	case 1:
		return "orders-" + random(r, k8s, 9) + "-" + random(r, k8s, 5)
	case 2:
		return fmt.Sprintf("worker-%d", r.IntN(20))
	}
	return fmt.Sprintf("ip-10-%d-%d-%d.ec2.internal-%d", r.IntN(256), r.IntN(256), r.IntN(256), r.IntN(1<<22))
}

// Six bugs, 80 letters each, with random ids of every shape in their
// messages and random producer instances, make exactly six groups. Bugs 1
// and 2 differ only in the service, 3 and 4 only in a word, 5 and 6 only
// in a field name.
func TestGeneratedLettersGroupByBug(t *testing.T) {
	r := rand.New(rand.NewPCG(2026, 12))
	uuid := func() string {
		h := random(r, "0123456789abcdef", 32)
		return h[:8] + "-" + h[8:12] + "-4" + h[13:16] + "-8" + h[17:20] + "-" + h[20:]
	}
	ulid := func() string { return "01" + random(r, crockford, 24) }
	email := func() string {
		return random(r, "abcdefghijklmnopqrstuvwxyz", 3+r.IntN(8)) + []string{"", ".", "+", "_"}[r.IntN(4)] + random(r, "abcdefghijklmnopqrstuvwxyz0123456789", 2+r.IntN(6)) + "@" + []string{"example.com", "mail.example.co.uk", "corp.io"}[r.IntN(3)]
	}
	pod := func() string { return "payments-" + random(r, k8s, 10) + "-" + random(r, k8s, 5) }
	ip := func() string {
		if r.IntN(2) == 0 {
			return fmt.Sprintf("10.%d.%d.%d:%d", r.IntN(256), r.IntN(256), r.IntN(256), 1024+r.IntN(60000))
		}
		return fmt.Sprintf("[2001:db8:%x::%x]:%d", r.IntN(65536), r.IntN(65536), 1024+r.IntN(60000))
	}
	// One bug prints its times in one format (a Unix time is <n>, a date
	// <time>), and its durations of a second or more end in "s" as Go
	// prints them ("45.2s", "3m7.25s"; "250ms" would be <n>ms).
	when := func(format int) string {
		tm := fmt.Sprintf("%02d:%02d:%02d", r.IntN(24), r.IntN(60), r.IntN(60))
		return []string{
			fmt.Sprintf("%s, %02d Dec 2026 %s GMT", []string{"Mon", "Tue", "Wed", "Thu"}[r.IntN(4)], 1+r.IntN(28), tm),
			fmt.Sprintf("2026-%02d-%02d %s", 1+r.IntN(12), 1+r.IntN(28), tm),
			fmt.Sprintf("%d", 1700000000+r.IntN(100000000)),
		}[format]
	}
	duration := func() string {
		if r.IntN(2) == 0 {
			return fmt.Sprintf("%d.%ds", 1+r.IntN(59), r.IntN(10))
		}
		return fmt.Sprintf("%dm%d.%ds", 1+r.IntN(59), r.IntN(60), r.IntN(1000))
	}
	// A short id as "ord-8f3k2j": six letters and digits, both.
	shortID := func() string {
		id := []byte(random(r, "abcdefghijklmnopqrstuvwxyz0123456789", 4))
		id = append(id, "0123456789"[r.IntN(10)], "abcdefghijklmnopqrstuvwxyz"[r.IntN(26)])
		r.Shuffle(len(id), func(i, j int) { id[i], id[j] = id[j], id[i] })
		return string(id)
	}
	bugs := []struct {
		service, handler, errorType string
		message                     func() string
	}{
		{"billing", "charge", "*errors.errorString", func() string {
			return fmt.Sprintf("charge %s for customer cus_%s failed: user %s not found (request %s)", ulid(), random(r, base62, 24), email(), uuid())
		}},
		{"shipping", "charge", "*errors.errorString", func() string {
			return fmt.Sprintf("charge %s for customer cus_%s failed: user %s not found (request %s)", ulid(), random(r, base62, 24), email(), uuid())
		}},
		{"billing", "reserve", "*net.OpError", func() string {
			return fmt.Sprintf("reserve order#%d via %s (%s): connection refused after %s at %s", r.IntN(1e6), pod(), ip(), duration(), when(0))
		}},
		{"billing", "reserve", "*net.OpError", func() string {
			return fmt.Sprintf("reserve order#%d via %s (%s): connection reset after %s at %s", r.IntN(1e6), pod(), ip(), duration(), when(1))
		}},
		{"billing", "import", "*validation.Error", func() string {
			return fmt.Sprintf("row %d of batch ord-%s: missing field user_id for user:%d (offset orders/%d/%d, id%d, since %s)", r.IntN(5000), shortID(), r.IntN(1e7), r.IntN(12), r.IntN(1e9), r.IntN(1e4), when(2))
		}},
		{"billing", "import", "*validation.Error", func() string {
			return fmt.Sprintf("row %d of batch ord-%s: missing field order_id for user:%d (offset orders/%d/%d, id%d, since %s)", r.IntN(5000), shortID(), r.IntN(1e7), r.IntN(12), r.IntN(1e9), r.IntN(1e4), when(2))
		}},
	}
	groups := map[string]int{} // fingerprint ID -> bug
	for b, bug := range bugs {
		ids := map[string]string{}
		for range 80 {
			msg := bug.message()
			f := fingerprint.Of(fingerprint.Input{
				Handler: bug.handler, Reason: "permanent", ErrorType: bug.errorType, Error: msg,
				Payload: fmt.Appendf(nil, `{"id":%d,"note":%q}`, r.IntN(1e6), email()), Producer: bug.service + "/" + producerInstance(r),
			})
			ids[f.ID] = msg + " -> " + f.Message
			if other, ok := groups[f.ID]; ok && other != b {
				t.Errorf("bugs %d and %d share group %s: %s", other, b, f.ID, f.Message)
			}
			groups[f.ID] = b
		}
		if len(ids) != 1 {
			t.Errorf("bug %d made %d groups:", b, len(ids))
			for _, m := range ids {
				t.Log("  ", m)
			}
		}
	}
	if len(groups) != len(bugs) {
		t.Errorf("%d bugs × 80 letters made %d groups, want %d", len(bugs), len(groups), len(bugs))
	}
}
