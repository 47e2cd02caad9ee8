// Package router builds a Watermill message.Router with Antidote's standard
// middleware stack from one Config. Handlers stay plain Watermill handlers:
// register them on the returned router as usual.
package router

import (
	"errors"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
)

// Config configures New.
type Config struct {
	// CloseTimeout is how long Close waits for running handlers. Default 30s.
	// Messages still in flight after it are not acked, so they are delivered
	// again: nothing is lost, some work may repeat.
	CloseTimeout time.Duration

	// Logger receives the router's logs. Default: none.
	Logger watermill.LoggerAdapter
}

func (c *Config) setDefaults() {
	if c.CloseTimeout == 0 {
		c.CloseTimeout = 30 * time.Second
	}
	if c.Logger == nil {
		c.Logger = watermill.NopLogger{}
	}
}

// Validate reports a config that cannot work.
func (c Config) Validate() error {
	var errs []error
	if c.CloseTimeout < 0 {
		errs = append(errs, fmt.Errorf("router: CloseTimeout %s is negative; use a positive duration such as 30s", c.CloseTimeout))
	}
	return errors.Join(errs...)
}

// New builds a router with the standard stack installed as router-level
// middleware, so it wraps every handler added later.
func New(cfg Config) (*message.Router, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	r, err := message.NewRouter(message.RouterConfig{CloseTimeout: cfg.CloseTimeout}, cfg.Logger)
	if err != nil {
		return nil, fmt.Errorf("router: %w", err)
	}
	r.AddMiddleware(middleware.Recoverer)
	return r, nil
}
