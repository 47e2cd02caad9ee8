package poisontest_test

// A copy of the examples' validity rule (examples/internal/hello/payload.go
// Parse); that package is internal to examples/ and cannot be imported here.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"
)

type helloRow struct {
	UserID int64  `json:"user_id"`
	Msg    string `json:"msg"`
}

const maxMsgLen = 280

var errInvalid = errors.New("invalid hello payload")

func helloPayload(n int) []byte {
	return fmt.Appendf(nil, `{"user_id":%d,"msg":"Hello World"}`, n)
}

func parseHello(payload []byte) (helloRow, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(payload, &fields); err != nil {
		return helloRow{}, fmt.Errorf("%w: not a JSON object: %w", errInvalid, err)
	}
	var h helloRow
	raw, ok := fields["user_id"]
	if !ok {
		return helloRow{}, fmt.Errorf("%w: user_id is missing", errInvalid)
	}
	id, err := strconv.ParseInt(string(bytes.TrimSpace(raw)), 10, 64)
	if err != nil {
		return helloRow{}, fmt.Errorf("%w: user_id %s is not an integer", errInvalid, raw)
	}
	if id <= 0 {
		return helloRow{}, fmt.Errorf("%w: user_id %d is not > 0", errInvalid, id)
	}
	h.UserID = id
	raw, ok = fields["msg"]
	if !ok {
		return helloRow{}, fmt.Errorf("%w: msg is missing", errInvalid)
	}
	if err := json.Unmarshal(raw, &h.Msg); err != nil || !bytes.HasPrefix(bytes.TrimSpace(raw), []byte(`"`)) {
		return helloRow{}, fmt.Errorf("%w: msg %s is not a string", errInvalid, raw)
	}
	if h.Msg == "" {
		return helloRow{}, fmt.Errorf("%w: msg is empty", errInvalid)
	}
	if n := utf8.RuneCountInString(h.Msg); n > maxMsgLen {
		return helloRow{}, fmt.Errorf("%w: msg has %d characters, more than %d", errInvalid, n, maxMsgLen)
	}
	return h, nil
}
