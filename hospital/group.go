package hospital

import (
	"cmp"
	"fmt"
	"slices"
	"time"
)

// GroupLetters groups letters read in memory (a broker's DLQ read directly)
// the way the store groups what it ingests: by fingerprint, first and last
// seen by failure time (Letter.FirstFailed, Letter.FailedAt), the example
// the first letter given, the hourly rates counted back from now. letters
// come oldest first.
func GroupLetters(letters []Letter, now time.Time) []Group {
	at := map[string]int{}
	var out []Group
	hour := now.Truncate(time.Hour)
	latest := map[string]time.Time{}
	for _, l := range letters {
		i, ok := at[l.Fingerprint.ID]
		if !ok {
			i = len(out)
			at[l.Fingerprint.ID] = i
			out = append(out, Group{Fingerprint: l.Fingerprint, FirstSeen: l.FirstFailed(), LastSeen: l.FailedAt(),
				Example: l.ID, OriginalTopic: l.OriginalTopic, Recent: make([]int64, RecentHours)})
		}
		g := &out[i]
		g.Count++
		if l.State == StateDead || l.State == "" {
			g.Dead++
		}
		if first := l.FirstFailed(); first.Before(g.FirstSeen) {
			g.FirstSeen = first
		}
		failed := l.FailedAt()
		if failed.After(g.LastSeen) {
			g.LastSeen = failed
		}
		if l.ConsumerVersion != "" && !failed.Before(latest[l.Fingerprint.ID]) {
			g.ConsumerVersion, latest[l.Fingerprint.ID] = l.ConsumerVersion, failed
		}
		if ago := int(hour.Sub(failed.Truncate(time.Hour)) / time.Hour); ago >= 0 && ago < RecentHours {
			g.Recent[RecentHours-1-ago]++
		}
	}
	return out
}

// PageGroups selects, sorts and pages groups as a Ward's Groups does.
func PageGroups(groups []Group, q GroupQuery) (GroupPage, error) {
	var rank func(a, b Group) int
	lastSeen := func(a, b Group) int {
		return cmp.Or(b.LastSeen.Compare(a.LastSeen), cmp.Compare(a.Fingerprint.ID, b.Fingerprint.ID))
	}
	switch q.Order {
	case ByLastSeen, "":
		rank = lastSeen
	case ByCount:
		rank = func(a, b Group) int { return cmp.Or(cmp.Compare(b.Dead, a.Dead), lastSeen(a, b)) }
	case ByRecent:
		recent := func(g Group) int64 { return g.Recent[RecentHours-1] + g.Recent[RecentHours-2] }
		rank = func(a, b Group) int { return cmp.Or(cmp.Compare(recent(b), recent(a)), lastSeen(a, b)) }
	default:
		return GroupPage{}, fmt.Errorf("hospital: group order %q is not %s, %s or %s", q.Order, ByLastSeen, ByCount, ByRecent)
	}
	sel := slices.DeleteFunc(slices.Clone(groups), func(g Group) bool {
		return (!q.WithResolved && g.Dead == 0) || (q.Reason != "" && g.Fingerprint.Reason != q.Reason) ||
			(q.Handler != "" && g.Fingerprint.Handler != q.Handler)
	})
	slices.SortStableFunc(sel, rank)
	page := GroupPage{Total: len(sel)}
	from := min(max(0, q.Offset), len(sel))
	page.Groups = sel[from:min(from+PageLimit(q.Limit), len(sel))]
	return page, nil
}
