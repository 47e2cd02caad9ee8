package middleware_test

import (
	"errors"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/antidote-mq/antidote/middleware"
	"github.com/antidote-mq/antidote/poison"
)

func panickingHandler(msg *message.Message) ([]*message.Message, error) {
	var m map[string]int
	//lint:ignore SA5000 the runtime panic is what the test needs
	m["boom"]++ // nil map write: a real runtime panic, not a string
	return []*message.Message{msg}, nil
}

func TestRecoverTurnsPanicIntoPanicError(t *testing.T) {
	produced, err := middleware.Recover(panickingHandler)(message.NewMessage("u", nil))

	assert.Nil(t, produced)
	var p *poison.PanicError
	require.ErrorAs(t, err, &p)
	assert.Contains(t, p.Error(), "assignment to entry in nil map")
	assert.Contains(t, string(p.Stack), "panickingHandler", "the stack must show the panicking frame")
	assert.Equal(t, poison.ClassPermanent, poison.DefaultClassifier().Classify(err))
}

func TestRecoverKeepsPanickedError(t *testing.T) {
	errBoom := errors.New("boom")
	_, err := middleware.Recover(func(*message.Message) ([]*message.Message, error) {
		panic(errBoom)
	})(message.NewMessage("u", nil))
	assert.ErrorIs(t, err, errBoom)
}

func TestRecoverPassesThrough(t *testing.T) {
	errPlain := errors.New("plain")
	out := []*message.Message{message.NewMessage("o", nil)}
	produced, err := middleware.Recover(func(*message.Message) ([]*message.Message, error) {
		return out, errPlain
	})(message.NewMessage("u", nil))
	assert.Equal(t, out, produced)
	assert.Same(t, errPlain, err)
}
