package fingerprint

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"sort"
	"strings"
	"unicode/utf8"
)

// Bounds on the work Shape does for one payload, so a hostile letter (a huge
// or deeply nested document) costs a bounded amount of time and memory.
const (
	maxShapeDepth  = 64
	maxShapeTokens = 200_000
	maxShapePaths  = 256
)

var errTooDeep = errors.New("nested too deep")

// Shape describes a payload by its structure, not its values:
//
//   - a JSON document: "json:" and the sorted set of its key paths with
//     their value types, e.g. "json:customer.id:string,items[].qty:number".
//     Array elements share the path "[]"; object keys that are data (numbers,
//     UUIDs) are normalized like messages, so {"users":{"42":…}} and
//     {"users":{"43":…}} have one shape. Empty objects and arrays show as
//     {} and []. Past 256 paths the set ends with "+more".
//   - a payload that starts like JSON but does not parse (or nests deeper
//     than 64): "invalid-json:" and its size class;
//   - anything else: its media type (from contentType, else "text" for
//     UTF-8, else "binary") and its size class, e.g. "text/csv:1KiB-64KiB";
//   - no bytes: "empty".
//
// Size classes: "<1KiB", "1KiB-64KiB", "64KiB-1MiB", ">=1MiB".
func Shape(payload []byte, contentType string) string {
	if len(payload) == 0 {
		return "empty"
	}
	media := ""
	if contentType != "" {
		if mt, _, err := mime.ParseMediaType(contentType); err == nil {
			media = mt
		}
	}
	trimmed := bytes.TrimLeft(payload, " \t\r\n")
	looksJSON := len(trimmed) > 0 && (trimmed[0] == '{' || trimmed[0] == '[')
	if looksJSON || media == "application/json" || strings.HasSuffix(media, "+json") {
		if s, ok := jsonShape(payload); ok {
			return s
		}
		if looksJSON {
			return "invalid-json:" + sizeClass(len(payload))
		}
	}
	switch {
	case media != "":
	case utf8.Valid(payload):
		media = "text"
	default:
		media = "binary"
	}
	return media + ":" + sizeClass(len(payload))
}

func sizeClass(n int) string {
	switch {
	case n < 1<<10:
		return "<1KiB"
	case n < 64<<10:
		return "1KiB-64KiB"
	case n < 1<<20:
		return "64KiB-1MiB"
	}
	return ">=1MiB"
}

type shaper struct {
	dec    *json.Decoder
	paths  map[string]struct{}
	tokens int
	more   bool
}

func jsonShape(payload []byte) (string, bool) {
	s := &shaper{dec: json.NewDecoder(bytes.NewReader(payload)), paths: map[string]struct{}{}}
	s.dec.UseNumber()
	if err := s.walk("", 0); err != nil {
		return "", false
	}
	if !s.more {
		// One document, nothing after it.
		if _, err := s.dec.Token(); err != io.EOF {
			return "", false
		}
	}
	list := make([]string, 0, len(s.paths))
	for p := range s.paths {
		if !s.covered(p) {
			list = append(list, p)
		}
	}
	sort.Strings(list)
	out := "json:" + strings.Join(list, ",")
	if s.more {
		out += ",+more"
	}
	return out, true
}

func (s *shaper) add(path, typ string) {
	if len(s.paths) >= maxShapePaths {
		if _, ok := s.paths[path+":"+typ]; !ok {
			s.more = true
		}
		return
	}
	s.paths[path+":"+typ] = struct{}{}
}

// walk reads one value at path. Past maxShapeTokens it stops reading and
// marks the shape as cut (s.more), returning nil.
func (s *shaper) walk(path string, depth int) error {
	if depth > maxShapeDepth {
		return errTooDeep
	}
	if s.tokens++; s.tokens > maxShapeTokens {
		s.more = true
		return nil
	}
	tok, err := s.dec.Token()
	if err != nil {
		return err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			empty := true
			for s.dec.More() {
				empty = false
				k, err := s.dec.Token()
				if err != nil {
					return err
				}
				key, _ := k.(string)
				if err := s.walk(joinPath(path, NormalizeMessage(key)), depth+1); err != nil || s.more && s.tokens > maxShapeTokens {
					return err
				}
			}
			if empty {
				s.add(path, "{}")
			}
		case '[':
			empty := true
			for s.dec.More() {
				empty = false
				if err := s.walk(path+"[]", depth+1); err != nil || s.more && s.tokens > maxShapeTokens {
					return err
				}
			}
			if empty {
				s.add(path, "[]")
			}
		default:
			return errors.New("unexpected delimiter")
		}
		_, err := s.dec.Token() // the closing delimiter
		return err
	case string:
		s.add(path, "string")
	case json.Number:
		s.add(path, "number")
	case bool:
		s.add(path, "bool")
	case nil:
		s.add(path, "null")
	}
	return nil
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// covered reports whether p marks an empty array or object ("a:[]", "a:{}")
// whose path has elements or keys elsewhere in the document: the elements
// already say what it holds, and one empty array among full ones must not
// change the shape.
func (s *shaper) covered(p string) bool {
	var prefix string
	switch {
	case strings.HasSuffix(p, ":[]"):
		prefix = strings.TrimSuffix(p, ":[]") + "[]"
	case strings.HasSuffix(p, ":{}"):
		prefix = strings.TrimSuffix(p, ":{}")
		if prefix != "" {
			prefix += "."
		}
	default:
		return false
	}
	for q := range s.paths {
		if q != p && strings.HasPrefix(q, prefix) {
			return true
		}
	}
	return false
}
