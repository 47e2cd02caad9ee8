package web

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"golang.org/x/time/rate"
)

// sessionCookie names the login cookie: a random session id, looked up in
// the server's memory (a restart logs everyone out).
const sessionCookie = "antidote_hospital_session"

// principal is who made a request.
type principal struct {
	// actor is written to the audit: "token" (bearer), the basic-auth user
	// name, the name typed at login, or "anonymous" without a Token.
	actor string
	// csrfKey is what the request's CSRF token is derived from ("" for a
	// bearer request, which a browser never sends by itself and so needs
	// none).
	csrfKey string
	// session is the login's id, for logout.
	session string
}

type session struct {
	actor   string
	expires time.Time
}

type sessions struct {
	mu  sync.Mutex
	ttl time.Duration
	m   map[string]session
	// failed limits wrong tokens at the login form and in headers.
	failed *rate.Limiter
}

func newSessions(ttl time.Duration) *sessions {
	return &sessions{ttl: ttl, m: map[string]session{}, failed: rate.NewLimiter(5, 10)}
}

func (ss *sessions) create(actor string, now time.Time) string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	id := base64.RawURLEncoding.EncodeToString(b)
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for k, s := range ss.m {
		if now.After(s.expires) {
			delete(ss.m, k)
		}
	}
	ss.m[id] = session{actor: actor, expires: now.Add(ss.ttl)}
	return id
}

func (ss *sessions) get(id string, now time.Time) (session, bool) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	s, ok := ss.m[id]
	if !ok || now.After(s.expires) {
		delete(ss.m, id)
		return session{}, false
	}
	return s, true
}

func (ss *sessions) drop(id string) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	delete(ss.m, id)
}

// tokenOK compares in constant time (of the token's length).
func (s *server) tokenOK(got string) bool {
	ok := subtle.ConstantTimeCompare([]byte(got), []byte(s.cfg.Token)) == 1
	if !ok {
		_ = s.sessions.failed.Wait(context.Background()) // slows guessing down
	}
	return ok
}

// who authenticates r: a bearer token, basic auth with the token as the
// password, or a session cookie.
func (s *server) who(r *http.Request) (principal, bool) {
	if s.cfg.Token == "" {
		return principal{actor: "anonymous", csrfKey: "anonymous"}, true
	}
	if h := r.Header.Get("Authorization"); h != "" {
		if tok, ok := strings.CutPrefix(h, "Bearer "); ok {
			return principal{actor: "token"}, s.tokenOK(strings.TrimSpace(tok))
		}
		if user, pass, ok := r.BasicAuth(); ok {
			if user == "" {
				user = "basic"
			}
			return principal{actor: user, csrfKey: "basic:" + user}, s.tokenOK(pass)
		}
		return principal{}, false
	}
	if c, err := r.Cookie(sessionCookie); err == nil {
		if sess, ok := s.sessions.get(c.Value, time.Now()); ok {
			return principal{actor: sess.actor, csrfKey: "session:" + c.Value, session: c.Value}, true
		}
	}
	return principal{}, false
}

// csrfToken is the token the forms of p's pages carry: an HMAC of p's
// session under the server's key.
func (s *server) csrfToken(p principal) string {
	if p.csrfKey == "" {
		return ""
	}
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte("csrf\x00" + p.csrfKey))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func (s *server) csrfOK(r *http.Request, p principal) bool {
	if p.csrfKey == "" {
		return true // bearer: not sent by a browser on its own
	}
	want := s.csrfToken(p)
	return subtle.ConstantTimeCompare([]byte(r.PostFormValue("csrf")), []byte(want)) == 1
}

// authed lets authenticated requests through to h; a POST also needs its
// CSRF token. A page request without credentials is sent to the login
// form; an API request gets 401.
func (s *server) authed(h func(http.ResponseWriter, *http.Request, principal)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, ok := s.who(r)
		if !ok {
			if r.Method == http.MethodGet && !strings.HasPrefix(r.URL.Path, "/api/") && r.URL.Path != "/metrics" &&
				r.Header.Get("Authorization") == "" {
				http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
				return
			}
			w.Header().Set("WWW-Authenticate", `Bearer realm="antidote hospital"`)
			s.fail(w, r, http.StatusUnauthorized, "Log in first: send Authorization: Bearer <ANTIDOTE_HOSPITAL_TOKEN>, or use the login page.")
			return
		}
		if r.Method == http.MethodPost {
			r.Body = http.MaxBytesReader(w, r.Body, 16<<20) // an edited payload
			if !s.csrfOK(r, p) {
				s.fail(w, r, http.StatusForbidden, "The form's CSRF token is missing or stale: reload the page and try again.")
				return
			}
		}
		h(w, r, p)
	})
}

type loginView struct {
	Next, Error string
	NoToken     bool
}

func (s *server) loginPage(w http.ResponseWriter, r *http.Request) {
	s.render(w, r, http.StatusOK, "login.html", principal{}, "Log in", loginView{Next: safeNext(r.URL.Query().Get("next")), NoToken: s.cfg.Token == ""})
}

// login checks the typed token and starts a session; the cookie holds the
// session's random id, never the token.
func (s *server) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
	next := safeNext(r.PostFormValue("next"))
	if s.cfg.Token == "" {
		http.Redirect(w, r, next, http.StatusSeeOther)
		return
	}
	if !s.tokenOK(r.PostFormValue("token")) {
		s.cfg.Logger.Info("Hospital login refused: wrong token", nil)
		s.render(w, r, http.StatusUnauthorized, "login.html", principal{}, "Log in", loginView{Next: next, Error: "Wrong token."})
		return
	}
	actor := strings.TrimSpace(r.PostFormValue("name"))
	if actor == "" {
		actor = "token"
	}
	if len(actor) > 64 {
		actor = actor[:64]
	}
	id := s.sessions.create(actor, time.Now())
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: id, Path: "/", HttpOnly: true, Secure: r.TLS != nil,
		SameSite: http.SameSiteStrictMode, MaxAge: int(s.cfg.SessionTTL.Seconds())})
	s.cfg.Logger.Info("Hospital login", watermill.LogFields{"actor": actor})
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (s *server) logout(w http.ResponseWriter, r *http.Request, p principal) {
	if p.session != "" {
		s.sessions.drop(p.session)
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", HttpOnly: true, Secure: r.TLS != nil,
		SameSite: http.SameSiteStrictMode, MaxAge: -1})
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

// safeNext keeps a redirect on this site: a path, never //host or a URL.
func safeNext(next string) string {
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.HasPrefix(next, "/\\") {
		return "/"
	}
	return next
}
