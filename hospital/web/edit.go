package web

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"

	"github.com/ThreeDotsLabs/watermill"

	"github.com/antidote-mq/antidote/hospital"
)

type editView struct {
	L hospital.Letter
	// Payload and Metadata are the form's text: the letter's, or what
	// was typed.
	Payload, Metadata string
	// Binary is set for a payload that is not text: not editable here.
	Binary bool
	Error  string
	// Diff is what the edit changes (the confirmation page).
	Diff  string
	Topic string
}

type editResult struct {
	L       hospital.Letter
	NewUUID string
	Actor   string
	Err     string
}

func (s *server) editable(w http.ResponseWriter, r *http.Request) (hospital.Letter, bool) {
	if s.cfg.Publisher == nil {
		s.fail(w, r, http.StatusServiceUnavailable, "This hospital has no publisher configured: it cannot replay.")
		return hospital.Letter{}, false
	}
	l, ok := s.letter(w, r)
	if !ok {
		return l, false
	}
	if l.State != hospital.StateDead {
		s.fail(w, r, http.StatusConflict, "Letter "+strconv.FormatInt(l.ID, 10)+" is "+string(l.State)+": only dead letters are edited and replayed.")
		return l, false
	}
	// The form holds the whole letter, or none: an empty payload standing
	// for one in the claim check would be replayed as the message.
	l, claim := s.resolveClaim(r.Context(), l)
	if claim != nil && !claim.Resolved {
		s.fail(w, r, http.StatusConflict, "Letter "+strconv.FormatInt(l.ID, 10)+" cannot be edited: "+claim.Problem)
		return l, false
	}
	return l, true
}

// editPage is the edit form: the letter's payload and metadata as text.
func (s *server) editPage(w http.ResponseWriter, r *http.Request, p principal) {
	l, ok := s.editable(w, r)
	if !ok {
		return
	}
	md, _ := json.MarshalIndent(l.Metadata, "", "  ")
	v := editView{L: l, Payload: string(l.Payload), Metadata: string(md), Binary: !printable(l.Payload), Topic: l.OriginalTopic}
	s.render(w, r, http.StatusOK, "edit.html", p, "Edit and replay letter "+strconv.FormatInt(l.ID, 10), v)
}

// readEdit reads the form: the payload (line ends as the letter had them:
// browsers send a textarea's as CRLF) and the metadata, a JSON object of
// strings.
func readEdit(r *http.Request, l hospital.Letter) (hospital.Edit, editView, string) {
	payload := r.PostFormValue("payload")
	if !strings.Contains(string(l.Payload), "\r\n") {
		payload = strings.ReplaceAll(payload, "\r\n", "\n")
	}
	v := editView{L: l, Payload: payload, Metadata: r.PostFormValue("metadata"), Topic: l.OriginalTopic}
	var md map[string]string
	if err := json.Unmarshal([]byte(v.Metadata), &md); err != nil {
		return hospital.Edit{}, v, "The metadata is not a JSON object of strings: " + err.Error()
	}
	if md == nil {
		md = map[string]string{}
	}
	return hospital.Edit{Payload: []byte(payload), Metadata: md}, v, ""
}

// editConfirm shows the difference the edit makes; its form replays.
func (s *server) editConfirm(w http.ResponseWriter, r *http.Request, p principal) {
	l, ok := s.editable(w, r)
	if !ok {
		return
	}
	if !printable(l.Payload) {
		s.fail(w, r, http.StatusBadRequest, "The letter's payload is binary: it cannot be edited as text here.")
		return
	}
	e, v, problem := readEdit(r, l)
	if problem == "" {
		if v.Diff = hospital.Diff(l.Payload, l.Metadata, e.Payload, e.Metadata); v.Diff == "" {
			problem = "The edit changes nothing: replay the letter as it is instead."
		}
	}
	if problem != "" {
		v.Error = problem
		s.render(w, r, http.StatusBadRequest, "edit.html", p, "Edit and replay letter "+strconv.FormatInt(l.ID, 10), v)
		return
	}
	s.render(w, r, http.StatusOK, "edit_confirm.html", p, "Confirm: edit and replay letter "+strconv.FormatInt(l.ID, 10), v)
}

// editExecute replays the edited letter as a new message naming the
// original (hospital.EditAndReplay: the diff and the actor go to the audit).
func (s *server) editExecute(w http.ResponseWriter, r *http.Request, p principal) {
	l, ok := s.editable(w, r)
	if !ok {
		return
	}
	e, v, problem := readEdit(r, l)
	if problem != "" {
		v.Error = problem
		s.render(w, r, http.StatusBadRequest, "edit.html", p, "Edit and replay letter "+strconv.FormatInt(l.ID, 10), v)
		return
	}
	newUUID, err := hospital.EditAndReplay(detached(r.Context()), s.treatConfig(p), l.ID, e)
	res := editResult{L: l, NewUUID: newUUID, Actor: p.actor}
	status := http.StatusOK
	if err != nil {
		res.Err, status = err.Error(), http.StatusConflict
	}
	s.cfg.Logger.Info("Hospital edit and replay", watermill.LogFields{"actor": p.actor, "letter": l.ID, "new_uuid": newUUID, "err": res.Err})
	s.render(w, r, status, "edit_result.html", p, "Edited and replayed letter "+strconv.FormatInt(l.ID, 10), res)
}
