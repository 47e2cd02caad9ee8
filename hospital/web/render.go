package web

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"path"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill"
)

// page is what every template gets: the layout's parts and the page's own
// data in Data.
type page struct {
	Title string
	// Actor is who is logged in ("" on the login and error pages).
	Actor string
	// CSRF is the token every form carries.
	CSRF string
	// Logout is whether to show the logout button (a cookie session).
	Logout bool
	Data   any
}

var funcs = template.FuncMap{
	"sparkline": sparkline,
	"when":      when,
	"ago":       ago,
	"sum":       sum,
	"add":       func(a, b int) int { return a + b },
	"sub":       func(a, b int) int { return a - b },
	"min":       func(a, b int) int { return min(a, b) },
	"plural":    plural,
	"states":    func() []string { return []string{"dead", "replayed", "purged", "all"} },
}

// parsePages parses each page template with the layout.
func parsePages() (map[string]*template.Template, error) {
	names, err := fs.Glob(assets, "templates/*.html")
	if err != nil {
		return nil, err
	}
	pages := map[string]*template.Template{}
	for _, n := range names {
		base := path.Base(n)
		if base == "layout.html" {
			continue
		}
		t, err := template.New(base).Funcs(funcs).ParseFS(assets, "templates/layout.html", n)
		if err != nil {
			return nil, fmt.Errorf("web: template %s: %w", base, err)
		}
		pages[base] = t
	}
	return pages, nil
}

// render executes the page template name into a buffer first, so a
// template error is a clean 500 rather than half a page.
func (s *server) render(w http.ResponseWriter, r *http.Request, status int, name string, p principal, title string, data any) {
	var buf bytes.Buffer
	pg := page{Title: title, Actor: p.actor, CSRF: s.csrfToken(p), Logout: p.session != "", Data: data}
	if err := s.pages[name].ExecuteTemplate(&buf, "layout", pg); err != nil {
		s.cfg.Logger.Error("Hospital page failed to render", err, watermill.LogFields{"page": name, "path": r.URL.Path})
		http.Error(w, "the page failed to render; see the server's log", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

// fail answers an error: JSON under /api/, else an error page.
func (s *server) fail(w http.ResponseWriter, r *http.Request, status int, msg string) {
	if strings.HasPrefix(r.URL.Path, "/api/") || r.URL.Path == "/metrics" || r.Header.Get("Accept") == "application/json" {
		writeJSON(w, status, map[string]any{"error": msg, "status": status})
		return
	}
	s.render(w, r, status, "error.html", principal{}, http.StatusText(status), struct {
		Status  int
		Message string
	}{status, msg})
}

// internal logs err and answers 500 without the details.
func (s *server) internal(w http.ResponseWriter, r *http.Request, err error) {
	s.cfg.Logger.Error("Hospital request failed", err, watermill.LogFields{"path": r.URL.Path})
	s.fail(w, r, http.StatusInternalServerError, "The hospital store failed: "+err.Error())
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// sparkline is the points of an SVG polyline of counts, 120×24.
func sparkline(counts []int64) string {
	const width, height = 120.0, 22.0
	if len(counts) == 0 {
		return ""
	}
	var top int64 = 1
	for _, c := range counts {
		top = max(top, c)
	}
	step := width / float64(max(len(counts)-1, 1))
	var b strings.Builder
	for i, c := range counts {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%.1f,%.1f", float64(i)*step, 1+height-height*float64(c)/float64(top))
	}
	return b.String()
}

func sum(counts []int64) int64 {
	var n int64
	for _, c := range counts {
		n += c
	}
	return n
}

func when(t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return t.UTC().Format("2006-01-02 15:04:05Z")
}

func ago(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	d := time.Since(t)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", max(0, int(d.Seconds())))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	default:
		return fmt.Sprintf("%dd ago", int(d.Hours()/24))
	}
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}

// PayloadLimit is how much of a payload the letter page shows before its
// "show all" link.
const PayloadLimit = 64 << 10

// payloadView is a payload as the letter page shows it.
type payloadView struct {
	// Kind is "json" (pretty-printed), "text" or "binary" (a hex dump).
	Kind string
	Text string
	// Size is the payload's length in bytes; Truncated whether Text shows
	// only its first PayloadLimit bytes.
	Size      int
	Truncated bool
}

func viewPayload(p []byte, full bool) payloadView {
	v := payloadView{Size: len(p)}
	if len(p) > 0 && json.Valid(p) && (full || len(p) <= PayloadLimit) {
		var b bytes.Buffer
		if json.Indent(&b, p, "", "  ") == nil {
			v.Kind, v.Text = "json", b.String()
			return v
		}
	}
	shown := p
	if !full && len(p) > PayloadLimit {
		shown, v.Truncated = p[:PayloadLimit], true
	}
	if printable(shown) {
		v.Kind, v.Text = "text", strings.ToValidUTF8(string(shown), "\uFFFD")
		return v
	}
	v.Kind, v.Text = "binary", hex.Dump(shown)
	return v
}

// printable: UTF-8 text with no control characters but white space (a cut
// may split the last rune).
func printable(p []byte) bool {
	for len(p) > 0 {
		r, n := utf8.DecodeRune(p)
		if r == utf8.RuneError && n <= 1 {
			return len(p) < utf8.UTFMax && !utf8.FullRune(p)
		}
		if unicode.IsControl(r) && r != '\n' && r != '\r' && r != '\t' {
			return false
		}
		p = p[n:]
	}
	return true
}

var traceparentRE = regexp.MustCompile(`^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$`)

// traceID is the trace id of a W3C traceparent, or "".
func traceID(traceparent string) string {
	m := traceparentRE.FindStringSubmatch(strings.TrimSpace(traceparent))
	if m == nil || m[1] == strings.Repeat("0", 32) {
		return ""
	}
	return m[1]
}
