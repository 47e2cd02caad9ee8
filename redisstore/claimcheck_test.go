package redisstore_test

import (
	"testing"

	"github.com/ThreeDotsLabs/watermill"

	"github.com/antidote-mq/antidote/internal/storetest"
	"github.com/antidote-mq/antidote/internal/testenv"
	"github.com/antidote-mq/antidote/redisstore"
)

func TestClaimCheckStore(t *testing.T) {
	rd, err := redisstore.NewClaimCheckStore(redisstore.ClaimCheckStoreConfig{Addr: testenv.RedisAddr(t), Prefix: "test:claims:" + watermill.NewShortUUID() + ":"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rd.Close() })
	storetest.ClaimCheck(t, rd)
}

func TestClaimCheckStoreConfigValidates(t *testing.T) {
	if _, err := redisstore.NewClaimCheckStore(redisstore.ClaimCheckStoreConfig{}); err == nil {
		t.Error("no Redis accepted")
	}
}
