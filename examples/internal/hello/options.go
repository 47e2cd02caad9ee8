package hello

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"time"
)

// Options are the examples' flags (see DESIGN.md, "Examples contract").
type Options struct {
	Role     string
	Messages int
	Topic    string
	Idle     time.Duration
	JSON     bool
	Config   string
}

// ParseFlags reads args (without the program name).
func ParseFlags(name string, args []string, stderr io.Writer) (Options, error) {
	var o Options
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.Role, "role", "all", "all (producer and consumer in one process), producer or consumer")
	fs.IntVar(&o.Messages, "messages", 1000, "how many messages the producer publishes")
	fs.StringVar(&o.Topic, "topic", "hello", "topic (queue) to publish to and consume from")
	fs.DurationVar(&o.Idle, "idle", 5*time.Second, "a consumer exits when nothing new arrived for this long")
	fs.BoolVar(&o.JSON, "json", false, "print the summary as one JSON object, the last line on stdout")
	fs.StringVar(&o.Config, "config", "", "adapters YAML config file (env ANTIDOTE_* overrides it)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q; every option is a --flag", fs.Arg(0))
	}
	return o, o.Validate()
}

// Validate names the flag that is wrong and what to use instead.
func (o Options) Validate() error {
	var errs []error
	switch o.Role {
	case "all", "producer", "consumer":
	default:
		errs = append(errs, fmt.Errorf("--role %q: use all, producer or consumer", o.Role))
	}
	if o.Messages < 0 {
		errs = append(errs, fmt.Errorf("--messages %d: use 0 or more", o.Messages))
	}
	if o.Topic == "" {
		errs = append(errs, errors.New("--topic is empty: name a topic"))
	}
	if o.Idle <= 0 {
		errs = append(errs, fmt.Errorf("--idle %s: use a positive duration such as 5s", o.Idle))
	}
	return errors.Join(errs...)
}
