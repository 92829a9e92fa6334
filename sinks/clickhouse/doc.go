// Package clickhouse is callpipe's ClickHouse sink: the durable JetStream
// consumer callpipe-clickhouse on CALLPIPE_NORMALIZED (Sink, the
// sinks.Output of a sinks.Runner whose delivery contract is in
// sinks/doc.go) and the batched native-protocol writer (Output: Connect /
// WriteBatch / Close, with an in-flight limit) that inserts calls into the
// calls database of store/callsdb. What is stored, how reads stay exact and
// how the rollups are sealed is the store's contract (store/callsdb); this
// package owns delivery into it.
//
// Sink.Connect connects the Output (unless it was handed over connected:
// then its owner closes it) and, for the stage, applies the migrations
// (callsdb.Migrate); the runner retries it until ClickHouse answers,
// unhealthy meanwhile, and calls Sink.Close (closing the pool it opened)
// once the drain settled every message. Stage (stage.go) is the clickhouse
// worker stage as wiring: the Sink, and once it is Ready, partition drops
// on servers without TTL and the store's Sealer behind a bus.Lease so that
// one worker seals at a time (metrics callpipe_rollup_*). cmd/callpipe only
// maps the configuration onto it.
//
// # Invariants
//
//   - A message is acked only after the INSERT holding its call returned
//     success; duplicates this allows (redelivery, replay) are the store's to
//     collapse on read (see store/callsdb, "Exactly once").
//   - A late call (its hour past the redelivery horizon) marks its hour dirty
//     before and after its INSERT, so a seal never misses it.
//   - On modern servers a batch carries an insert_deduplication_token naming
//     its messages; that saves space only, exactness never depends on it.
//
// # Delivery
//
// The runner's contract (sinks/doc.go) with ClickHouse connected and
// migrated before the first pull and an INSERT as the write: insert
// errors nak the batch with a growing delay, mark the sink unhealthy and
// slow reading down; all calls of a message go into one insert and the
// message is acked once, after it; a batch's INSERT is sent in blocks of
// at most 2,048 rows and about 1 MiB of text, which the server squashes
// into one part (one block on a cluster, where it would not); an invalid
// call goes to CALLPIPE_DLQ (alone when its message is a batch) and
// `callpipe dlq retry` sends it
// back to this stage only; shutdown is the runner's drain, then Close. A
// server lost later is not reconnected by the sink: the driver's pool dials
// again, and until it can, inserts fail (nak, unhealthy).
package clickhouse
