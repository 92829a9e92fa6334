package callsdb

import (
	"strings"
	"time"
)

// Every SQL statement callpipe sends to ClickHouse is in this file (plus the
// migration files in schema/clickhouse), so integration/clickhouse_chdb_test.go
// can run each of them on the modern engine as well as on 18.16. `{db}` is the
// database name (see WithDB). No statement uses server-side parameters,
// per-query settings or string-valued settings: 18.16 lacks them.

// BootstrapStatements create the database and the migrations record.
var BootstrapStatements = []string{
	`CREATE DATABASE IF NOT EXISTS {db}`,
	`CREATE TABLE IF NOT EXISTS {db}.schema_migrations
(
    version    UInt32,
    name       String,
    checksum   String,
    applied_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY version`,
}

// QueryAppliedMigrations lists recorded migrations (a version recorded by two
// concurrent migrators appears once).
const QueryAppliedMigrations = `SELECT DISTINCT version, checksum FROM {db}.schema_migrations ORDER BY version`

// InsertMigration records one applied migration (batch insert).
const InsertMigration = `INSERT INTO {db}.schema_migrations (version, name, checksum, applied_at)`

// CallColumns are the columns of {db}.calls written by the sink, in the order
// of the values returned by CallRow.
var CallColumns = []string{
	"id", "trace_id", "session_id",
	"start_time", "start_ms", "end_time", "end_ms", "first_token_time", "first_token_ms",
	"latency_ms", "ttft_ms",
	"endpoint", "kind", "model", "instance",
	"user_id", "user_source", "api_key_hash", "api_key_prefix",
	"stream", "status", "error", "finish_reason",
	"input_text", "output_text", "input", "output", "model_parameters",
	"input_tokens", "output_tokens", "total_tokens", "usage_source", "cost_usd",
	"metadata", "tags", "source", "batch_id",
	"truncated", "inserted_at", "version",
	"capture_mode", "capture_mask_set",
}

// InsertCalls is the batch insert of the sink (PrepareBatch/Append/Send).
var InsertCalls = `INSERT INTO {db}.calls (` + strings.Join(CallColumns, ", ") + `)`

// QueryCallsDistinct counts distinct call ids; QueryCallsRows counts stored
// rows (copies of redelivered calls included, until merges collapse them).
const (
	QueryCallsDistinct = `SELECT toUInt64(uniqExact(id)) FROM {db}.calls`
	QueryCallsRows     = `SELECT toUInt64(count()) FROM {db}.calls`
)

// QueryServerVersion is how callpipe learns what the server supports.
const QueryServerVersion = `SELECT version()`

// QueryTableEngines lists the tables of the database with their full engine
// clause (TTL and SETTINGS included), to make TableSettingStatements idempotent.
const QueryTableEngines = `SELECT name, engine_full FROM system.tables WHERE database = '{db}' ORDER BY name`

// PartitionsQuery lists the active partitions of one table (retention).
func PartitionsQuery(table string) string {
	return `SELECT DISTINCT partition_id FROM system.parts WHERE database = '{db}' AND table = '` + table + `' AND active ORDER BY partition_id`
}

// DropPartitionStatement drops one partition of a table (retention on
// servers without TTL).
func DropPartitionStatement(topo Topology, table, partitionID string) string {
	return "ALTER TABLE {db}." + table + topo.onCluster() + " DROP PARTITION ID '" + partitionID + "'"
}

// AllQueries returns every statement the project issues, with {db} in place
// and sample arguments rendered, except the batch inserts (InsertCalls,
// InsertMigration), which take their rows from the driver.
func AllQueries(sampleFrom, sampleTo time.Time) []string {
	q := []string{QueryAppliedMigrations, QueryCallsDistinct, QueryCallsRows, QueryServerVersion, QueryTableEngines}
	for _, t := range retainedTables {
		q = append(q, PartitionsQuery(t.name))
	}
	return append(q, readQueries(sampleFrom, sampleTo)...)
}

// SQLString quotes s as a ClickHouse string literal. Usage, call-list and
// export queries filter on user-supplied names and 18.16 has no server-side
// parameters, so every literal goes through here. '{' is escaped so that a
// literal can never contain the {db} placeholder WithDB substitutes.
func SQLString(s string) string {
	var b strings.Builder
	b.Grow(len(s) + 2)
	b.WriteByte('\'')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\\', '\'':
			b.WriteByte('\\')
			b.WriteByte(c)
		case 0:
			b.WriteString(`\0`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		case '{': // WithDB substitutes {db} anywhere in a statement
			b.WriteString(`\x7B`)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('\'')
	return b.String()
}

// ReplicasPerShardQuery is the replica count of cluster's smallest shard
// (0 when the server does not know the cluster).
func ReplicasPerShardQuery(cluster string) string {
	return `SELECT toUInt64(ifNull(min(n), 0)) FROM (SELECT shard_num, count() AS n FROM system.clusters WHERE cluster = ` +
		SQLString(cluster) + ` GROUP BY shard_num)`
}

// ShardCountQuery is the number of shards of cluster.
func ShardCountQuery(cluster string) string {
	return `SELECT toUInt64(uniqExact(shard_num)) FROM system.clusters WHERE cluster = ` + SQLString(cluster)
}

// QueryShardMacro is the server's {shard} macro (” when unset).
const QueryShardMacro = `SELECT ifNull(any(substitution), '') FROM system.macros WHERE macro = 'shard'`
