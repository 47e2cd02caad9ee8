package testenv

import (
	"strings"
	"testing"
)

// RequireFieldsInOrder fails t unless err (a Validate's errors.Join) has
// one line per field, each naming its field, in the order given: every
// invalid field reported, in declaration order.
func RequireFieldsInOrder(t testing.TB, err error, fields ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error; want one naming %v", fields)
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != len(fields) {
		t.Fatalf("%d errors, want %d (%v):\n%v", len(lines), len(fields), fields, err)
	}
	for i, f := range fields {
		if !strings.Contains(lines[i], f) {
			t.Errorf("error %d is %q; want it to name %s (field order: %v)", i, lines[i], f, fields)
		}
	}
}
