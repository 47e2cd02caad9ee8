package fingerprint

import "strings"

// libraryPackages are not application code: a panic's first frame in them
// says where the panic was recovered or re-raised, not where the bug is.
// Antidote's own library packages are listed one by one, so its examples,
// commands and tests count as application code.
var libraryPackages = []string{
	"github.com/ThreeDotsLabs/",
	"github.com/antidote-mq/antidote",
	"github.com/antidote-mq/antidote/poison",
	"github.com/antidote-mq/antidote/middleware",
	"github.com/antidote-mq/antidote/router",
	"github.com/antidote-mq/antidote/adapters",
	"github.com/antidote-mq/antidote/telemetry",
	"github.com/antidote-mq/antidote/dlq",
	"github.com/antidote-mq/antidote/idempotency",
	"github.com/antidote-mq/antidote/claimcheck",
	"github.com/antidote-mq/antidote/throttle",
	"github.com/antidote-mq/antidote/pgstore",
	"github.com/antidote-mq/antidote/redisstore",
	"github.com/antidote-mq/antidote/fingerprint",
}

// stdRoots are the first path elements of the standard library's packages
// (Go 1.26). A module path without a dot that is not among them ("shop",
// "main") is application code.
var stdRoots = map[string]bool{}

func init() {
	for _, r := range strings.Fields(`archive bufio builtin bytes cmp compress container context crypto
		database debug embed encoding errors expvar flag fmt go hash html image index internal io iter
		log maps math mime net os path plugin reflect regexp runtime slices sort strconv strings structs
		sync syscall testing text time unicode unique unsafe vendor weak`) {
		stdRoots[r] = true
	}
}

// FirstAppFrame returns the first function on stack that is application
// code: not the standard library or Go's runtime, not Watermill, not Antidote's library
// packages, not o.LibraryPrefixes. It reads the runtime/debug.Stack format
// and the "%+v" stacks of github.com/pkg/errors-style errors (a function
// line, then its file on a tab-indented line). The result is the function
// name without arguments, file or line, or "" when no frame qualifies.
func (o Options) FirstAppFrame(stack string) string {
	for _, line := range strings.Split(stack, "\n") {
		line = strings.TrimRight(line, "\r")
		if line == "" || line[0] == '\t' || line[0] == ' ' ||
			strings.HasPrefix(line, "goroutine ") || strings.HasPrefix(line, "created by ") ||
			strings.HasPrefix(line, "panic: ") || strings.HasPrefix(line, "[recovered") {
			continue
		}
		fn := funcName(line)
		if fn == "" || o.isLibrary(fn) {
			continue
		}
		return fn
	}
	return ""
}

// funcName strips a frame line's arguments: "pkg.(*T).M(0x1, ...)" is
// "pkg.(*T).M".
func funcName(line string) string {
	line = strings.TrimSpace(line)
	if strings.HasSuffix(line, ")") {
		if i := strings.LastIndexByte(line, '('); i > 0 {
			line = line[:i]
		}
	}
	// Frames of inlined or generic functions end in "...": keep the name.
	if strings.ContainsAny(line, " \t") {
		return ""
	}
	return line
}

// pkgPath is the package of a function name: "a.b/c/d.F.func1" is "a.b/c/d".
func pkgPath(fn string) string {
	slash := strings.LastIndexByte(fn, '/')
	dot := strings.IndexByte(fn[slash+1:], '.')
	if dot < 0 {
		return fn
	}
	return fn[:slash+1+dot]
}

func (o Options) isLibrary(fn string) bool {
	pkg := pkgPath(fn)
	first, _, _ := strings.Cut(pkg, "/")
	if !strings.Contains(fn, ".") || stdRoots[first] && !strings.Contains(first, ".") {
		return true // the standard library, the runtime, panic itself
	}
	for _, p := range libraryPackages {
		if strings.HasSuffix(p, "/") && strings.HasPrefix(pkg, p) || pkg == p {
			return true
		}
	}
	for _, p := range o.LibraryPrefixes {
		if p != "" && strings.HasPrefix(fn, p) {
			return true
		}
	}
	return false
}
