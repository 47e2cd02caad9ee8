package web_test

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/websocket"

	"github.com/antidote-mq/antidote/internal/testenv"
)

// A minimal Chrome DevTools Protocol client: enough to drive headless
// Chromium through the hospital's pages (navigate, run a line of script,
// wait for the next page, take a screenshot) with no dependency beyond
// golang.org/x/net/websocket.

// findChromium returns the browser binary, or skips (fails with
// ANTIDOTE_REQUIRE_SERVICES=1) when there is none.
func findChromium(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("ANTIDOTE_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if testenv.Required() {
		t.Fatal("chromium is required (ANTIDOTE_REQUIRE_SERVICES=1) but not installed: apt-get install -y chromium (.ci/run does)")
	}
	t.Skip("chromium not installed (apt-get install -y chromium); set ANTIDOTE_REQUIRE_SERVICES=1 to make this a failure")
	return ""
}

// browser is a headless Chromium started for one test, and one page of it.
type browser struct {
	t       *testing.T
	ws      *websocket.Conn
	mu      sync.Mutex
	nextID  int
	pending map[int]chan cdpMessage
	events  chan cdpMessage
}

type cdpMessage struct {
	ID     int             `json:"id,omitempty"`
	Method string          `json:"method,omitempty"`
	Params json.RawMessage `json:"params,omitempty"`
	Result json.RawMessage `json:"result,omitempty"`
	Error  *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error,omitempty"`
}

// startBrowser starts Chromium with the machine's flags and attaches to
// its first page. The browser's whole process group is killed at cleanup.
func startBrowser(t *testing.T) *browser {
	t.Helper()
	bin := findChromium(t)
	cmd := exec.Command(bin, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
		"--user-data-dir="+t.TempDir(), "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
		"--remote-allow-origins=http://127.0.0.1", "--window-size=1200,800", "about:blank")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // the group this test started, by its id
		_ = cmd.Wait()
	})
	found := make(chan string, 1)
	var log strings.Builder
	var logMu sync.Mutex
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			logMu.Lock()
			log.WriteString(line + "\n")
			logMu.Unlock()
			if u, ok := strings.CutPrefix(line, "DevTools listening on "); ok {
				found <- u
			}
		}
	}()
	var browserURL string
	select {
	case browserURL = <-found:
	case <-time.After(60 * time.Second):
		logMu.Lock()
		defer logMu.Unlock()
		t.Fatalf("chromium did not open its DevTools port within 60s:\n%s", log.String())
	}
	// ws://127.0.0.1:PORT/devtools/browser/ID → the page targets at /json/list.
	host := strings.SplitN(strings.TrimPrefix(browserURL, "ws://"), "/", 2)[0]
	var targets []struct {
		Type, URL            string
		WebSocketDebuggerURL string `json:"webSocketDebuggerUrl"`
	}
	resp, err := http.Get("http://" + host + "/json/list")
	if err != nil {
		t.Fatal(err)
	}
	err = json.NewDecoder(resp.Body).Decode(&targets)
	_ = resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	pageURL := ""
	for _, tg := range targets {
		if tg.Type == "page" {
			pageURL = tg.WebSocketDebuggerURL
			break
		}
	}
	if pageURL == "" {
		t.Fatalf("chromium has no page target: %+v", targets)
	}
	ws, err := websocket.Dial(pageURL, "", "http://127.0.0.1")
	if err != nil {
		t.Fatalf("connect to the page's DevTools: %v", err)
	}
	t.Cleanup(func() { _ = ws.Close() })
	b := &browser{t: t, ws: ws, pending: map[int]chan cdpMessage{}, events: make(chan cdpMessage, 1024)}
	go b.read()
	b.call("Page.enable", nil, nil)
	b.call("Runtime.enable", nil, nil)
	b.call("Emulation.setDeviceMetricsOverride", map[string]any{"width": 1200, "height": 800, "deviceScaleFactor": 1, "mobile": false}, nil)
	return b
}

func (b *browser) read() {
	for {
		var data []byte
		if err := websocket.Message.Receive(b.ws, &data); err != nil {
			b.mu.Lock()
			for id, ch := range b.pending {
				close(ch)
				delete(b.pending, id)
			}
			b.mu.Unlock()
			close(b.events)
			return
		}
		var m cdpMessage
		if err := json.Unmarshal(data, &m); err != nil {
			continue
		}
		if m.ID != 0 {
			b.mu.Lock()
			ch := b.pending[m.ID]
			delete(b.pending, m.ID)
			b.mu.Unlock()
			if ch != nil {
				ch <- m
			}
			continue
		}
		select {
		case b.events <- m:
		default: // nobody waits for that many events
		}
	}
}

// call sends a command and decodes its result into result (unless nil).
func (b *browser) call(method string, params, result any) {
	b.t.Helper()
	b.mu.Lock()
	b.nextID++
	id := b.nextID
	ch := make(chan cdpMessage, 1)
	b.pending[id] = ch
	b.mu.Unlock()
	msg, _ := json.Marshal(map[string]any{"id": id, "method": method, "params": orEmpty(params)})
	if err := websocket.Message.Send(b.ws, string(msg)); err != nil {
		b.t.Fatalf("%s: %v", method, err)
	}
	var m cdpMessage
	var ok bool
	select {
	case m, ok = <-ch:
	case <-time.After(60 * time.Second):
		b.t.Fatalf("%s: no answer within 60s", method)
	}
	if !ok {
		b.t.Fatalf("%s: the browser closed the connection", method)
	}
	if m.Error != nil {
		b.t.Fatalf("%s: %s (%d)", method, m.Error.Message, m.Error.Code)
	}
	if result != nil {
		if err := json.Unmarshal(m.Result, result); err != nil {
			b.t.Fatalf("%s: %v", method, err)
		}
	}
}

func orEmpty(p any) any {
	if p == nil {
		return map[string]any{}
	}
	return p
}

// drain forgets the events received so far.
func (b *browser) drain() {
	for {
		select {
		case <-b.events:
		default:
			return
		}
	}
}

// waitLoad waits for the next page's load event.
func (b *browser) waitLoad() {
	b.t.Helper()
	deadline := time.After(60 * time.Second)
	for {
		select {
		case m, ok := <-b.events:
			if !ok {
				b.t.Fatal("the browser closed the connection")
			}
			if m.Method == "Page.loadEventFired" {
				return
			}
		case <-deadline:
			b.t.Fatal("no page loaded within 60s")
		}
	}
}

// navigate opens url and waits for it to load.
func (b *browser) navigate(url string) {
	b.t.Helper()
	b.drain()
	var res struct {
		ErrorText string `json:"errorText"`
	}
	b.call("Page.navigate", map[string]any{"url": url}, &res)
	if res.ErrorText != "" {
		b.t.Fatalf("navigate to %s: %s", url, res.ErrorText)
	}
	b.waitLoad()
}

// eval runs a JavaScript expression in the page and returns its value.
func (b *browser) eval(expr string) any {
	b.t.Helper()
	var res struct {
		Result struct {
			Value any `json:"value"`
		} `json:"result"`
		ExceptionDetails *struct {
			Text      string `json:"text"`
			Exception struct {
				Description string `json:"description"`
			} `json:"exception"`
		} `json:"exceptionDetails"`
	}
	b.call("Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true}, &res)
	if res.ExceptionDetails != nil {
		b.t.Fatalf("eval %s: %s %s", expr, res.ExceptionDetails.Text, res.ExceptionDetails.Exception.Description)
	}
	return res.Result.Value
}

// click clicks the element selector finds and waits for the page it
// leads to.
func (b *browser) click(selector string) {
	b.t.Helper()
	b.drain()
	sel, _ := json.Marshal(selector)
	if ok := b.eval(fmt.Sprintf(`(() => { const e = document.querySelector(%s); if (!e) return false; e.click(); return true })()`, sel)); ok != true {
		b.t.Fatalf("nothing on %s matches %s:\n%s", b.location(), selector, b.text())
	}
	b.waitLoad()
}

// fill sets the value of the input selector finds.
func (b *browser) fill(selector, value string) {
	b.t.Helper()
	sel, _ := json.Marshal(selector)
	val, _ := json.Marshal(value)
	if ok := b.eval(fmt.Sprintf(`(() => { const e = document.querySelector(%s); if (!e) return false; e.value = %s; return true })()`, sel, val)); ok != true {
		b.t.Fatalf("no input %s on %s", selector, b.location())
	}
}

func (b *browser) text() string {
	s, _ := b.eval(`document.body.innerText`).(string)
	return s
}

func (b *browser) location() string {
	s, _ := b.eval(`location.pathname + location.search`).(string)
	return s
}

// screenshot writes the page as a PNG to path.
func (b *browser) screenshot(path string) {
	b.t.Helper()
	var res struct {
		Data string `json:"data"`
	}
	b.call("Page.captureScreenshot", map[string]any{"format": "png"}, &res)
	png, err := base64.StdEncoding.DecodeString(res.Data)
	if err != nil {
		b.t.Fatal(err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
}
