// Package hospital is the message hospital's model: dead letters ingested
// from any broker's DLQ into a Store, grouped by fingerprint, listed page by
// page. Ingest consumes DLQ topics through any Watermill Subscriber and acks
// a letter only after the Store has it, so nothing is lost; a letter
// delivered twice (a crash between commit and ack) is stored once, keyed by
// its identity.
//
// The PostgreSQL Store is pgstore.HospitalStore; this package talks to no
// broker or database itself.
package hospital
