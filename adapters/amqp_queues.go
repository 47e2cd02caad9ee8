package adapters

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"regexp"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wamqp "github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/antidote-mq/antidote"
)

// ErrQueueArguments is wrapped by the error of a queue declaration
// RabbitMQ refused (406 PRECONDITION_FAILED) because the queue exists with
// other arguments than this process declares: its type (amqp.quorum) or
// x-single-active-consumer (amqp.single_active_consumer). A queue's
// arguments are fixed when it is first declared; the error names the
// queue, the argument and the settings that would match.
var ErrQueueArguments = errors.New("amqp: queue exists with other arguments")

const (
	amqpSingleActiveArg    = "x-single-active-consumer"
	amqpDeliveryLimitArg   = "x-delivery-limit"
	amqpOrderDeliveryLimit = math.MaxInt32
)

// amqpQueueArguments are the arguments of a topic's queue. A quorum queue
// with SingleActiveConsumer also gets x-delivery-limit, as high as it
// goes: without a limit, RabbitMQ 3.x puts a message nacked with requeue
// at the tail of a quorum queue (behind the ones after it); with one it
// returns it to the head, as RabbitMQ 4 does by default (whose default
// limit, 20, would drop a message a breaker held 20 times).
func amqpQueueArguments(a AMQPConfig) amqp.Table {
	args := amqp.Table{}
	if a.Quorum {
		args["x-queue-type"] = "quorum"
	}
	if a.SingleActiveConsumer {
		args[amqpSingleActiveArg] = true
		if a.Quorum {
			args[amqpDeliveryLimitArg] = int64(amqpOrderDeliveryLimit)
		}
	}
	if len(args) == 0 {
		return nil
	}
	return args
}

// amqpDLQArguments are the arguments of a DLQ queue: a topic's, without
// what SingleActiveConsumer adds. The hospital reads a DLQ with basic.get
// (dlq's ward), which RabbitMQ refuses on a quorum queue with
// x-single-active-consumer (405 RESOURCE_LOCKED); the order of letters
// means nothing (each is treated by itself); and a DLQ holding letters
// need not be deleted to change the setting.
func amqpDLQArguments(args amqp.Table) amqp.Table {
	if _, ok := args[amqpSingleActiveArg]; !ok {
		return args
	}
	out := maps.Clone(args)
	delete(out, amqpSingleActiveArg)
	delete(out, amqpDeliveryLimitArg)
	if len(out) == 0 {
		return nil
	}
	return out
}

// amqpIsDLQ reports whether topic is named as a DLQ by antidote.DLQTopic.
// A DLQ named otherwise (DeadLetterConfig.Topic) is known by its letters
// and by LetterSubscriber.
func amqpIsDLQ(topic string) bool { return strings.HasSuffix(topic, antidote.DeadLetterSuffix) }

func amqpSingleActive(args amqp.Table) bool {
	v, _ := args[amqpSingleActiveArg].(bool)
	return v
}

// amqpTopology declares a topic's queue as watermill-amqp's default builder
// does, except that a DLQ's queue gets amqpDLQArguments and a refusal
// because the queue exists with other arguments is an error saying what to
// do (ErrQueueArguments). Subscribe and SubscribeInitialize return it;
// watermill-amqp only logs it when it declares the queue again after a
// lost connection, and consumes the queue as it is.
type amqpTopology struct{ wamqp.DefaultTopologyBuilder }

// BuildTopology implements wamqp.TopologyBuilder.
func (t *amqpTopology) BuildTopology(ch *amqp.Channel, p wamqp.BuildTopologyParams, c wamqp.Config, logger watermill.LoggerAdapter) error {
	if amqpIsDLQ(p.Topic) {
		c.Queue.Arguments = amqpDLQArguments(c.Queue.Arguments)
	}
	if err := t.DefaultTopologyBuilder.BuildTopology(ch, p, c, logger); err != nil {
		return amqpDeclareError(p.QueueName, c.Queue.Arguments, err)
	}
	return nil
}

// amqpArgsError is ErrQueueArguments with what to do.
type amqpArgsError struct {
	msg    string
	reason *amqp.Error
}

func (e *amqpArgsError) Error() string   { return e.msg }
func (e *amqpArgsError) Unwrap() []error { return []error{ErrQueueArguments, e.reason} }

// amqpInequivalent finds the argument RabbitMQ names in its
// PRECONDITION_FAILED reason ("inequivalent arg 'x-queue-type' for queue
// ..."); "durable" and the other flags have their own wording.
var amqpInequivalent = regexp.MustCompile(`inequivalent arg '([^']+)'`)

// amqpDeclareError explains err, the failed declaration of queue with
// args: a PRECONDITION_FAILED becomes ErrQueueArguments naming the
// argument, what this process declares and the settings that match.
func amqpDeclareError(queue string, args amqp.Table, err error) error {
	var ae *amqp.Error
	if !errors.As(err, &ae) || ae.Code != amqp.PreconditionFailed {
		return fmt.Errorf("amqp: declare queue %q: %w", queue, err)
	}
	arg := "its arguments"
	if m := amqpInequivalent.FindStringSubmatch(ae.Reason); m != nil {
		arg = m[1]
	}
	var ours, fix string
	switch arg {
	case amqpSingleActiveArg:
		if amqpSingleActive(args) {
			ours, fix = "with "+arg+" true (amqp.single_active_consumer: true)", "set amqp.single_active_consumer: false (ANTIDOTE_AMQP_SINGLE_ACTIVE_CONSUMER=false) to use the queue as it is"
		} else {
			ours, fix = "without "+arg, "set amqp.single_active_consumer: true (ANTIDOTE_AMQP_SINGLE_ACTIVE_CONSUMER=true) to use the queue as it is"
			if amqpIsDLQ(queue) {
				ours += " (a DLQ's queue never has it)"
				fix = "a DLQ's queue is declared without it: move its letters elsewhere and delete it"
			}
		}
	case amqpDeliveryLimitArg:
		ours = "without " + arg
		if _, ok := args[amqpDeliveryLimitArg]; ok {
			ours = fmt.Sprintf("with %s %d (amqp.single_active_consumer on a quorum queue, so that a nacked message returns to the head)", arg, amqpOrderDeliveryLimit)
		}
		fix = fmt.Sprintf("declare it as the adapter does (a quorum queue has %s %d exactly when it has %s)", arg, amqpOrderDeliveryLimit, amqpSingleActiveArg)
	case "x-queue-type":
		if args["x-queue-type"] == "quorum" {
			ours, fix = "as a quorum queue (amqp.quorum: true)", "set amqp.quorum: false to use the queue as it is"
		} else {
			ours, fix = "as a classic queue (amqp.quorum: false)", "set amqp.quorum: true to use the queue as it is"
		}
	default:
		ours, fix = fmt.Sprintf("durable, with arguments %v", args), "declare it as the adapter does"
	}
	return &amqpArgsError{reason: ae, msg: fmt.Sprintf(
		"%v: queue %q, argument %s: this process declares it %s and RabbitMQ refused (%v). A queue's arguments are fixed when it is first declared: %s, or delete the queue (its messages go with it: move them first) so that it is declared again",
		ErrQueueArguments, queue, arg, ours, ae, fix)}
}

// amqpOrderedStages refuses delayed-retry stages for a topic whose queue
// keeps one consumer at a time for the sake of order: a delay queue
// dead-letters the message back to the tail of the topic's queue, behind
// the messages that came after it.
func amqpOrderedStages(topic string, stages []time.Duration, args amqp.Table) error {
	if len(stages) == 0 || !amqpSingleActive(args) || amqpIsDLQ(topic) {
		return nil
	}
	return fmt.Errorf("amqp: topic %q: amqp.single_active_consumer keeps its queue in order, but a delayed retry moves a failing message to the delay queue %q, which returns it to the queue's tail, behind the messages that came after it: leave DelayedRetry out (Retry retries in place, before the next message) or unset amqp.single_active_consumer",
		topic, AMQPDelayQueue(topic, stages[0]))
}
