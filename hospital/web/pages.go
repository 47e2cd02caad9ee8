package web

import (
	"errors"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/antidote-mq/antidote"
	"github.com/antidote-mq/antidote/hospital"
)

// pageSize is how many groups or letters a page lists.
const pageSize = 50

type groupsView struct {
	Groups          []hospital.Group
	Reason, Handler string
	Total           int
	Page, Pages     int
	Prev, Next      string // links, "" at the ends
}

// groupsPage lists the groups with letters waiting, what is failing now
// first.
func (s *server) groupsPage(w http.ResponseWriter, r *http.Request, p principal) {
	q := r.URL.Query()
	v := groupsView{Reason: strings.TrimSpace(q.Get("reason")), Handler: strings.TrimSpace(q.Get("handler"))}
	v.Page, _ = strconv.Atoi(q.Get("page"))
	v.Page = max(v.Page, 1)
	gp, err := s.store.Groups(r.Context(), hospital.GroupQuery{Reason: v.Reason, Handler: v.Handler, Order: hospital.ByRecent,
		Offset: (v.Page - 1) * pageSize, Limit: pageSize})
	if err != nil {
		s.internal(w, r, err)
		return
	}
	v.Groups, v.Total = gp.Groups, gp.Total
	v.Pages = max(1, (gp.Total+pageSize-1)/pageSize)
	link := func(n int) string {
		u := url.Values{}
		if v.Reason != "" {
			u.Set("reason", v.Reason)
		}
		if v.Handler != "" {
			u.Set("handler", v.Handler)
		}
		u.Set("page", strconv.Itoa(n))
		return "/?" + u.Encode()
	}
	if v.Page > 1 {
		v.Prev = link(v.Page - 1)
	}
	if v.Page < v.Pages {
		v.Next = link(v.Page + 1)
	}
	s.render(w, r, http.StatusOK, "groups.html", p, "Dead letters by cause", v)
}

var fingerprintRE = regexp.MustCompile(`^[0-9a-f]{1,64}$`)

type groupView struct {
	ID string
	// Example is the group's first letter listed, whole (its fingerprint
	// parts), or nil when the page is empty.
	Example *hospital.Letter
	Letters []hospital.Letter
	State   string
	// Next is the link to the next page, First to the first ("" on it).
	Next, First string
	CanReplay   bool
}

// groupPage lists one group's letters, oldest first, page by page (keyset:
// ?after=<id>).
func (s *server) groupPage(w http.ResponseWriter, r *http.Request, p principal) {
	fp := r.PathValue("fingerprint")
	if !fingerprintRE.MatchString(fp) {
		s.fail(w, r, http.StatusNotFound, "No group has the fingerprint "+strconv.Quote(fp)+".")
		return
	}
	q := r.URL.Query()
	state, ok := parseState(q.Get("state"))
	if !ok {
		s.fail(w, r, http.StatusBadRequest, "state must be dead, replayed, purged or all.")
		return
	}
	after, _ := strconv.ParseInt(q.Get("after"), 10, 64)
	lp, err := s.store.Letters(r.Context(), hospital.LetterQuery{Fingerprint: fp, State: state, After: max(after, 0), Limit: pageSize})
	if err != nil {
		s.internal(w, r, err)
		return
	}
	v := groupView{ID: fp, Letters: lp.Letters, State: string(state), CanReplay: s.cfg.Publisher != nil}
	if v.State == "" {
		v.State = "all"
	}
	if len(lp.Letters) > 0 {
		ex, err := s.store.Letter(r.Context(), lp.Letters[0].ID)
		if err != nil {
			s.internal(w, r, err)
			return
		}
		v.Example = &ex
	} else if after == 0 && state == hospital.StateDead {
		// Nothing waiting: show the group's treated letters instead.
		if all, err := s.store.Letters(r.Context(), hospital.LetterQuery{Fingerprint: fp, Limit: 1}); err == nil && len(all.Letters) == 0 {
			s.fail(w, r, http.StatusNotFound, "No group has the fingerprint "+fp+".")
			return
		}
	}
	base := "/groups/" + fp + "?state=" + v.State
	if lp.Next != 0 {
		v.Next = base + "&after=" + strconv.FormatInt(lp.Next, 10)
	}
	if after > 0 {
		v.First = base
	}
	s.render(w, r, http.StatusOK, "group.html", p, "Group "+fp, v)
}

func parseState(s string) (hospital.State, bool) {
	switch s {
	case "", "dead":
		return hospital.StateDead, true
	case "all":
		return "", true
	case "replayed", "purged":
		return hospital.State(s), true
	}
	return "", false
}

type letterView struct {
	L        hospital.Letter
	Metadata []kv
	Payload  payloadView
	// TraceID is the letter's trace (its traceparent metadata), TraceURL
	// its page in Jaeger when Config.JaegerURL is set.
	TraceID, TraceURL string
	Audit             []hospital.AuditEntry
	CanReplay         bool
	Dead              bool
	// Claim is set for a letter stored with its payload in the claim
	// check: read from there, or why not.
	Claim *APIClaimCheck
}

type kv struct{ Key, Value string }

func (s *server) letter(w http.ResponseWriter, r *http.Request) (hospital.Letter, bool) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		s.fail(w, r, http.StatusNotFound, "Letter ids are positive numbers.")
		return hospital.Letter{}, false
	}
	l, err := s.store.Letter(r.Context(), id)
	if errors.Is(err, hospital.ErrNotFound) {
		s.fail(w, r, http.StatusNotFound, "No letter has the id "+strconv.FormatInt(id, 10)+".")
		return l, false
	}
	if err != nil {
		s.internal(w, r, err)
		return l, false
	}
	return l, true
}

// letterPage shows one letter whole (its claim check read, see
// resolveClaim).
func (s *server) letterPage(w http.ResponseWriter, r *http.Request, p principal) {
	l, ok := s.letter(w, r)
	if !ok {
		return
	}
	audit, err := s.store.Audit(r.Context(), l.ID, 100)
	if err != nil {
		s.internal(w, r, err)
		return
	}
	l, claim := s.resolveClaim(r.Context(), l)
	v := letterView{L: l, Payload: viewPayload(l.Payload, r.URL.Query().Get("full") == "1"), Audit: audit,
		CanReplay: s.cfg.Publisher != nil, Dead: l.State == hospital.StateDead, Claim: claim}
	keys := make([]string, 0, len(l.Metadata))
	for k := range l.Metadata {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		v.Metadata = append(v.Metadata, kv{k, l.Metadata[k]})
	}
	v.TraceID = traceID(l.Metadata[antidote.MetadataTraceparent])
	if v.TraceID != "" && s.cfg.JaegerURL != "" {
		v.TraceURL = strings.TrimRight(s.cfg.JaegerURL, "/") + "/trace/" + v.TraceID
	}
	s.render(w, r, http.StatusOK, "letter.html", p, "Letter "+strconv.FormatInt(l.ID, 10), v)
}
