package web

import (
	"context"
	"crypto/rand"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/antidote-mq/antidote/hospital"
	"github.com/antidote-mq/antidote/poison"
)

// MinTokenLength is the shortest Config.Token New accepts.
const MinTokenLength = 16

// Config configures New.
type Config struct {
	// Store holds the letters. Required.
	Store hospital.Store
	// Publisher sends replays to the letters' original topics. If
	// Publisher is nil, the UI offers no replay (purge and browsing work).
	Publisher message.Publisher
	// ClaimCheck is the services' claim-check store
	// (pgstore.NewClaimCheckStore, redisstore.NewClaimCheckStore): a letter
	// stored with its payload still there (ingested without the store) is
	// shown, and edited, whole, read with poison.ResolveClaim, which never
	// reads a claim made for another letter into it. If ClaimCheck is nil,
	// such a letter is shown as stored: no payload, its claim named.
	ClaimCheck poison.ClaimCheck
	// Token is the secret that grants access (ANTIDOTE_HOSPITAL_TOKEN), at
	// least MinTokenLength characters. If Token is empty, every request is
	// let in as "anonymous": only for a server listening on loopback
	// (antidote hospital serve refuses anything else).
	Token string
	// JaegerURL is the Jaeger UI's base URL (http://127.0.0.1:16686): a
	// letter's trace links to JaegerURL/trace/<trace id>. If JaegerURL is
	// empty, trace ids are shown without a link.
	JaegerURL string
	// Logger. If Logger is nil, nothing is logged.
	Logger watermill.LoggerAdapter
	// Registerer receives the per-group metrics (dead letters per group,
	// read from the store on each scrape). If Registerer is nil, no
	// metrics. When it is also a prometheus.Gatherer (a
	// *prometheus.Registry), the handler serves it on /metrics.
	Registerer prometheus.Registerer
	// MetricsGroups bounds the groups exported as metrics: the ones with
	// the most dead letters. If MetricsGroups is 0, 100.
	MetricsGroups int
	// ReplayRate caps replays per second (hospital.TreatConfig.Rate). If
	// ReplayRate is 0, 100.
	ReplayRate float64
	// SessionTTL is how long a login lasts. If SessionTTL is 0, 12 hours.
	SessionTTL time.Duration
	// CanarySettled tells a canary replay that its canaries' outcome is
	// known (hospital.CanaryConfig.Settled: e.g. the consumer's lag and the
	// ingester's are 0). If CanarySettled is nil, a canary replay waits
	// CanaryQuiet for a relapse and takes none for success.
	CanarySettled func(ctx context.Context) (bool, error)
	// CanaryQuiet is that wait (hospital.CanaryConfig.Quiet). If
	// CanaryQuiet is 0, 30s.
	CanaryQuiet time.Duration
	// CanaryTimeout bounds the wait for the canaries' outcome
	// (hospital.CanaryConfig.Timeout). If CanaryTimeout is 0, 5 minutes.
	CanaryTimeout time.Duration
}

func (c *Config) setDefaults() {
	if c.Logger == nil {
		c.Logger = watermill.NopLogger{}
	}
	if c.MetricsGroups == 0 {
		c.MetricsGroups = 100
	}
	if c.ReplayRate == 0 {
		c.ReplayRate = 100
	}
	if c.SessionTTL == 0 {
		c.SessionTTL = 12 * time.Hour
	}
	if c.CanaryQuiet == 0 {
		c.CanaryQuiet = 30 * time.Second
	}
	if c.CanaryTimeout == 0 {
		c.CanaryTimeout = 5 * time.Minute
	}
}

// Validate names every field that cannot work, in field order.
func (c Config) Validate() error {
	var errs []error
	if c.Store == nil {
		errs = append(errs, errors.New("web: Config.Store is nil; pass the hospital store (pgstore.NewHospitalStore)"))
	}
	if c.Token != "" && len(c.Token) < MinTokenLength {
		errs = append(errs, fmt.Errorf("web: Config.Token has %d characters, fewer than %d; use a random one, e.g. openssl rand -hex 32", len(c.Token), MinTokenLength))
	}
	if c.JaegerURL != "" {
		u, err := url.Parse(c.JaegerURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("web: Config.JaegerURL %q is not an http(s) URL; use e.g. http://127.0.0.1:16686", c.JaegerURL))
		}
	}
	if c.MetricsGroups < 0 {
		errs = append(errs, fmt.Errorf("web: Config.MetricsGroups %d is negative; use e.g. 100", c.MetricsGroups))
	}
	if c.ReplayRate < 0 {
		errs = append(errs, fmt.Errorf("web: Config.ReplayRate %v is negative; use e.g. 100", c.ReplayRate))
	}
	if c.SessionTTL < 0 {
		errs = append(errs, fmt.Errorf("web: Config.SessionTTL %s is negative; use e.g. 12h", c.SessionTTL))
	}
	if c.CanaryQuiet < 0 {
		errs = append(errs, fmt.Errorf("web: Config.CanaryQuiet %s is negative; use e.g. 30s", c.CanaryQuiet))
	}
	if c.CanaryTimeout < 0 {
		errs = append(errs, fmt.Errorf("web: Config.CanaryTimeout %s is negative; use e.g. 5m", c.CanaryTimeout))
	}
	return errors.Join(errs...)
}

//go:embed templates/*.html static/*
var assets embed.FS

// server holds the handler's state.
type server struct {
	cfg      Config
	store    hospital.Store
	pages    map[string]*template.Template
	sessions *sessions
	// key signs CSRF tokens; random per process, so a restart logs
	// everyone out and old forms are refused.
	key []byte
}

// New fills cfg's defaults, validates it and returns the hospital's
// handler: the pages, the JSON API under /api/, and /metrics when
// cfg.Registerer is a Gatherer.
func New(cfg Config) (http.Handler, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	pages, err := parsePages()
	if err != nil {
		return nil, err
	}
	s := &server{cfg: cfg, store: cfg.Store, pages: pages, sessions: newSessions(cfg.SessionTTL), key: make([]byte, 32)}
	_, _ = rand.Read(s.key) // never fails (crypto/rand)

	mux := http.NewServeMux()
	static, _ := fs.Sub(assets, "static")
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	mux.HandleFunc("GET /login", s.loginPage)
	mux.HandleFunc("POST /login", s.login)
	mux.Handle("POST /logout", s.authed(s.logout))

	mux.Handle("GET /{$}", s.authed(s.groupsPage))
	mux.Handle("GET /groups/{fingerprint}", s.authed(s.groupPage))
	mux.Handle("GET /letters/{id}", s.authed(s.letterPage))
	mux.Handle("POST /groups/{fingerprint}/{action}", s.authed(s.confirmGroup))
	mux.Handle("POST /groups/{fingerprint}/{action}/confirm", s.authed(s.executeGroup))
	mux.Handle("GET /letters/{id}/edit", s.authed(s.editPage))
	mux.Handle("POST /letters/{id}/edit", s.authed(s.editConfirm))
	mux.Handle("POST /letters/{id}/edit/confirm", s.authed(s.editExecute))
	mux.Handle("POST /letters/{id}/{action}", s.authed(s.confirmLetter))
	mux.Handle("POST /letters/{id}/{action}/confirm", s.authed(s.executeLetter))

	mux.Handle("GET /api/groups", s.authed(s.apiGroups))
	mux.Handle("GET /api/groups/{fingerprint}/letters", s.authed(s.apiGroupLetters))
	mux.Handle("GET /api/letters/{id}", s.authed(s.apiLetter))

	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(newGroupCollector(cfg.Store, cfg.MetricsGroups, cfg.Logger)); err != nil {
			return nil, fmt.Errorf("web: register the hospital's metrics: %w", err)
		}
		if g, ok := cfg.Registerer.(prometheus.Gatherer); ok {
			metrics := promhttp.HandlerFor(g, promhttp.HandlerOpts{})
			mux.Handle("GET /metrics", s.authed(func(w http.ResponseWriter, r *http.Request, _ principal) { metrics.ServeHTTP(w, r) }))
		}
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.fail(w, r, http.StatusNotFound, "There is no page at "+r.URL.Path+".")
	})

	cop := http.NewCrossOriginProtection()
	cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.fail(w, r, http.StatusForbidden, "Cross-origin request refused: state-changing requests must come from this site's own pages.")
	}))
	return securityHeaders(cop.Handler(mux)), nil
}

// csp allows the page's own stylesheet and nothing else: no script at all,
// no frames, forms posting only here.
const csp = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

func securityHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", csp)
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("Referrer-Policy", "no-referrer")
		hd.Set("Cross-Origin-Opener-Policy", "same-origin")
		hd.Set("Cache-Control", "no-store")
		h.ServeHTTP(w, r)
	})
}

// detached is ctx without its cancellation: a replay or purge the
// operator confirmed runs to its end even when the browser gives up
// waiting, each letter treated once either way.
func detached(ctx context.Context) context.Context { return context.WithoutCancel(ctx) }
