// Package replay re-publishes archived raw calls of a time range so that the
// pipeline processes them again, following the replay contract of
// ingest/replay.go: subject callpipe.calls.replay.<job>, header
// Callpipe-Replay = job (the archive sink skips these), optional
// Callpipe-Sinks, and Nats-Msg-Id = ingest.ReplayMsgID(job, id).
//
// A job is resumable and idempotent. Its checkpoint (Redis) records which
// archive objects are done and how many lines of the current object were
// acknowledged by JetStream; a restarted job skips those. Lines re-sent after a
// crash carry the same Nats-Msg-Id, so JetStream drops them within its
// duplicate window, and every sink deduplicates by call id beyond it: a
// range replayed twice leaves ClickHouse rollups and Langfuse unchanged.
package replay
