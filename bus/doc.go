// Package bus is callpipe's JetStream topology and the plumbing every stage
// shares: which streams exist, which stage reads and feeds which, the header
// names, provisioning, routing of replayed and retried messages, the
// dead-letter format and writer, `dlq ls/show/retry`, acknowledgement by
// reference (AckRef), pulling (Pull), leases, watching a KV key (WatchKey)
// and lag metrics.
//
// # The table
//
//	stage       reads                 feeds                consumer (default)
//	normalize   CALLPIPE_CALLS        CALLPIPE_NORMALIZED  callpipe-normalize
//	archive     CALLPIPE_CALLS        (S3)                 callpipe-archive
//	clickhouse  CALLPIPE_NORMALIZED   (ClickHouse)         callpipe-clickhouse
//	langfuse    CALLPIPE_NORMALIZED   (Langfuse)           callpipe-langfuse
//
// CALLPIPE_DLQ holds what any stage gave up on, on callpipe.dlq.<stage>.
//
// # Normalized records
//
// Invariant: a message on CALLPIPE_NORMALIZED is one call (the body is a
// schema.Call, no Callpipe-Calls header) or a batch (Callpipe-Calls = N, N
// schema.Call lines). A batch's calls share its subject and its replay
// marks; its Nats-Msg-Id is BatchMsgID of its call ids (under ReplayMsgID
// for a replay), so the same raw events normalized again are stored once.
// Every reader takes both forms (Items) and settles a batch message only
// once every call of it is stored or dead-lettered alone. See batch.go.
//
// Invariant: every stream, subject, header and default consumer name is
// declared once, in topology.go. Producers (ingest), stages (transform, the
// sinks), operations (replay, doctor, bench) and the wiring of cmd read it
// from there; nothing mirrors it. The dependency runs one way: ingest,
// transform, sinks, replay → bus; bus imports no callpipe package. A consumer
// name can be configured per stage; whatever watches a consumer (lag
// metrics, doctor, bench) takes the name through ConsumerOf with the
// configured name, never the default.
//
// # Routing
//
// A live message reaches every stage that reads its stream. A replayed one
// (Callpipe-Replay) reaches the stages its Callpipe-Sinks names (all sinks
// of CALLPIPE_NORMALIZED when empty) and normalize, which feeds them; the
// archive takes a replay only when Callpipe-Sinks names it. A stage
// acknowledges and skips what Routed rejects. See route.go.
//
// # Dead letters
//
// Invariant: every dead letter has one format (Failure.Msg) — the original
// bytes on callpipe.dlq.<stage>, with the reason, stage, source stream,
// subject and sequence, attempts and first failure time in headers, the
// replay marks of the message, and Nats-Msg-Id <stage>:<stream>:<seq> — and
// its message is settled only after the DLQ stored it: terminated (never
// redelivered) on success, left to the stage to nak on failure. A call that
// fails in a batch is dead-lettered alone: its own bytes, the batch's
// source and marks, Nats-Msg-Id <stage>:<stream>:<seq>:<item>.
//
// Invariant: no stage's durable consumer has a JetStream MaxDeliver
// (NoMaxDeliver): JetStream reports a message it stops delivering only in a
// core-NATS advisory, at most once. A stage that bounds deliveries
// (normalize, transform.max_deliver) enforces the bound itself
// (DeliveryLimit): on the last allowed delivery a failure is dead-lettered
// instead of nak'ed, a later delivery is dead-lettered without being
// processed, and a dead letter the DLQ refused leaves the message pending,
// so it comes back and its dead letter is written again.
//
// Invariant: `dlq retry` sends a dead letter back to the stage it failed in
// and to no other. It is published on its source subject as a replay
// (Callpipe-Replay = the original job or dlq-<seq>) whose Callpipe-Sinks
// names the failed sink; a normalize dead letter keeps its own
// Callpipe-Sinks, so normalize and the sinks after it process it while the
// archive, which stored the raw event already, does not. The retry's
// Nats-Msg-Id is retry:<seq>, so repeating a retry after a crash stores it
// once.
package bus
