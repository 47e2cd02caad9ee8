package adapters

// Internals the external tests measure against.
var KafkaRecordSize = kafkaRecordSize

var JSONMetadataBound = jsonMetadataBound

var ConfigKeys = configKeys
