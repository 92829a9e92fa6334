package callsdb

import (
	"fmt"
	"regexp"
	"strings"
)

// Topology is where callpipe's tables live: one server (Cluster empty) or a
// cluster named in the servers' remote_servers.
//
// In cluster mode every MergeTree table T of the migrations becomes
//
//   - T_local: Replicated<engine>('/clickhouse/tables/{shard}/<db>/T_local',
//     '{replica}', ...) created ON CLUSTER on every node ({shard} and
//     {replica} are the servers' macros), and
//   - T: Distributed(cluster, db, T_local, cityHash64(id)) with the same
//     columns, created ON CLUSTER, so that every statement in queries.go and
//     every INSERT keeps naming {db}.T. Sharding by id puts every copy of a
//     call on one shard, where ReplacingMergeTree can collapse it.
//
// Materialized views are created ON CLUSTER on the local tables (they fire
// where the rows land), and schema_migrations is one replicated table shared
// by the whole cluster (replica name '{shard}-{replica}'), so a migrator on
// any node sees what another recorded.
type Topology struct {
	Cluster string
}

// Clustered reports whether tables are spread over a cluster.
func (t Topology) Clustered() bool { return t.Cluster != "" }

// LocalTable is the name of the table that stores the rows of table: the
// table itself on one server, table_local in a cluster.
func (t Topology) LocalTable(table string) string {
	if t.Clustered() {
		return table + "_local"
	}
	return table
}

// onCluster is the ON CLUSTER clause (with a leading space) or "".
func (t Topology) onCluster() string {
	if t.Clustered() {
		return " ON CLUSTER " + t.Cluster
	}
	return ""
}

var (
	reCreateDB = regexp.MustCompile(`^CREATE DATABASE IF NOT EXISTS \{db\}$`)
	// a table's columns: listed, or those of another table (AS {db}.T)
	reCreateTable = regexp.MustCompile(`(?s)^CREATE TABLE IF NOT EXISTS \{db\}\.(\w+)(\s*\(.*\)\s*|\s+AS \{db\}\.\w+\s+)ENGINE = (\w*)MergeTree(?:\(([^)]*)\))?(\s.*)?$`)
	reColumnsAs   = regexp.MustCompile(`^\s+AS \{db\}\.(\w+)\s+$`)
	reCreateMV    = regexp.MustCompile(`(?s)^CREATE MATERIALIZED VIEW IF NOT EXISTS \{db\}\.(\w+) TO \{db\}\.(\w+) AS(\s.*)$`)
	reAlterTable  = regexp.MustCompile(`(?s)^ALTER TABLE \{db\}\.(\w+)(\s.*)$`)
	reDBTable     = regexp.MustCompile(`\{db\}\.(\w+)`)
	reIDColumn    = regexp.MustCompile(`(?m)^[\s(]*id\s+[A-Z]`)
	reColumnAlter = regexp.MustCompile(`(?i)^\s*(ADD|MODIFY|DROP|RENAME|COMMENT) COLUMN\b`)
	reDropTable   = regexp.MustCompile(`^DROP TABLE IF EXISTS \{db\}\.(\w+)$`)
	reBackfill    = regexp.MustCompile(`(?s)^INSERT INTO \{db\}\.\w+ \([\w, ]+\)\s+SELECT .*\sFROM \{db\}\.\w+$`)
	rePeriodCol   = regexp.MustCompile(`(?m)^[\s(]*(period|hour)\s+DateTime`)
)

// shardingKey is how a table's rows are spread over shards: by call id, so
// every copy of a call lands on one shard; tables without calls (rollups,
// seals, dirty marks) by their period, so a seal's rows and its record share
// a shard. A table created AS another is spread as that one.
func shardingKey(name, cols string) (string, error) {
	if m := reColumnsAs.FindStringSubmatch(cols); m != nil {
		return distributedKey(m[1])
	}
	if reIDColumn.MatchString(cols) {
		return "cityHash64(id)", nil
	}
	if m := rePeriodCol.FindStringSubmatch(cols); m != nil {
		return "toUInt32(" + m[1] + ")", nil
	}
	return "", fmt.Errorf("clickhouse cluster mode: table %s has no id or period column to shard by", name)
}

// Statements returns stmt (a migration or bootstrap statement, {db} in place)
// as it runs on this topology: itself on one server, the cluster form
// described at Topology otherwise. A statement the rewrite does not
// understand is an error rather than something run on one node only.
// Statements a migration may hold: CREATE TABLE / MATERIALIZED VIEW ... IF
// NOT EXISTS, ALTER TABLE, DROP TABLE IF EXISTS, and a backfill
// INSERT INTO {db}.T (columns) SELECT ... FROM {db}.U.
func (t Topology) Statements(stmt string) ([]string, error) {
	if !t.Clustered() {
		return []string{stmt}, nil
	}
	c := t.Cluster
	switch {
	case reCreateDB.MatchString(stmt):
		return []string{stmt + t.onCluster()}, nil
	case reCreateTable.MatchString(stmt):
		m := reCreateTable.FindStringSubmatch(stmt)
		name, cols, kind, args, rest := m[1], m[2], m[3], m[4], m[5]
		local := name + "_local"
		path, replica := "'/clickhouse/tables/{shard}/{db}/"+local+"'", "'{replica}'"
		if name == "schema_migrations" {
			// one record for the whole cluster, whichever node migrates
			path, replica = "'/clickhouse/tables/{db}/schema_migrations'", "'{shard}-{replica}'"
		}
		engineArgs := path + ", " + replica
		if strings.TrimSpace(args) != "" {
			engineArgs += ", " + strings.TrimSpace(args)
		}
		localCols := cols
		if m := reColumnsAs.FindStringSubmatch(cols); m != nil {
			localCols = " AS {db}." + m[1] + "_local\n" // the other table's columns are its local table's
		}
		create := fmt.Sprintf("CREATE TABLE IF NOT EXISTS {db}.%s ON CLUSTER %s%sENGINE = Replicated%sMergeTree(%s)%s",
			local, c, localCols, kind, engineArgs, rest)
		if name == "schema_migrations" {
			// read and written on the migrating node only: no Distributed layer
			return []string{strings.Replace(create, "{db}."+local, "{db}.schema_migrations", 1)}, nil
		}
		key, err := shardingKey(name, cols)
		if err != nil {
			return nil, err
		}
		return []string{create, t.distributed(name, key)}, nil
	case reDropTable.MatchString(stmt):
		name := reDropTable.FindStringSubmatch(stmt)[1]
		return []string{stmt + t.onCluster(), "DROP TABLE IF EXISTS {db}." + name + "_local" + t.onCluster()}, nil
	case reBackfill.MatchString(stmt):
		// a backfill runs once, on the migrating node, through the
		// Distributed tables: it reads every shard and writes by sharding key
		return []string{stmt}, nil
	case reCreateMV.MatchString(stmt):
		m := reCreateMV.FindStringSubmatch(stmt)
		body := reDBTable.ReplaceAllString(m[3], "{db}.${1}_local")
		return []string{fmt.Sprintf("CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.%s ON CLUSTER %s TO {db}.%s_local AS%s", m[1], c, m[2], body)}, nil
	case reAlterTable.MatchString(stmt):
		m := reAlterTable.FindStringSubmatch(stmt)
		out := []string{fmt.Sprintf("ALTER TABLE {db}.%s_local ON CLUSTER %s%s", m[1], c, m[2])}
		if reColumnAlter.MatchString(m[2]) {
			// The Distributed table must mirror the new columns, but an
			// ALTER ON CLUSTER of it is refused ("isn't replicated, but
			// shard is replicated according to its cluster definition":
			// with internal_replication the DDL runs on one replica per
			// shard). It holds no rows (inserts are synchronous), so it is
			// created again from the altered local table.
			key, err := distributedKey(m[1])
			if err != nil {
				return nil, err
			}
			out = append(out, "DROP TABLE IF EXISTS {db}."+m[1]+t.onCluster(), t.distributed(m[1], key))
		}
		return out, nil
	}
	return nil, fmt.Errorf("clickhouse cluster mode: cannot translate statement: %.100s", stmt)
}

// distributed is the CREATE of the Distributed table name over name_local.
func (t Topology) distributed(name, key string) string {
	return fmt.Sprintf("CREATE TABLE IF NOT EXISTS {db}.%s ON CLUSTER %s AS {db}.%s_local ENGINE = Distributed(%s, {db}, %s_local, %s)",
		name, t.Cluster, name, t.Cluster, name, key)
}

// distributedKey is the sharding key of table name, from the migration that
// creates it.
func distributedKey(name string) (string, error) {
	migs, err := Migrations()
	if err != nil {
		return "", err
	}
	for _, m := range migs {
		for _, st := range m.Statements {
			if sm := reCreateTable.FindStringSubmatch(st); sm != nil && sm[1] == name {
				return shardingKey(name, sm[2])
			}
		}
	}
	return "", fmt.Errorf("clickhouse cluster mode: ALTER of table %s, which no migration creates", name)
}

// ClusterStatements returns the bootstrap and every migration statement in
// topo's form ({db} in place), for review and for the chDB parse check.
func ClusterStatements(topo Topology) ([]string, error) {
	migs, err := Migrations()
	if err != nil {
		return nil, err
	}
	src := append([]string(nil), BootstrapStatements...)
	for _, m := range migs {
		src = append(src, m.Statements...)
	}
	var out []string
	for _, st := range src {
		s, err := topo.Statements(st)
		if err != nil {
			return nil, err
		}
		out = append(out, s...)
	}
	return out, nil
}
