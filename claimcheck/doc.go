// Package claimcheck stores what does not fit in a dead letter: when a
// letter (its original plus the envelope) is over the DLQ broker's limit
// even with its envelope shrunk, middleware.DeadLetter puts the original's
// payload and metadata here and publishes the letter with a reference
// (poison.KeyClaimCheck); the hospital (package dlq, `antidote dlq show` and
// `replay`) reads them back, so nothing of the message is lost.
//
// Stores: NewMemoryStore here (in the process only: tests);
// pgstore.NewClaimCheckStore (a table) and redisstore.NewClaimCheckStore
// (one key per claim). Keys are content hashes, so storing a claim again
// after a failed publish writes nothing new.
//
// Claims are kept until deleted: a claim that expired before its letter
// would lose the message. Purging a letter keeps its claim (two identical
// letters share one); delete claims of purged letters yourself when needed.
package claimcheck

import "github.com/antidote-mq/antidote/poison"

var _ poison.ClaimCheck = (*MemoryStore)(nil)
