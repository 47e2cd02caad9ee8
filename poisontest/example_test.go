package poisontest_test

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/poison"
	"github.com/antidote-mq/antidote/poisontest"
)

// exampleT stands in for the *testing.T of a real test, so the example runs.
type exampleT struct{ testing.TB }

func (exampleT) Helper()                           {}
func (exampleT) Errorf(format string, args ...any) { fmt.Printf("ERROR: "+format+"\n", args...) }
func (exampleT) Fatalf(format string, args ...any) { panic(fmt.Sprintf(format, args...)) }

// In your own test, pass its *testing.T:
//
//	func TestOrderHandlerSurvivesPoison(t *testing.T) {
//		poisontest.Run(t, orders.Handle, poisontest.WithValid(sampleOrders...))
//	}
//
// Run fails the test for every input that blocks the queue, loops or is
// neither processed nor dead-lettered, and for every valid sample that is
// not processed.
func ExampleRun() {
	var t testing.TB = exampleT{} // in a real test: the test's *testing.T
	handler := func(msg *message.Message) error {
		var order struct {
			ID int `json:"id"`
		}
		if err := json.Unmarshal(msg.Payload, &order); err != nil {
			return poison.Invalid(err)
		}
		if order.ID <= 0 {
			return poison.Invalidf("order id %d is not > 0", order.ID)
		}
		return nil // store the order
	}
	rep := poisontest.Run(t, handler, poisontest.WithValid([]byte(`{"id":1}`)))
	fmt.Println("failed:", rep.Failed())
	for _, r := range rep.Results {
		if r.Reason != "" {
			fmt.Printf("%s: %s (%s)\n", r.Input, r.Outcome, r.Reason)
		} else {
			fmt.Printf("%s: %s\n", r.Input, r.Outcome)
		}
	}
	// Output:
	// failed: false
	// truncated JSON: dead_lettered (permanent)
	// wrong types: dead_lettered (permanent)
	// empty payload: dead_lettered (permanent)
	// 10 MB payload: dead_lettered (permanent)
	// invalid UTF-8: dead_lettered (permanent)
	// huge metadata value: processed
	// null payload: dead_lettered (permanent)
	// deeply nested JSON: dead_lettered (permanent)
	// handler panic: dead_lettered (panic)
	// valid sample 1: processed
}
