// Package fingerprint groups dead letters by cause. A letter's fingerprint
// is made of what stays the same when the same bug hits different messages
// (the handler, the reason, the error's type, the first stack frame in
// application code, the error message with its ids and numbers taken out,
// the payload's shape, the producing service) and leaves out what changes
// from one message to the next (ids, amounts, timestamps, addresses, line
// numbers) and from one process to the next: the producer's instance (a
// host and pid, a pod name) is not part of it, so one bug published by
// four replicas of "billing" is one group, not four.
// Two letters share a group exactly when their fingerprints are equal.
//
// It is the grouping of the message hospital, the way ServicePulse groups
// failed messages by exception type and stack, and it imports nothing that
// talks to a broker.
//
// # Usage
//
//	fp := fingerprint.Of(fingerprint.Input{
//		Handler:   letter.Metadata.Get(poison.KeyHandler),
//		Reason:    letter.Metadata.Get(poison.KeyReason),
//		ErrorType: letter.Metadata.Get(poison.KeyErrorType),
//		Error:     letter.Metadata.Get(poison.KeyError),
//		Stack:     letter.Metadata.Get(poison.KeyStack),
//		Payload:   letter.Payload,
//		Producer:  letter.Metadata.Get(poison.KeyProducer),
//	})
//	fmt.Println(fp.ID, fp.Message) // the message with its ids and numbers as <n>, <s>, <uuid>
//
// Every Input field may be empty. The Fingerprint keeps the parts it was
// computed from (Frame, Message, Shape, ...), so the hospital can show why
// letters are together; ID is 16 hex digits of SHA-256 over them and
// Version, which is bumped whenever the rules change (letters fingerprinted
// by different versions never share a group).
//
// # Options
//
// The zero Options is ready: the frames of the standard library, Go's
// runtime, Watermill and Antidote's own packages are not application code.
// Options.LibraryPrefixes adds prefixes of your own shared libraries, so
// the first frame of the service's code is the one that counts.
//
// # See also
//
// Package hospital groups letters with it (hospital.GroupLetters, and the
// store at ingest); poison defines the letter metadata it reads.
package fingerprint
