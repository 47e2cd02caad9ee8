// Package hello is the examples' shared program: a producer floods
// "Hello World" writes through a broker into a consumer that stores them in a
// sink. examples/kafka, examples/rabbitmq and examples/postgres each run it
// on their broker.
package hello

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// Hello is one valid write.
type Hello struct {
	UserID int64  `json:"user_id"`
	Msg    string `json:"msg"`
}

// MaxMsgLen is the longest valid msg, in characters.
const MaxMsgLen = 280

// ErrInvalid is wrapped by every Parse error: the payload breaks the rule,
// so no retry can fix it.
var ErrInvalid = errors.New("invalid hello payload")

// Payload encodes the message the producer sends for user n.
func Payload(n int) []byte {
	return fmt.Appendf(nil, `{"user_id":%d,"msg":"Hello World"}`, n)
}

// Parse applies the examples' rule: a JSON object with an integer user_id > 0
// and a non-empty string msg of at most 280 characters.
func Parse(payload []byte) (Hello, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(payload, &fields); err != nil {
		return Hello{}, fmt.Errorf("%w: not a JSON object: %w", ErrInvalid, err)
	}
	var h Hello
	raw, ok := fields["user_id"]
	if !ok {
		return Hello{}, fmt.Errorf("%w: user_id is missing", ErrInvalid)
	}
	id, err := strconv.ParseInt(string(bytes.TrimSpace(raw)), 10, 64)
	if err != nil {
		return Hello{}, fmt.Errorf("%w: user_id %s is not an integer", ErrInvalid, raw)
	}
	if id <= 0 {
		return Hello{}, fmt.Errorf("%w: user_id %d is not > 0", ErrInvalid, id)
	}
	h.UserID = id
	raw, ok = fields["msg"]
	if !ok {
		return Hello{}, fmt.Errorf("%w: msg is missing", ErrInvalid)
	}
	if err := json.Unmarshal(raw, &h.Msg); err != nil || !bytes.HasPrefix(bytes.TrimSpace(raw), []byte(`"`)) {
		return Hello{}, fmt.Errorf("%w: msg %s is not a string", ErrInvalid, raw)
	}
	if h.Msg == "" {
		return Hello{}, fmt.Errorf("%w: msg is empty", ErrInvalid)
	}
	if n := utf8.RuneCountInString(h.Msg); n > MaxMsgLen {
		return Hello{}, fmt.Errorf("%w: msg has %d characters, more than %d", ErrInvalid, n, MaxMsgLen)
	}
	return h, nil
}
