package web

import (
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/antidote-mq/antidote/hospital"
)

// APIGroup is a group as GET /api/groups returns it: hospital.Group with
// its fingerprint's parts flattened (fingerprint is the group's id).
type APIGroup struct {
	Fingerprint   string    `json:"fingerprint"`
	Count         int64     `json:"count"`
	Dead          int64     `json:"dead"`
	Reason        string    `json:"reason"`
	Handler       string    `json:"handler"`
	ErrorType     string    `json:"error_type"`
	Frame         string    `json:"frame"`
	Message       string    `json:"message"`
	Shape         string    `json:"shape"`
	Producer      string    `json:"producer"`
	FirstSeen     time.Time `json:"first_seen"`
	LastSeen      time.Time `json:"last_seen"`
	Example       int64     `json:"example"`
	OriginalTopic string    `json:"original_topic"`
	Recent        []int64   `json:"recent"`
}

// APIGroups is the answer of GET /api/groups.
type APIGroups struct {
	Groups []APIGroup `json:"groups"`
	// Total is how many groups the query selects over all pages.
	Total int `json:"total"`
	// Offset is this page's; Next the next page's offset, 0 on the last.
	Offset int `json:"offset"`
	Next   int `json:"next"`
}

// APILetter is the answer of GET /api/letters/{id}: the whole letter (its
// claim check read, see Config.ClaimCheck), its payload also as text when
// it is UTF-8, and its audit history.
type APILetter struct {
	hospital.Letter
	PayloadText *string               `json:"payload_text,omitempty"`
	Audit       []hospital.AuditEntry `json:"audit"`
	// ClaimCheck is set for a letter stored with its payload in the claim
	// check: whether it was read from there, and if not why.
	ClaimCheck *APIClaimCheck `json:"claim_check,omitempty"`
}

// apiGroups: GET /api/groups?reason=&handler=&order=recent|count|last_seen&resolved=1&offset=&limit=
func (s *server) apiGroups(w http.ResponseWriter, r *http.Request, _ principal) {
	q := r.URL.Query()
	order := hospital.GroupOrder(q.Get("order"))
	switch order {
	case "":
		order = hospital.ByRecent
	case hospital.ByRecent, hospital.ByCount, hospital.ByLastSeen:
	default:
		s.fail(w, r, http.StatusBadRequest, "order must be recent, count or last_seen")
		return
	}
	offset, _ := strconv.Atoi(q.Get("offset"))
	limit, _ := strconv.Atoi(q.Get("limit"))
	limit = hospital.PageLimit(limit)
	offset = max(offset, 0)
	gp, err := s.store.Groups(r.Context(), hospital.GroupQuery{Reason: q.Get("reason"), Handler: q.Get("handler"),
		WithResolved: q.Get("resolved") == "1" || q.Get("resolved") == "true", Order: order, Offset: offset, Limit: limit})
	if err != nil {
		s.internal(w, r, err)
		return
	}
	out := APIGroups{Groups: make([]APIGroup, 0, len(gp.Groups)), Total: gp.Total, Offset: offset}
	for _, g := range gp.Groups {
		f := g.Fingerprint
		out.Groups = append(out.Groups, APIGroup{Fingerprint: f.ID, Count: g.Count, Dead: g.Dead, Reason: f.Reason,
			Handler: f.Handler, ErrorType: f.ErrorType, Frame: f.Frame, Message: f.Message, Shape: f.Shape, Producer: f.Producer,
			FirstSeen: g.FirstSeen, LastSeen: g.LastSeen, Example: g.Example, OriginalTopic: g.OriginalTopic, Recent: g.Recent})
	}
	if offset+len(gp.Groups) < gp.Total {
		out.Next = offset + len(gp.Groups)
	}
	writeJSON(w, http.StatusOK, out)
}

// apiGroupLetters: GET /api/groups/{fingerprint}/letters?state=dead|replayed|purged|all&after=&limit=&newest=1
// — a hospital.LetterPage (letters without payloads).
func (s *server) apiGroupLetters(w http.ResponseWriter, r *http.Request, _ principal) {
	fp := r.PathValue("fingerprint")
	if !fingerprintRE.MatchString(fp) {
		s.fail(w, r, http.StatusBadRequest, "a fingerprint is hex digits")
		return
	}
	q := r.URL.Query()
	state, ok := parseState(q.Get("state"))
	if !ok {
		s.fail(w, r, http.StatusBadRequest, "state must be dead, replayed, purged or all")
		return
	}
	if q.Get("state") == "" {
		state = "" // the API lists every state unless asked
	}
	after, _ := strconv.ParseInt(q.Get("after"), 10, 64)
	limit, _ := strconv.Atoi(q.Get("limit"))
	lp, err := s.store.Letters(r.Context(), hospital.LetterQuery{Fingerprint: fp, State: state, After: max(after, 0),
		Limit: limit, Newest: q.Get("newest") == "1" || q.Get("newest") == "true"})
	if err != nil {
		s.internal(w, r, err)
		return
	}
	if lp.Letters == nil {
		lp.Letters = []hospital.Letter{}
	}
	writeJSON(w, http.StatusOK, lp)
}

// apiLetter: GET /api/letters/{id}.
func (s *server) apiLetter(w http.ResponseWriter, r *http.Request, _ principal) {
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
	out := APILetter{Letter: l, Audit: audit, ClaimCheck: claim}
	if out.Audit == nil {
		out.Audit = []hospital.AuditEntry{}
	}
	if utf8.Valid(l.Payload) {
		t := strings.Clone(string(l.Payload))
		out.PayloadText = &t
	}
	writeJSON(w, http.StatusOK, out)
}
