// Package clickhouse is callpipe's ClickHouse sink: the durable JetStream
// consumer callpipe-clickhouse on CALLPIPE_NORMALIZED (Sink) and the batched
// native-protocol writer (Output: Connect / WriteBatch / Close, with a
// BatchPolicy and an in-flight limit) that inserts calls into the calls
// database of store/callsdb. What is stored, how reads stay exact and how the
// rollups are sealed is the store's contract (store/callsdb); this package
// owns delivery into it.
//
// Stage (stage.go) is the clickhouse worker stage as a whole: it waits for
// the server and applies the migrations (callsdb.Migrate), runs the Sink,
// drops expired partitions on servers without TTL, and runs the store's
// Sealer behind a bus.Lease so that one worker seals at a time (metrics
// callpipe_rollup_*). cmd/callpipe only maps the configuration onto it.
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
// A message is acked only after the INSERT holding its call returned
// success. Insert errors nak the batch with a growing delay (the consumer has
// no delivery limit, so an outage never drops calls), mark the sink unhealthy
// until an insert succeeds, and slow reading down. A message holds one call
// or a batch (bus/batch.go); all calls of a message go into one insert, and
// the message is acked once, after it. Messages that are not a valid
// schema.Call (or not a valid batch) go to CALLPIPE_DLQ in the bus's
// dead-letter format (bus.Failure) and are terminated; an invalid call of a
// batch goes there alone (bus.DeadLetters.WriteItem) and the rest is
// inserted; `callpipe dlq retry` sends them back to
// this stage only. On shutdown the sink stops pulling, flushes
// the batch it holds plus what the client had buffered, acks and returns.
package clickhouse
