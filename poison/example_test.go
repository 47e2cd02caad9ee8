package poison_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/poison"
)

// Teach the classifier about your own errors, keeping the defaults.
func ExampleChain() {
	errRateLimited := errors.New("partner API: 429")
	mine := poison.ClassifierFunc(func(err error) poison.Class {
		if errors.Is(err, errRateLimited) {
			return poison.ClassTransient
		}
		return poison.ClassUnknown // no opinion: ask the next classifier
	})
	c := poison.Chain(mine, poison.DefaultClassifier())

	var v map[string]any
	syntaxErr := json.Unmarshal([]byte(`{"user_id":1`), &v)

	fmt.Println(c.Classify(fmt.Errorf("call partner: %w", errRateLimited)))
	fmt.Println(c.Classify(fmt.Errorf("decode: %w", syntaxErr)))
	fmt.Println(c.Classify(poison.Permanent(errors.New("bad row"))))
	fmt.Println(c.Classify(poison.Permanent(errRateLimited))) // the first classifier has the final say, even over markers
	fmt.Println(c.Classify(errors.New("something else")))

	// Output:
	// transient
	// permanent
	// permanent
	// transient
	// unknown
}

func ExampleEnvelope() {
	msg := message.NewMessage("msg-1", []byte(`{"user_id":1`))
	msg.Metadata.Set(poison.KeyProducer, "order-relay")

	at := time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC)
	letter := poison.Envelope(msg,
		poison.Origin{Topic: "orders", Handler: "store-orders", Partition: 3, Offset: 1042, HasOffset: true},
		poison.Failure{Err: poison.Invalidf("user_id missing"), Attempts: 1, FirstFailedAt: at, LastFailedAt: at},
	)

	l, err := poison.ReadEnvelope(letter)
	if err != nil {
		panic(err)
	}
	fmt.Printf("%s from %s[%d]@%d by %s: %s (%s), producer %s\n",
		l.UUID, l.OriginalTopic, l.OriginalPartition, l.OriginalOffset, l.Handler, l.Reason, l.ErrorType, l.Producer)

	// Output:
	// msg-1 from orders[3]@1042 by store-orders: permanent (*poison.ValidationError), producer order-relay
}
