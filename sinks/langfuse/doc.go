// Package langfuse is callpipe's Langfuse sink: every normalized call
// (schema.Call) becomes one trace and one generation in Langfuse, sent over
// the batch ingestion API (Langfuse v3) or as OTLP spans (v4), idempotently (stable ids and
// timestamps, so a resend merges instead of duplicating) and losslessly (a
// JetStream message, one call or a batch of them (bus/batch.go), is
// acknowledged only after Langfuse accepted the events of each of its calls
// or the call went to the dead-letter stream alone with Langfuse's reason;
// a call left pending naks the message, and its accepted calls are resent,
// which merges).
//
// Sink is the sinks.Output of a sinks.Runner (sinks/doc.go): its Connect
// connects the Output (the transport: with transport auto, read from
// Langfuse's health endpoint; never guessed), which the runner retries
// every 5s before it pulls anything, the stage unready meanwhile; its
// WriteBatch settles each call by its Outcome (accepted: written; rejected:
// dead-lettered alone with Langfuse's reason; pending: nak'ed after
// retry_delay) and asks the runner for a pause while Langfuse refuses the
// keys; its Close releases the idle connections once the drain settled
// every message. Supervisor (supervisor.go) is the stage: it runs one Sink
// per host and keys in effect (saved settings over the configuration) and
// restarts it in place when they change.
package langfuse
