package dlq

import (
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/antidote-mq/antidote/poison"
)

// Filter selects letters. Empty fields match everything; a letter matches
// when it matches every non-empty field.
type Filter struct {
	Reasons    []poison.Reason
	Handlers   []string
	ErrorTypes []string
	UUIDs      []string
	// Since and Until bound the last failure time (inclusive).
	Since, Until time.Time
}

// Match reports whether l is selected.
func (f Filter) Match(l poison.Letter) bool {
	if len(f.Reasons) > 0 && !slices.Contains(f.Reasons, l.Reason) {
		return false
	}
	if len(f.Handlers) > 0 && !slices.Contains(f.Handlers, l.Handler) {
		return false
	}
	if len(f.ErrorTypes) > 0 && !slices.Contains(f.ErrorTypes, l.ErrorType) {
		return false
	}
	if len(f.UUIDs) > 0 && !slices.Contains(f.UUIDs, l.UUID) {
		return false
	}
	if !f.Since.IsZero() && l.LastFailedAt.Before(f.Since) {
		return false
	}
	if !f.Until.IsZero() && l.LastFailedAt.After(f.Until) {
		return false
	}
	return true
}

// Group is letters that failed for the same cause, like ServicePulse's
// failure groups: same handler, reason, error type and normalized message.
type Group struct {
	Handler   string        `json:"handler"`
	Reason    poison.Reason `json:"reason"`
	ErrorType string        `json:"error_type"`
	// Error is the normalized message: numbers, UUIDs, hex and quoted values
	// replaced, so "user 42 not found" and "user 7 not found" group together.
	Error         string    `json:"error"`
	Count         int       `json:"count"`
	FirstFailedAt time.Time `json:"first_failed_at"`
	LastFailedAt  time.Time `json:"last_failed_at"`
	// Example is the UUID of one letter in the group, for `dlq show`.
	Example string `json:"example"`
}

var normalizers = []struct {
	re   *regexp.Regexp
	with string
}{
	{regexp.MustCompile(`[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}`), "<uuid>"},
	{regexp.MustCompile(`"[^"]*"|'[^']*'`), "<str>"},
	{regexp.MustCompile(`\b0x[0-9a-fA-F]+\b|\b[0-9a-fA-F]{16,}\b`), "<hex>"},
	{regexp.MustCompile(`\d+(\.\d+)?`), "<n>"},
}

// NormalizeError strips the values out of an error message, keeping its shape.
func NormalizeError(msg string) string {
	for _, n := range normalizers {
		msg = n.re.ReplaceAllString(msg, n.with)
	}
	return strings.Join(strings.Fields(msg), " ")
}

// GroupLetters groups letters by cause, largest group first.
func GroupLetters(letters []poison.Letter) []Group {
	idx := map[[4]string]int{}
	var out []Group
	for _, l := range letters {
		norm := NormalizeError(l.Error)
		key := [4]string{l.Handler, string(l.Reason), l.ErrorType, norm}
		i, ok := idx[key]
		if !ok {
			i = len(out)
			idx[key] = i
			out = append(out, Group{Handler: l.Handler, Reason: l.Reason, ErrorType: l.ErrorType, Error: norm,
				FirstFailedAt: l.FirstFailedAt, LastFailedAt: l.LastFailedAt, Example: l.UUID})
		}
		g := &out[i]
		g.Count++
		if !l.FirstFailedAt.IsZero() && (g.FirstFailedAt.IsZero() || l.FirstFailedAt.Before(g.FirstFailedAt)) {
			g.FirstFailedAt = l.FirstFailedAt
		}
		if l.LastFailedAt.After(g.LastFailedAt) {
			g.LastFailedAt = l.LastFailedAt
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Count > out[j].Count })
	return out
}
