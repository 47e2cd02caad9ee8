package fingerprint_test

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/antidote-mq/antidote/fingerprint"
)

type corpusLetter struct {
	Bug         string `json:"bug"`
	Handler     string `json:"handler"`
	Reason      string `json:"reason"`
	ErrorType   string `json:"error_type"`
	Error       string `json:"error"`
	Stack       string `json:"stack"`
	Payload     string `json:"payload"`
	ContentType string `json:"content_type"`
	Producer    string `json:"producer"`
}

// The corpus (testdata/corpus.json) labels each letter with the bug that
// made it. Letters of one bug differ in ids, numbers, times, hosts,
// goroutines, addresses and line numbers; letters of different bugs may
// share a handler, a message, a payload or a producer. The grouping must
// follow the labels exactly both ways.
func TestCorpusGroupsByBug(t *testing.T) {
	data, err := os.ReadFile("testdata/corpus.json")
	if err != nil {
		t.Fatal(err)
	}
	var corpus []corpusLetter
	if err := json.Unmarshal(data, &corpus); err != nil {
		t.Fatal(err)
	}
	if len(corpus) < 30 {
		t.Fatalf("corpus has %d letters; it should exercise many bugs", len(corpus))
	}
	byBug := map[string]fingerprint.Fingerprint{}
	byID := map[string]string{}
	for i, l := range corpus {
		f := fingerprint.Of(fingerprint.Input{
			Handler: l.Handler, Reason: l.Reason, ErrorType: l.ErrorType, Error: l.Error,
			Stack: l.Stack, Payload: []byte(l.Payload), ContentType: l.ContentType, Producer: l.Producer,
		})
		if len(f.ID) != 16 {
			t.Fatalf("letter %d: ID %q is not 16 hex digits", i, f.ID)
		}
		if prev, ok := byBug[l.Bug]; ok && prev.ID != f.ID {
			t.Errorf("bug %s split into two groups:\n  %+v\n  %+v", l.Bug, prev, f)
		}
		byBug[l.Bug] = f
		if other, ok := byID[f.ID]; ok && other != l.Bug {
			t.Errorf("bugs %s and %s share group %s: %+v", other, l.Bug, f.ID, f)
		}
		byID[f.ID] = l.Bug
	}
	if len(byID) != len(byBug) {
		t.Errorf("%d bugs made %d groups", len(byBug), len(byID))
	}
}

func TestShape(t *testing.T) {
	for _, c := range []struct{ payload, contentType, want string }{
		{`{"b":1,"a":{"x":"s","y":[1,2]},"c":null,"d":true,"e":[],"f":{}}`, "", "json:a.x:string,a.y[]:number,b:number,c:null,d:bool,e:[],f:{}"},
		{`[{"qty":1},{"qty":2,"sku":"x"}]`, "", "json:[].qty:number,[].sku:string"},
		{`{"a":[[],[1]],"b":[],"c":{"d":{},"e":{"f":1}}}`, "", "json:a[][]:number,b:[],c.d:{},c.e.f:number"},
		{`{"users":{"42":{"n":"a"},"7f3c9a2e-1b4d-4c8e-9f00-123456789abc":{"n":"b"}}}`, "", "json:users.<n>.n:string,users.<uuid>.n:string"},
		{`"just a string"`, "application/json", "json::string"},
		{`{"a":1} trailing`, "", "invalid-json:<1KiB"},
		{`{"a":`, "", "invalid-json:<1KiB"},
		{"a,b\n1,2\n", "text/csv; charset=utf-8", "text/csv:<1KiB"},
		{"plain words", "", "text:<1KiB"},
		{"\xff\xfe\x00", "", "binary:<1KiB"},
		{"", "", "empty"},
		{strings.Repeat("x", 2048), "", "text:1KiB-64KiB"},
	} {
		if got := fingerprint.Shape([]byte(c.payload), c.contentType); got != c.want {
			t.Errorf("Shape(%q, %q)\n got %q\nwant %q", c.payload, c.contentType, got, c.want)
		}
	}
}

// A hostile payload costs bounded work: nesting past the limit is
// invalid-json, not a stack overflow; a huge flat document ends in +more.
func TestShapeHostile(t *testing.T) {
	deep := strings.Repeat("[", 100000) + strings.Repeat("]", 100000)
	if got := fingerprint.Shape([]byte(deep), ""); got != "invalid-json:64KiB-1MiB" {
		t.Errorf("deep nesting: %q", got)
	}
	var b strings.Builder
	b.WriteString("{")
	for i := 0; i < 1000; i++ {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString(`"k` + strings.Repeat("z", i%50) + string(rune('a'+i%26)) + `":1`)
	}
	b.WriteString("}")
	got := fingerprint.Shape([]byte(b.String()), "")
	if !strings.HasSuffix(got, ",+more") || strings.Count(got, ",") != 256 {
		t.Errorf("1000 keys: %d paths, suffix %q", strings.Count(got, ","), got[max(0, len(got)-10):])
	}
	long := `[` + strings.Repeat(`1,`, 300000) + `1]`
	if got := fingerprint.Shape([]byte(long), ""); got != "json:[]:number,+more" {
		t.Errorf("300000 elements: %q", got)
	}
}

func TestFirstAppFrame(t *testing.T) {
	stack := "goroutine 7 [running]:\nruntime/debug.Stack()\n\t/usr/local/go/src/runtime/debug/stack.go:26 +0x5e\n" +
		"github.com/antidote-mq/antidote/middleware.(*Recoverer).Middleware.func1.1()\n\t/x/recover.go:41 +0x65\n" +
		"panic({0x7f3a20, 0xc0001e0a0})\n\t/usr/local/go/src/runtime/panic.go:787 +0x132\n" +
		"shop/orders.(*Service).handle(0xc0000, {0x1, 0x2})\n\t/app/orders/handler.go:48 +0x1d\n" +
		"main.main()\n\t/app/main.go:10 +0x1\n"
	if got := fingerprint.Of(fingerprint.Input{Stack: stack}).Frame; got != "shop/orders.(*Service).handle" {
		t.Errorf("frame %q", got)
	}
	if got := (fingerprint.Options{LibraryPrefixes: []string{"shop/orders."}}).FirstAppFrame(stack); got != "main.main" {
		t.Errorf("with shop/orders as a library: frame %q", got)
	}
	// pkg/errors' %+v stack: function, then its file.
	if got := fingerprint.Of(fingerprint.Input{Stack: "github.com/pkg/errors.New\n\t/x/errors.go:1\nexample.com/svc.load\n\t/app/svc.go:9\n"}).Frame; got != "github.com/pkg/errors.New" {
		// pkg/errors is not on the library list: it is the first frame.
		t.Errorf("frame %q", got)
	}
	// Antidote's own tests and examples are application code.
	if got := fingerprint.Of(fingerprint.Input{Stack: "github.com/antidote-mq/antidote/examples/internal/scenario.Handle(0x1)\n\t/x.go:1\n"}).Frame; got != "github.com/antidote-mq/antidote/examples/internal/scenario.Handle" {
		t.Errorf("frame %q", got)
	}
	if got := fingerprint.Of(fingerprint.Input{Stack: "runtime/debug.Stack()\n\t/x.go:1\n"}).Frame; got != "" {
		t.Errorf("a stack with no application frame: %q", got)
	}
}

// The producer part is the service: its instances (a host and pid, a pod,
// a StatefulSet ordinal) share a group, two services do not.
func TestProducerIsTheService(t *testing.T) {
	in := fingerprint.Input{Handler: "charge", Reason: "permanent", Error: "card declined"}
	ids := map[string]string{}
	for _, p := range []string{"billing/host-a-101", "billing/host-b-202", "billing/orders-7d9f8b6c5-x2k4p", "billing/worker-0", " billing / worker-1 ", "billing"} {
		in.Producer = p
		f := fingerprint.Of(in)
		if f.Producer != "billing" {
			t.Errorf("producer %q: part %q, want billing", p, f.Producer)
		}
		ids[f.ID] = p
	}
	if len(ids) != 1 {
		t.Errorf("one service's instances made %d groups: %v", len(ids), ids)
	}
	in.Producer = "shipping/host-a-101"
	if f := fingerprint.Of(in); ids[f.ID] != "" || f.Producer != "shipping" {
		t.Errorf("shipping shares billing's group or reads %q", f.Producer)
	}
	for p, want := range map[string]string{"": "", "relay-1": "relay-1", "/x": "", "a/b/c": "a"} {
		if got := fingerprint.ProducerService(p); got != want {
			t.Errorf("ProducerService(%q) = %q, want %q", p, got, want)
		}
	}
}
