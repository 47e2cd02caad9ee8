// Package devkafka is an in-process Kafka-protocol broker (franz-go's
// kfake) for development, demos and tests: consumer groups, committed
// offsets and auto-created topics, kept in memory and gone on Close, or
// kept in a directory (Config.DataDir) so that a broker restarted on it,
// after Close or a crash, resumes. Not for production data.
//
// Importing it also lets adapters.Open honour kafka.embedded (see
// adapters.KafkaConfig.Embedded); without the import, Open refuses that
// setting with an error saying to add it. It is its own package so that a
// service that talks to a real Kafka does not compile a broker in.
//
// # What a data directory keeps across a kill
//
// With Config.DataDir (antidote devkafka --data-dir), a broker killed with
// SIGKILL, or dying any other way while the machine stays up, loses
// nothing it acknowledged. The broker started next on the directory and
// address serves:
//
//   - every topic, whether made by CreateTopics or auto-created by a
//     metadata request (a producer's), with its partitions; the topic list
//     is written to a temporary file, fsynced and renamed before the
//     request creating a topic is answered, so before any record can be
//     produced to it;
//   - every record a producer was acknowledged for, at the offset it was
//     acknowledged with, and the same high watermarks: a batch is written
//     to its segment file before it is acknowledged, whatever the acks;
//     records produced after the restart get the next offsets;
//   - every committed offset whose commit was answered.
//
// A batch the kill caught while it was being written was not acknowledged:
// it is served if all of it reached the file (a producer retrying it then
// writes it twice), or cut off at start if it is torn.
//
// What it does not promise:
//
//   - A machine crash or power loss can lose the last acknowledged writes:
//     like Kafka by default, records and commits are left to the OS page
//     cache, not fsynced one by one.
//   - An idempotent producer's deduplication does not survive a kill: kfake
//     saves producer sequence state only on Close, so a retry across the
//     kill can be written twice (at-least-once, never lost).
//   - Records deleted with DeleteRecords can come back after a kill (kfake
//     saves the log start offset only on Close); group members rejoin.
//
// # Consumer groups
//
// A classic group member whose client went away while it waited in its
// first JoinGroup (a worker SIGKILLed as it joined, a client that gave up
// on the JoinGroup and joined again) expires after its session timeout, as
// on Kafka. kfake on its own starts a member's session timer only when its
// join answer reaches the connection; against a closed one that is a coin
// toss, and a member that lost it stayed in the group for good, holding
// partitions no one consumed, or, with clients joining again and again
// (each new join restarts kfake's rebalance deadline), keeping the group in
// PreparingRebalance. devkafka serves the connections itself (and their
// TLS) and hides a client's close from kfake until kfake has answered the
// connection's JoinGroup and SyncGroup requests (groupconn.go).
//
// Still unlike Kafka: kfake keeps a member's session timer running while it
// waits in a JoinGroup, so a rebalance that waits longer than the session
// timeout for a slow member drops the members already waiting.
//
// A directory left by a devkafka before these guarantees (issue 24: it
// forgot auto-created topics on a kill) is repaired at Start: a topic the
// topic list lacks but whose records are on disk is listed again with
// them, and records such a broker appended numbered from 0 again after
// the earlier ones are renumbered after them, in the order they were
// written. Start refuses, naming the partition directory to move away, a
// log in which that happened across segment files.
package devkafka
