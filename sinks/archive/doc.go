// Package archive is the sink that keeps every raw call event received on
// CALLPIPE_CALLS in S3/MinIO, as large zstd-compressed NDJSON objects grouped
// by the UTC hour of the call's start time. The object format, the key
// scheme and the readers are store/rawarchive's; this package owns delivery
// into it.
//
// The Sink is the sinks.Output of a sinks.Runner: its Connect makes sure
// the bucket exists (rawarchive.EnsureBucket; the runner retries it until
// S3 answers, unhealthy meanwhile, before it pulls anything) and its Close,
// called once after the drain settled every message, waits for the uploads
// still running. Stage (stage.go) is the wiring of the worker stage.
//
// # Exactly once
//
// Invariant: every archived stream sequence is in exactly one stored data
// object. A sequence is claimed by a manifest before its object is uploaded,
// a claimed sequence is never put into another object, and a message is
// acknowledged only after its object is stored. The sink keeps it with this
// commit protocol:
//
//  1. A buffer (one hour, one process) is closed by size, age or shutdown. Its
//     manifest is written first: from then on its sequences are claimed.
//  2. The data object is uploaded (multipart for large objects) under the key
//     derived from its content; then every message in it is acknowledged.
//
// A crash anywhere in between makes JetStream redeliver the messages
// (NumDelivered > 1). A redelivered message is never buffered blindly: the
// sink looks its sequence up in the manifests of its hour. Claimed and stored
// → it is acknowledged. Claimed but the data object is missing (killed
// mid-upload) → the sink rebuilds that exact object from the stream
// (sequences from the manifest, read with direct gets, in manifest order),
// uploads it under the same key and acknowledges. Not claimed → buffered as
// new. So a redelivered call can never end up in a second, differently
// grouped object, and an upload retried after a crash overwrites the same key
// with the same bytes. Readers list only data objects, so a manifest whose
// object is not uploaded yet is invisible to them. (If messages of an
// interrupted object expired from the stream before the rebuild, the rebuilt
// object holds the rest under a new key and manifest; the expired calls are
// lost, which is logged.)
//
// The protocol relies on JetStream not redelivering a message the sink still
// holds: the sink runs on a sinks.Runner, buffers a call by holding it
// (sinks.Batch.Hold) and releases it once its object is stored (acked) or
// given up at shutdown (nak'ed); the runner gives held messages in-progress
// acks every AckWait/3 and ignores a second delivery of a sequence held in
// this process (sinks/doc.go). Buffers close by size as calls are added and
// by age or at the drain in the runner's Flush calls.
//
// What is not archived: replayed events (bus.Routed: a replay reaches the
// archive only when its Callpipe-Sinks names it, as a retried archive dead
// letter does) are acknowledged and skipped. Events the schema decoder
// rejects are archived anyway (the archive keeps what was received), in the
// hour of their stream timestamp; only a message that is not valid JSON and
// contains a line break (which cannot be one NDJSON line) goes to
// CALLPIPE_DLQ, in the bus's dead-letter format (bus.Failure).
package archive
