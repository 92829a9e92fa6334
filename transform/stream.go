// Package transform turns raw call events into normalized calls.
package transform

// Streams written by the transform stage.
const (
	// NormalizedStream holds one schema.Call per call id (Nats-Msg-Id = call id).
	NormalizedStream        = "CALLPIPE_NORMALIZED"
	NormalizedSubjectPrefix = "callpipe.normalized"
	// DeadLetterStream holds events a stage could not process, with the reason
	// in the Callpipe-Error header and the stage in Callpipe-Stage.
	DeadLetterStream        = "CALLPIPE_DLQ"
	DeadLetterSubjectPrefix = "callpipe.dlq"
)
