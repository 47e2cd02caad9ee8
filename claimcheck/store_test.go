package claimcheck_test

import (
	"context"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/antidote-mq/antidote/claimcheck"
	"github.com/antidote-mq/antidote/internal/storetest"
	"github.com/antidote-mq/antidote/poison"
)

// A letter too large for its DLQ is claimed, stored and read back whole
// (storetest.ClaimCheck; the shared stores run it in pgstore and
// redisstore).
func TestClaimRoundTrip(t *testing.T) {
	storetest.ClaimCheck(t, claimcheck.NewMemoryStore())
	if _, err := poison.ResolveClaim(context.Background(), nil, mustClaim(t, storetest.BigLetter())); err == nil {
		t.Fatal("a claimed letter without a store resolved")
	}
}

func mustClaim(t *testing.T, letter *message.Message) *message.Message {
	t.Helper()
	_, _, c, err := poison.ClaimLetter(letter)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
