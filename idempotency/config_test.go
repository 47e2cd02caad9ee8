package idempotency_test

import (
	"strings"
	"testing"
	"time"

	"github.com/antidote-mq/antidote/idempotency"
)

func TestMemoryStoreConfigValidateReportsEveryFieldInOrder(t *testing.T) {
	err := idempotency.MemoryStoreConfig{MaxKeys: -1, Retention: -time.Second}.Validate()
	if err == nil {
		t.Fatal("no error for MaxKeys -1 and Retention -1s")
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "MemoryStoreConfig.MaxKeys") || !strings.Contains(lines[1], "MemoryStoreConfig.Retention") {
		t.Errorf("Validate() = %q; want MaxKeys then Retention", err)
	}

	if _, err := idempotency.NewMemoryStore(idempotency.MemoryStoreConfig{MaxKeys: -1}); err == nil {
		t.Error("NewMemoryStore accepted MaxKeys -1")
	}
	s, err := idempotency.NewMemoryStore(idempotency.MemoryStoreConfig{})
	if err != nil {
		t.Fatal(err)
	}
	_ = s.Close()
	defer func() {
		if recover() == nil {
			t.Error("MustNewMemoryStore did not panic on MaxKeys -1")
		}
	}()
	idempotency.MustNewMemoryStore(idempotency.MemoryStoreConfig{MaxKeys: -1})
}
