// Package antidote holds the few definitions every other package of the
// module shares: the broker-limit errors and the optional interfaces that
// report them, the scheduler interface of non-blocking retries, the DLQ
// naming, the metadata keys the adapters set, a message's position in its
// partition, the consumer's identity (ConsumerIdentity, set once in
// router.Config.Consumer), and the tracing vocabulary (instrumentation
// scope, span attribute keys, the metadata carrier).
//
// It imports nothing of this module, so any package may import it without
// pulling in a broker client: the policy packages (poison, middleware,
// router) depend on it instead of on the adapters. See docs/design.md for
// the package map.
package antidote
