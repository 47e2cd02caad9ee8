package web

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/ThreeDotsLabs/watermill"

	"github.com/antidote-mq/antidote/hospital"
)

// plan is what a confirmed action will do: which letters (the dead ones up
// to letter Upto, so letters arriving after the confirmation page are left
// alone) and where replays go.
type plan struct {
	Action string // "replay", "canary" or "purge"
	// What names the target: "group <fp>" or "letter <id>".
	What string
	// Back is the target's page.
	Back  string
	Count int
	// Topics are the original topics replays go to, with their letters;
	// NoTopic counts letters without one (a replay reports them failed).
	Topics  []topicCount
	NoTopic int
	Upto    int64
	// Post is where the confirmation form posts.
	Post string
	// Canaries is how many letters a canary replay sends first.
	Canaries int
	// Quiet and Timeout are a canary replay's waits, for the page.
	Quiet, Timeout time.Duration
}

type topicCount struct {
	Topic string
	N     int
}

type resultView struct {
	Plan   plan
	Result hospital.Result
	// Canary is a canary replay's outcome.
	Canary *hospital.CanaryResult
	Actor  string
	Err    string
}

func parseAction(w http.ResponseWriter, r *http.Request, s *server) (string, bool) {
	a := r.PathValue("action")
	switch a {
	case "replay", "canary":
		if s.cfg.Publisher == nil {
			s.fail(w, r, http.StatusServiceUnavailable, "This hospital has no publisher configured: it cannot replay.")
			return "", false
		}
		return a, true
	case "purge":
		return a, true
	}
	s.fail(w, r, http.StatusNotFound, "Unknown action "+strconv.Quote(a)+": use replay, canary or purge.")
	return "", false
}

// planGroup lists the group's dead letters (up to letter upto, unless 0)
// and their topics.
func (s *server) planGroup(ctx context.Context, fp, action string, upto int64) (plan, error) {
	pl := plan{Action: action, Quiet: s.cfg.CanaryQuiet, Timeout: s.cfg.CanaryTimeout, What: "group " + fp, Back: "/groups/" + fp, Post: "/groups/" + fp + "/" + action + "/confirm"}
	topics := map[string]int{}
	q := hospital.LetterQuery{Fingerprint: fp, State: hospital.StateDead, Limit: 1000}
	for {
		page, err := s.store.Letters(ctx, q)
		if err != nil {
			return pl, err
		}
		for _, l := range page.Letters {
			if upto > 0 && l.ID > upto {
				page.Next = 0
				break
			}
			pl.Count++
			pl.Upto = max(pl.Upto, l.ID)
			if l.OriginalTopic == "" {
				pl.NoTopic++
			} else {
				topics[l.OriginalTopic]++
			}
		}
		if page.Next == 0 {
			break
		}
		q.After = page.Next
	}
	for t, n := range topics {
		pl.Topics = append(pl.Topics, topicCount{t, n})
	}
	slices.SortFunc(pl.Topics, func(a, b topicCount) int {
		if a.N != b.N {
			return b.N - a.N
		}
		if a.Topic < b.Topic {
			return -1
		}
		return 1
	})
	return pl, nil
}

// canaries reads a canary replay's number of canaries (default 1).
func (s *server) canaries(w http.ResponseWriter, r *http.Request, action string) (int, bool) {
	if action != "canary" {
		return 0, true
	}
	v := r.PostFormValue("canaries")
	if v == "" {
		return 1, true
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		s.fail(w, r, http.StatusBadRequest, "canaries must be a number of letters, 1 or more.")
		return 0, false
	}
	return n, true
}

// confirmGroup shows what replaying or purging the group would do; the
// page's form posts to executeGroup.
func (s *server) confirmGroup(w http.ResponseWriter, r *http.Request, p principal) {
	action, ok := parseAction(w, r, s)
	if !ok {
		return
	}
	fp := r.PathValue("fingerprint")
	if !fingerprintRE.MatchString(fp) {
		s.fail(w, r, http.StatusNotFound, "No group has the fingerprint "+strconv.Quote(fp)+".")
		return
	}
	pl, err := s.planGroup(r.Context(), fp, action, 0)
	if err != nil {
		s.internal(w, r, err)
		return
	}
	if pl.Canaries, ok = s.canaries(w, r, action); !ok {
		return
	}
	s.render(w, r, http.StatusOK, "confirm.html", p, "Confirm: "+action+" "+pl.What, pl)
}

// executeGroup treats the group's dead letters up to the confirmed one.
func (s *server) executeGroup(w http.ResponseWriter, r *http.Request, p principal) {
	action, ok := parseAction(w, r, s)
	if !ok {
		return
	}
	fp := r.PathValue("fingerprint")
	upto, err := strconv.ParseInt(r.PostFormValue("upto"), 10, 64)
	if !fingerprintRE.MatchString(fp) || err != nil || upto <= 0 {
		s.fail(w, r, http.StatusBadRequest, "Confirm from the confirmation page: it says which letters.")
		return
	}
	ctx := detached(r.Context())
	pl, err := s.planGroup(ctx, fp, action, upto)
	if err != nil {
		s.internal(w, r, err)
		return
	}
	ids, err := hospital.Select(ctx, s.store, hospital.LetterQuery{Fingerprint: fp})
	if err != nil {
		s.internal(w, r, err)
		return
	}
	ids = slices.DeleteFunc(ids, func(id int64) bool { return id > upto })
	if pl.Canaries, ok = s.canaries(w, r, action); !ok {
		return
	}
	s.execute(w, r, p, pl, ids)
}

func (s *server) planLetter(l hospital.Letter, action string) plan {
	id := strconv.FormatInt(l.ID, 10)
	pl := plan{Action: action, What: "letter " + id, Back: "/letters/" + id, Post: "/letters/" + id + "/" + action + "/confirm", Upto: l.ID}
	if l.State != hospital.StateDead {
		return pl
	}
	pl.Count = 1
	if l.OriginalTopic == "" {
		pl.NoTopic = 1
	} else {
		pl.Topics = []topicCount{{l.OriginalTopic, 1}}
	}
	return pl
}

func (s *server) confirmLetter(w http.ResponseWriter, r *http.Request, p principal) {
	action, ok := parseAction(w, r, s)
	if !ok {
		return
	}
	if action == "canary" {
		s.fail(w, r, http.StatusNotFound, "A canary replay is for a group: replay one letter as it is.")
		return
	}
	l, ok := s.letter(w, r)
	if !ok {
		return
	}
	pl := s.planLetter(l, action)
	s.render(w, r, http.StatusOK, "confirm.html", p, "Confirm: "+action+" "+pl.What, pl)
}

func (s *server) executeLetter(w http.ResponseWriter, r *http.Request, p principal) {
	action, ok := parseAction(w, r, s)
	if !ok {
		return
	}
	if action == "canary" {
		s.fail(w, r, http.StatusNotFound, "A canary replay is for a group: replay one letter as it is.")
		return
	}
	l, ok := s.letter(w, r)
	if !ok {
		return
	}
	s.execute(w, r, p, s.planLetter(l, action), []int64{l.ID})
}

// treatConfig is what every treatment the UI runs (Replay, Canary, Purge,
// EditAndReplay) is given: the one place Config reaches them, so that
// Config.ClaimCheck goes to them too once hospital.TreatConfig reads claims.
func (s *server) treatConfig(p principal) hospital.TreatConfig {
	return hospital.TreatConfig{Store: s.store, Publisher: s.cfg.Publisher, Actor: p.actor, Rate: s.cfg.ReplayRate, ClaimCheck: s.cfg.ClaimCheck}
}

// execute replays or purges ids as p (written to the audit by
// Store.Treat) and shows what happened.
func (s *server) execute(w http.ResponseWriter, r *http.Request, p principal, pl plan, ids []int64) {
	ctx := detached(r.Context())
	cfg := s.treatConfig(p)
	var res hospital.Result
	var canary *hospital.CanaryResult
	var err error
	switch pl.Action {
	case "replay":
		res, err = hospital.Replay(ctx, cfg, ids)
	case "canary":
		var cr hospital.CanaryResult
		cr, err = hospital.Canary(ctx, hospital.CanaryConfig{TreatConfig: cfg, Canaries: pl.Canaries,
			Settled: s.cfg.CanarySettled, Quiet: s.cfg.CanaryQuiet, Timeout: s.cfg.CanaryTimeout}, ids)
		canary = &cr
		res = hospital.Result{Treated: cr.Canaries.Treated + cr.Rest.Treated, Skipped: cr.Canaries.Skipped + cr.Rest.Skipped,
			Failed: append(append([]hospital.LetterError(nil), cr.Canaries.Failed...), cr.Rest.Failed...)}
	default:
		res, err = hospital.Purge(ctx, cfg, ids)
	}
	v := resultView{Plan: pl, Result: res, Canary: canary, Actor: p.actor}
	status := http.StatusOK
	if err != nil {
		v.Err = err.Error()
		status = http.StatusInternalServerError
	}
	s.cfg.Logger.Info("Hospital "+pl.Action, watermill.LogFields{"actor": p.actor, "target": pl.What,
		"treated": res.Treated, "skipped": res.Skipped, "failed": len(res.Failed), "err": v.Err})
	title := fmt.Sprintf("%s %s: %d done", pl.Action, pl.What, res.Treated)
	s.render(w, r, status, "result.html", p, title, v)
}
