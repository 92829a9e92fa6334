// Package callsdb is the calls database in ClickHouse, the store that the
// clickhouse sink writes and that serve, export, doctor, replay and the
// rollup commands read and maintain: the connection (Open, Config), the
// versioned schema migrator (Migrator, over schema/clickhouse/*.sql, on one
// server or a cluster: Topology), retention (Retention: TTL or DropExpired),
// the sealed usage rollups (Sealer) and the exact reads behind the usage
// overview, the call list and exports (UsageOf, CallList, ExportPage). Every
// SQL statement it sends is in queries*.go, cluster.go, retention.go,
// synthetic.go or the migration files.
//
// # Server versions
//
// The sink's Output.Connect and Migrator.Up ask SELECT version(). From 22.2
// (Server.Modern) callpipe uses table TTL for retention, sets
// non_replicated_deduplication_window and sends insert_deduplication_token
// with every batch; older servers (18.16 is the one tested) get the portable
// subset: no per-query settings, retention by DROP PARTITION.
//
// # Exactly once in calls and in the rollups
//
// JetStream delivers at least once: a batch whose acks were lost, a sink
// killed between INSERT and ack, an INSERT that succeeded on the server but
// failed on the client, or a replay of the stream all insert the same calls
// again. ClickHouse 18.16 cannot deduplicate those inserts: plain MergeTree
// never does, insert_deduplication_token and non_replicated_deduplication_window
// do not exist there, and ReplicatedMergeTree block dedup needs ZooKeeper and
// only catches byte-identical blocks (a redelivered call rarely lands in an
// identical batch). Checking "is this id already in calls?" before inserting
// is racy (two in-flight batches, two sink replicas) and not atomic with the
// INSERT. Summing rollups (SummingMergeTree / AggregatingMergeTree fed by a
// materialized view) would count every copy.
//
// On modern servers a batch redelivered unchanged (same JetStream messages,
// same order) carries the same insert_deduplication_token and is dropped by
// the server, in calls and in the rollups; that only saves space, since
// batches are rarely redelivered identically and a replay must not be
// dropped. Exactness rests on the read side on every version.
//
// So duplicates are allowed into storage and removed on read, where it is
// exact by construction:
//
//   - calls is a ReplacingMergeTree(version) ordered by (hour, id): background
//     merges collapse copies of a call eventually; reads collapse them as
//     they read (FROM calls FINAL: the newest copy wins, as
//     ReplacingMergeTree's merges decide). A call counts once whether or not
//     ClickHouse has merged its copies yet, and a replayed, changed record
//     (re-priced, re-attributed) counts in its new group.
//
// # Sealed rollups (rollup.go, usage_plan.go)
//
// The usage overview reads pre-aggregated rows that stay exact, through a
// protocol of seal records and dirty marks (stated in full in rollup.go):
//
//   - A seal of an hour or day is written rows first, record last; readers
//     use only the rows of the newest record. Sealing again replaces a seal.
//   - An hour is sealed only past the redelivery horizon (SealAfter); a call
//     that arrives later marks its hour dirty before and after its INSERT,
//     and a dirty hour is read from per-call rows until sealed again.
//   - A day seal is used only while the hour seals it lists are still
//     current: every hour of its day, or the first hours of today (UTC, or
//     of a zone) for its day so far, which is never taken for a whole day.
//   - Replaced rows are deleted only after Grace, longer than any read.
//
// Every second of a read's range comes from exactly one of: a clean seal's
// rows or the per-call rows. Counts, tokens and cost are exact; latency and
// TTFT percentiles from seals come from log-linear histograms (relative
// error at most HistogramRelativeError), exact when nothing is sealed.
//
// # Cluster mode (Topology)
//
// The same invariants hold over a sharded, replicated cluster:
//
//   - Every copy of a call is on one shard (Distributed tables shard per-call
//     rows by cityHash64(id)), so collapsing by id, and FINAL, over the
//     Distributed table is exact; rollup rows, seal records and dirty marks
//     are sharded by their period.
//   - Inserts are synchronous (insert_distributed_sync): an acknowledged
//     batch is stored on a replica of its shard.
//   - A seal's rows are on every replica of their shard before its record
//     is written (insert_quorum = replicas per shard), and a seal reads only
//     replicas that are at most a second behind, never a stale fallback: a
//     replica catching up after an outage is never summed into a seal.
//   - Schema changes reach every node: CREATE and DROP run ON CLUSTER; an
//     ALTER of a replicated table runs on one replica of every shard and
//     replicates from there.
package callsdb
