package hello

import (
	"errors"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	long := strings.Repeat("é", MaxMsgLen)
	cases := []struct {
		in string
		ok bool
	}{
		{`{"user_id":1,"msg":"Hello World"}`, true},
		{`{"user_id":7,"msg":"` + long + `"}`, true},
		{`{"user_id":7,"msg":"` + long + `x"}`, false},
		{`{"user_id":1,"msg":"Hello World"`, false},
		{`{"user_id":"1","msg":"Hello World"}`, false},
		{`{"user_id":1.5,"msg":"Hello World"}`, false},
		{`{"user_id":0,"msg":"Hello World"}`, false},
		{`{"user_id":-3,"msg":"Hello World"}`, false},
		{`{"user_id":1,"msg":""}`, false},
		{`{"user_id":1,"msg":42}`, false},
		{`{"user_id":1,"msg":null}`, false},
		{`{"msg":"Hello World"}`, false},
		{`{"user_id":1}`, false},
		{`[1,2]`, false},
		{``, false},
		{"\xff\xfe", false},
	}
	for _, c := range cases {
		_, err := Parse([]byte(c.in))
		if (err == nil) != c.ok {
			t.Errorf("Parse(%q) err = %v, want ok=%v", c.in, err, c.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("Parse(%q) error does not wrap ErrInvalid", c.in)
		}
	}
	if _, err := Parse(Payload(12)); err != nil {
		t.Errorf("the producer's own payload is invalid: %v", err)
	}
}
