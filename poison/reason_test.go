package poison_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/antidote-mq/antidote/poison"
)

func TestInferReason(t *testing.T) {
	base := errors.New("boom")
	assert.Equal(t, poison.Reason(""), poison.InferReason(nil))
	assert.Equal(t, poison.Reason(""), poison.InferReason(base), "a plain error says nothing: the caller decides")
	assert.Equal(t, poison.Reason(""), poison.InferReason(poison.Permanent(base)))
	assert.Equal(t, poison.ReasonUndecodable, poison.InferReason(fmt.Errorf("x: %w", poison.WithReason(base, poison.ReasonUndecodable))))
	panicked := poison.NewPanicError("nil map")
	assert.Equal(t, poison.ReasonPanic, poison.InferReason(fmt.Errorf("handler: %w", panicked)))
	assert.Equal(t, poison.ReasonFloodGuard, poison.InferReason(poison.WithReason(panicked, poison.ReasonFloodGuard)),
		"an explicit reason wins over the panic")
}
