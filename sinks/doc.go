// Package sinks is the contract every sink writes through and the one
// runner that delivers to it. A sink (clickhouse, langfuse, archive)
// provides an Output (Benthos's BatchOutput: Connect its destination,
// Decode an item, WriteBatch a batch, Close) and its BatchPolicy; the Runner
// owns connecting (Connect retried with internal/retry), the consumer,
// pulling (bus.Pull, again whenever the pull ends), batching (BatchPolicy:
// count, bytes, age, a quiet stream, in-flight), keep-alive, ack, nak with
// backoff, dead letters, health, the drain and closing. A sink's stage is
// wiring: it builds the output and the runner, hands the runner's health to
// /readyz and runs what lives beside the sink once Ready. The runner is
// here, not in bus, because only sinks use it; it imports bus, and bus
// imports no callpipe package.
//
// # Delivery contract
//
// Invariant (connect): Run calls Output.Connect before it pulls anything,
// again after each failure (Config.Connect's backoff, "<destination> not
// ready; retrying"), until it succeeds or ctx ends; until then nothing is
// taken, Healthy reports why (Connected), and Ready stays open. It is
// called once per Run: there is no ErrNotConnected, because every
// destination's client reconnects by itself (the ClickHouse pool dials
// again; Langfuse and S3 are plain HTTP), so a connection lost later is a
// failed write (the nak and health invariants below).
//
// Invariant: a message is acknowledged only after every value of it was
// settled: written (WriteBatch returned nil for it, or an output holding it
// released it as stored), or dead-lettered alone (a batched message's item:
// bus.DeadLetters.WriteItem). A message whose every value went to the DLQ
// is terminated instead. A message dead-lettered whole (not a valid batch,
// a single item that does not decode or that the output rejects) is
// terminated by bus.DeadLetters.Write only after CALLPIPE_DLQ stored it.
//
// Invariant: a message is nak'ed — redelivered, never dropped (the
// consumer has no MaxDeliver, bus.NoMaxDeliver) — when a value of it was
// not written (a WriteBatch error, Batch.Retry, a hold released as not
// stored) or its dead letter was not stored. The nak delay is the backoff:
// BackoffMin after a success, doubled per failed write up to BackoffMax.
// After a failed write its flusher keeps its in-flight slot for that delay,
// so an outage slows reading down instead of spinning; the runner reports
// unhealthy (Healthy) until a write succeeds.
//
// Invariant: every message the runner has taken and not settled — in the
// batch being filled, in a write, or held by the output (Batch.Hold) — is
// in one table by stream sequence, gets an in-progress ack whenever it has
// gone AckWait/3 without one (so before half of AckWait has passed, never
// while it is young), and is settled exactly once. A second delivery of a
// sequence in that table is dropped unsettled: settling the one held
// settles it.
//
// Invariant: a replayed message not routed to the stage (bus.Routed) is
// acknowledged unwritten.
//
// Invariant (batch memory): once WriteBatch has returned and its values
// are settled, the batch's slices (Items, Values) are emptied and reused
// by the next batches; an output keeps nothing of a batch past WriteBatch
// but copies of values and the Holds it asked for.
//
// Invariant (pause): a write that returns a PauseError (the destination
// refuses every write for a while, e.g. Langfuse refusing the keys) makes
// the runner stop pulling; what the pull read ahead and the batch being
// filled are nak'ed for the end of the pause, not held unrefreshed, and the
// runner pulls again when it ends.
//
// Invariant (drain): when Run's context ends the runner stops pulling;
// writes what the pull read ahead with the batch it was filling (with
// Config.HandBack, for a slow destination, naks it at once for another
// worker instead); waits for the writes in flight; calls Flush(final) of an
// output that holds values and waits until every held message is settled;
// sends its acks and returns. All of it within DrainTimeout: then the
// writes' context is cancelled and what is unwritten is nak'ed (or, held by
// an output that does not release it, redelivered after AckWait). Nothing
// taken is lost: it is acked after its write or comes back. A message
// JetStream had sent but that had not reached the pull when it stopped was
// never taken: JetStream redelivers it after AckWait (to whichever worker
// pulls then), which bounds how late, not whether, it is written.
//
// Invariant (close): Run calls Output.Close exactly once, as it returns:
// after the drain has settled every message taken (or its DrainTimeout
// ended) and its acks are flushed, with no WriteBatch or Flush running or
// to come; or, when ctx ended before Connect succeeded, with nothing taken.
// Close gets CloseTimeout; its error is logged, not returned.
//
// Lock order: an output's own locks before the runner's table lock (the
// runner never calls an output while holding it: Connect and Close run on
// Run's goroutine holding no lock, the connection state is atomic).
// Settling publishes the ack outside it.
package sinks
