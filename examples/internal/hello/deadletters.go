package hello

import (
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote"
)

// Letter is one line of --dlq-out. Payload holds the bytes as text when
// they are valid UTF-8; otherwise PayloadBase64 holds them exactly.
type Letter struct {
	UUID          string            `json:"uuid"`
	Payload       string            `json:"payload"`
	PayloadBase64 []byte            `json:"payload_base64,omitempty"`
	Metadata      map[string]string `json:"metadata"`
}

// letterPublisher is the DLQ's publisher: it counts what reaches the DLQ
// and appends it to --dlq-out, after the broker accepted it.
type letterPublisher struct {
	message.Publisher
	onLetter func(topic string, m *message.Message)
	mu       sync.Mutex
	out      *os.File
}

func newLetterPublisher(p message.Publisher, path string, onLetter func(topic string, m *message.Message)) (*letterPublisher, error) {
	lp := &letterPublisher{Publisher: p, onLetter: onLetter}
	if path != "" {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return nil, fmt.Errorf("--dlq-out: %w", err)
		}
		lp.out = f
	}
	return lp, nil
}

// CheckName forwards to the broker's publisher, so router.New checks the
// DLQ topic names.
func (p *letterPublisher) CheckName(name string) error {
	if c, ok := p.Publisher.(antidote.NameChecker); ok {
		return c.CheckName(name)
	}
	return nil
}

func (p *letterPublisher) Publish(topic string, msgs ...*message.Message) error {
	if err := p.Publisher.Publish(topic, msgs...); err != nil {
		return err
	}
	for _, m := range msgs {
		p.onLetter(topic, m)
		if p.out != nil {
			if err := p.write(m); err != nil {
				return fmt.Errorf("--dlq-out: %w", err)
			}
		}
	}
	return nil
}

func (p *letterPublisher) write(m *message.Message) error {
	l := Letter{UUID: m.UUID, Metadata: m.Metadata}
	if utf8.Valid(m.Payload) {
		l.Payload = string(m.Payload)
	} else {
		l.PayloadBase64 = m.Payload
	}
	line, err := json.Marshal(l)
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	_, err = p.out.Write(append(line, '\n'))
	return err
}

// Close closes --dlq-out, not the broker's publisher.
func (p *letterPublisher) Close() error {
	if p.out != nil {
		return p.out.Close()
	}
	return nil
}
