// Package dlq is the message hospital over a broker's DLQs: list, group,
// show, replay and purge the dead letters of a topic, on Kafka, RabbitMQ or
// PostgreSQL, through the same adapters.Config the services use, or through
// the hospital store the letters were ingested into (Config.Store).
//
// It is one hospital with the store's: each DLQ read directly is a
// hospital.Ward, letters are hospital.Letters grouped by fingerprint
// (hospital.GroupLetters: the groups the web UI shows for the same letters),
// and replay and purge are hospital.Replay and hospital.Purge, so every
// letter gets exactly one fate, replayed, purged or still dead, however
// many treatments run at once and however often one is repeated:
//
//   - Kafka: nothing can be removed from a topic, so the hospital keeps
//     its own consumer-group offset on the DLQ topic (Config.KafkaGroup):
//     letters before it are resolved; letters resolved out of order (a
//     filtered replay) are listed in that offset's commit metadata. A
//     treatment takes the DLQ with a transactional producer whose id names
//     it: a replay and the offset that resolves its letter commit in one
//     transaction, and a second treatment of the same DLQ fences the first,
//     which stops (hospital.ErrTakenOver) with what it treated committed.
//     Consumers read replays with read_committed (Open's do).
//   - RabbitMQ: a treatment holds the letters it read (unacked) until it
//     is closed: no other treatment can take them meanwhile; a replayed or
//     purged letter is acked, the rest go back to the queue.
//   - PostgreSQL: each letter is a row of the DLQ's queue table, locked
//     (FOR UPDATE SKIP LOCKED), replayed into its topic's table and deleted
//     in one transaction.
//
// A letter that cannot be treated (no original topic, malformed metadata,
// its claim gone) is reported with the reason and left dead; the others go
// on. Listing never changes anything but RabbitMQ's redelivered flag.
//
// # Usage
//
//	h, err := dlq.Open(ctx, dlq.Config{Adapters: cfg}) // cfg: the services' adapters.Config
//	...
//	defer h.Close()
//	groups, err := h.Groups(ctx, "orders", hospital.LetterQuery{}) // the causes in "orders.dlq"
//	...
//	res, err := h.Replay(ctx, "orders", hospital.LetterQuery{Reasons: []string{"panic"}}, dlq.ReplayOptions{DryRun: true})
//
// List, Groups and Show read; Replay and Purge treat, each with a DryRun
// that counts and changes nothing. A Result whose Err is not nil (wrapping
// ErrSomeFailed) says which letters stayed dead and why; Show of an unknown
// UUID wraps ErrNotFound.
//
// # Defaults
//
// DLQ topic "<topic>.dlq" (Config.DLQTopic), as middleware.DeadLetter names
// it; replays go to each letter's original topic only (Config.AllowReplayTo
// empty), at most 100 per second (Config.ReplayRate); on Kafka the
// hospital's consumer group is "antidote-hospital" and treatments are
// audited in the topic "antidote-hospital.audit". Letters whose payload
// went to a claim-check store are read whole only with Config.ClaimCheck.
//
// # See also
//
// `antidote dlq list|group|show|replay|purge` is this package on the command
// line; package hospital is the model (letters, groups, the store, Ingest);
// hospital/web serves the same treatments as a web UI; poison defines the
// envelope every letter carries.
package dlq
