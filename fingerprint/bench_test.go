package fingerprint_test

import (
	"strings"
	"testing"

	"github.com/antidote-mq/antidote/fingerprint"
)

// Errors as dead letters carry them: NormalizeMessage runs on every letter
// the hospital ingests.
var benchMessages = []string{
	`strconv.Atoi: parsing "abc": invalid syntax`,
	"dial tcp 10.0.0.5:5432: connect: connection refused",
	"order 01ARZ3NDEKTSV4RRFFQ69G5FAV for customer cus_NffrFeUfNV2Hib not found",
	"user alice.smith+test@example.com not found (request 7f3c9a2e-1b4d-4c8e-9f00-123456789abc)",
	"upstream orders-7d9f8b6c5-x2k4p (ip-10-0-1-23.ec2.internal:8080) timed out after 1m30.5s",
	"Get \"https://api.example.com/v2/orders/991/items\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)",
	"kafka: offset orders/3/1042 out of range at Mon, 07 Dec 2026 14:52:44 GMT; session vytxeTZskVKR7C7WgdSP3d",
	"json: cannot unmarshal string into Go struct field OrderPayload.items.qty of type int64",
	`ERROR: duplicate key value violates unique constraint "orders_pkey" (SQLSTATE 23505)`,
	"runtime error: invalid memory address or nil pointer dereference",
}

func BenchmarkNormalizeMessage(b *testing.B) {
	n := 0
	for _, m := range benchMessages {
		n += len(m)
	}
	b.SetBytes(int64(n))
	b.ReportAllocs()
	for b.Loop() {
		for _, m := range benchMessages {
			fingerprint.NormalizeMessage(m)
		}
	}
}

// Hostile messages of the maximum size (4 KiB) cost time linear in their
// length: no shape is rescanned from every position it could start at.
func BenchmarkNormalizeMessageHostile(b *testing.B) {
	for name, unit := range map[string]string{
		"dashes":  "a-",
		"colons":  "1:",
		"dots":    "a.",
		"quotes":  `"\`,
		"apostr":  "'x",
		"at":      "a.b@",
		"words":   "orders-7d9f8b6c5 ",
		"tokens":  "V1StGXR8_Z5jdHi6B-myT-",
		"digits":  "1a",
		"base64":  "aZ9+",
		"spaces":  " \t",
		"uniform": "x",
	} {
		m := strings.Repeat(unit, 4096/len(unit)+1)[:4096]
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(m)))
			for b.Loop() {
				fingerprint.NormalizeMessage(m)
			}
		})
	}
}
