package antidote

// DeadLetterSuffix is what the default DLQ naming appends to a topic.
const DeadLetterSuffix = ".dlq"

// DLQTopic is the default DLQ topic of source: source + DeadLetterSuffix.
// middleware.DeadLetter, the adapters' name checks and the hospital all use
// it, so they agree on where a topic's letters are.
func DLQTopic(source string) string { return source + DeadLetterSuffix }
