// Package replay re-publishes archived raw calls of a time range so that the
// pipeline processes them again, following the replay contract of
// bus/route.go: subject callpipe.calls.replay.<job>, header
// Callpipe-Replay = job (the archive sink skips these), optional
// Callpipe-Sinks, and Nats-Msg-Id = bus.ReplayMsgID(job, id).
//
// A job is resumable and idempotent. Its checkpoint (Redis) records which
// archive objects are done and how many lines of the current object were
// acknowledged by JetStream; a restarted job skips those. Lines re-sent after a
// crash carry the same Nats-Msg-Id, so JetStream drops them within its
// duplicate window, and every sink deduplicates by call id beyond it: a
// range replayed twice leaves ClickHouse rollups and Langfuse unchanged.
//
// A job reads and decodes an object in one goroutine and publishes in
// another, a checkpoint segment (CheckpointEvery lines, fewer when their calls
// pass 32 MiB) at a time. When the stream allows fast batches (allow_batched,
// nats-server 2.14+; bus.EnsureCallsStream sets it) and no --rate is given,
// each segment is one ADR-50 fast batch, committed before the checkpoint is
// saved; a batch that fails (gap, error frame, timeout, wrong count) is
// re-sent call by call with the same Nats-Msg-Id, so nothing is lost or
// stored twice. Otherwise every call is published asynchronously and
// acknowledged one by one. JetStream acknowledges a batch as a whole, so
// Result.Duplicates counts only calls sent one by one (Result.Batched says how
// many were not).
package replay
