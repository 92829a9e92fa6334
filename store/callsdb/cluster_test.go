package callsdb

import (
	"strings"
	"testing"
)

func TestTopologySingleServerKeepsStatements(t *testing.T) {
	migs, err := Migrations()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range migs {
		for _, st := range m.Statements {
			got, err := Topology{}.Statements(st)
			if err != nil || len(got) != 1 || got[0] != st {
				t.Fatalf("%s: single server changed %q into %q (%v)", m.Name, st, got, err)
			}
		}
	}
}

// TestTopologyClusterDDL checks the cluster form of every bootstrap and
// migration statement: each runs ON CLUSTER, every MergeTree is Replicated
// with the {shard}/{replica} macros and has a Distributed table of the
// original name sharded by id, and views read and write the local tables.
func TestTopologyClusterDDL(t *testing.T) {
	topo := Topology{Cluster: "prod"}
	all, err := ClusterStatements(topo)
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(all, ";\n")
	for _, st := range all {
		if !strings.Contains(st, " ON CLUSTER prod") && !strings.HasPrefix(st, "INSERT INTO ") {
			t.Errorf("not ON CLUSTER: %.100s", st)
		}
		if strings.Contains(st, "ENGINE = ReplacingMergeTree") {
			t.Errorf("non-replicated engine in cluster mode: %.100s", st)
		}
	}
	for _, want := range []string{
		"CREATE DATABASE IF NOT EXISTS {db} ON CLUSTER prod",
		"CREATE TABLE IF NOT EXISTS {db}.schema_migrations ON CLUSTER prod",
		"ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{db}/schema_migrations', '{shard}-{replica}')",
		"CREATE TABLE IF NOT EXISTS {db}.calls_local ON CLUSTER prod",
		"ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{db}/calls_local', '{replica}', version)",
		"CREATE TABLE IF NOT EXISTS {db}.calls ON CLUSTER prod AS {db}.calls_local ENGINE = Distributed(prod, {db}, calls_local, cityHash64(id))",
		"DROP TABLE IF EXISTS {db}.usage_day_model_user_mv ON CLUSTER prod",
		"DROP TABLE IF EXISTS {db}.usage_hour_model_local ON CLUSTER prod",
		"ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{db}/usage_rollup_local', '{replica}')",
		"CREATE TABLE IF NOT EXISTS {db}.usage_rollup ON CLUSTER prod AS {db}.usage_rollup_local ENGINE = Distributed(prod, {db}, usage_rollup_local, toUInt32(period))",
		"CREATE TABLE IF NOT EXISTS {db}.usage_seals ON CLUSTER prod AS {db}.usage_seals_local ENGINE = Distributed(prod, {db}, usage_seals_local, toUInt32(period))",
		"CREATE TABLE IF NOT EXISTS {db}.usage_dirty_hours ON CLUSTER prod AS {db}.usage_dirty_hours_local ENGINE = Distributed(prod, {db}, usage_dirty_hours_local, toUInt32(hour))",
		"CREATE TABLE IF NOT EXISTS {db}.calls_by_user ON CLUSTER prod AS {db}.calls_by_user_local ENGINE = Distributed(prod, {db}, calls_by_user_local, cityHash64(id))",
		"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.calls_by_user_mv ON CLUSTER prod TO {db}.calls_by_user_local AS",
		"INSERT INTO {db}.calls_by_user (user_id, start_time, start_ms, id, version)",
		"FROM {db}.calls_local",
		"PARTITION BY toYYYYMMDD(start_time)",
		// a table created AS another: its local table AS the other's local
		// table, spread like it
		"CREATE TABLE IF NOT EXISTS {db}.usage_rollup_by_model_local ON CLUSTER prod AS {db}.usage_rollup_local\nENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{db}/usage_rollup_by_model_local', '{replica}')",
		"CREATE TABLE IF NOT EXISTS {db}.usage_rollup_by_model ON CLUSTER prod AS {db}.usage_rollup_by_model_local ENGINE = Distributed(prod, {db}, usage_rollup_by_model_local, toUInt32(period))",
		"CREATE TABLE IF NOT EXISTS {db}.usage_rollup_user_copy_local ON CLUSTER prod AS {db}.usage_rollup_by_user_local\nENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{db}/usage_rollup_user_copy_local', '{replica}')",
		"CREATE TABLE IF NOT EXISTS {db}.usage_rollup_user_copy ON CLUSTER prod AS {db}.usage_rollup_user_copy_local ENGINE = Distributed(prod, {db}, usage_rollup_user_copy_local, toUInt32(period))",
	} {
		if !strings.Contains(joined, want) {
			t.Errorf("cluster DDL lacks %q", want)
		}
	}
	for _, st := range all {
		if strings.HasPrefix(st, "CREATE MATERIALIZED VIEW") && (strings.Contains(st, "FROM {db}.calls\n") || strings.HasSuffix(st, "FROM {db}.calls")) {
			t.Errorf("a view reads the Distributed table (it would fire on the inserting node only): %.100s", st)
		}
	}
}

func TestTopologyClusterAlterAndUnknown(t *testing.T) {
	topo := Topology{Cluster: "c"}
	got, err := topo.Statements("ALTER TABLE {db}.calls ADD COLUMN region String")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"ALTER TABLE {db}.calls_local ON CLUSTER c ADD COLUMN region String",
		"DROP TABLE IF EXISTS {db}.calls ON CLUSTER c",
		"CREATE TABLE IF NOT EXISTS {db}.calls ON CLUSTER c AS {db}.calls_local ENGINE = Distributed(c, {db}, calls_local, cityHash64(id))"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("got %q want %q", got, want)
	}
	got, err = topo.Statements("ALTER TABLE {db}.calls MODIFY TTL start_time + toIntervalDay(3)")
	if err != nil || len(got) != 1 || got[0] != "ALTER TABLE {db}.calls_local ON CLUSTER c MODIFY TTL start_time + toIntervalDay(3)" {
		t.Errorf("got %q, %v", got, err)
	}
	for _, bad := range []string{
		"INSERT INTO {db}.calls VALUES ('x')",
		"ALTER TABLE {db}.nosuch ADD COLUMN x String",
		"DROP TABLE {db}.calls",
		"CREATE TABLE IF NOT EXISTS {db}.noid\n(\n    k String\n)\nENGINE = MergeTree\nORDER BY k",
	} {
		if _, err := topo.Statements(bad); err == nil {
			t.Errorf("%q: cluster mode must refuse what it cannot translate", bad)
		}
	}
}
