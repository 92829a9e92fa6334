package callsdb

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	chschema "github.com/callpipe/callpipe/schema/clickhouse"
)

// Migration is one versioned schema file from schema/clickhouse.
type Migration struct {
	Version    int
	Name       string   // file name
	Checksum   string   // sha256 of the file, hex
	Statements []string // with {db} still in place
}

var migrationFile = regexp.MustCompile(`^(\d{4})_[a-z0-9_]+\.sql$`)

// Migrations returns the embedded migrations in version order.
func Migrations() ([]Migration, error) {
	entries, err := fs.ReadDir(chschema.Migrations, ".")
	if err != nil {
		return nil, err
	}
	var out []Migration
	seen := map[int]string{}
	for _, e := range entries {
		m := migrationFile.FindStringSubmatch(e.Name())
		if m == nil {
			return nil, fmt.Errorf("clickhouse migrations: %s: name must be NNNN_name.sql", e.Name())
		}
		v, _ := strconv.Atoi(m[1])
		if prev, dup := seen[v]; dup {
			return nil, fmt.Errorf("clickhouse migrations: %s and %s share version %d", prev, e.Name(), v)
		}
		seen[v] = e.Name()
		b, err := fs.ReadFile(chschema.Migrations, e.Name())
		if err != nil {
			return nil, err
		}
		sum := sha256.Sum256(b)
		out = append(out, Migration{Version: v, Name: e.Name(), Checksum: hex.EncodeToString(sum[:]), Statements: SplitStatements(string(b))})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	return out, nil
}

// SplitStatements splits a migration file into statements: `--` comment lines
// are dropped and a statement ends with a `;` at the end of a line.
func SplitStatements(src string) []string {
	var out []string
	var cur strings.Builder
	for _, line := range strings.Split(src, "\n") {
		t := strings.TrimSpace(line)
		if t == "" || strings.HasPrefix(t, "--") {
			continue
		}
		cur.WriteString(line)
		cur.WriteByte('\n')
		if strings.HasSuffix(t, ";") {
			s := strings.TrimSuffix(strings.TrimSpace(cur.String()), ";")
			out = append(out, strings.TrimSpace(s))
			cur.Reset()
		}
	}
	if s := strings.TrimSpace(cur.String()); s != "" {
		out = append(out, s)
	}
	return out
}

// WithDB replaces the {db} placeholder of a statement with a database name
// (validated by the caller as an identifier).
func WithDB(stmt, db string) string { return strings.ReplaceAll(stmt, "{db}", db) }

// Migrator applies the embedded migrations to one database.
//
// Concurrency: ClickHouse has no transactions and no atomic compare-and-set,
// so a "lock row" could not exclude a second migrator. Instead every statement
// is idempotent (CREATE ... IF NOT EXISTS; "already exists" errors, which a
// race between two CREATE ... IF NOT EXISTS can still raise on old servers,
// count as success) and the version is recorded only after all statements of
// the migration ran. Two migrators starting at once both run the statements,
// both succeed and both record the version; schema_migrations is a
// ReplacingMergeTree keyed by version and is read with DISTINCT, so the double
// record is harmless. A recorded version whose file checksum changed is an
// error: migrations are append-only.
//
// After the migrations Up brings TTL and dedup settings to what Server,
// Topology and Retention ask for (TableSettingStatements; nothing on 18.16).
type Migrator struct {
	Conn      driver.Conn
	Database  string
	Topology  Topology  // one server when zero
	Retention Retention // used on modern servers (TTL)
	// Server is detected with SELECT version() when zero.
	Server Server
	Log    *slog.Logger
	// Dial and Addrs, in a cluster: the servers (clickhouse.addr) through
	// which an ALTER of a replicated table runs on one replica of every
	// shard (see alterPerShard).
	Dial  func(ctx context.Context, addr string) (driver.Conn, error)
	Addrs []string
}

var reAlterLocalOnCluster = regexp.MustCompile(`(?s)^ALTER TABLE (\{db\}\.\w+_local) ON CLUSTER \w+(\s.*)$`)

// exec runs one statement of the migrations in its topology form.
func (m *Migrator) exec(ctx context.Context, stmt string) error {
	stmts, err := m.Topology.Statements(stmt)
	if err != nil {
		return err
	}
	if m.Topology.Clustered() {
		// a backfill through a Distributed table is stored on the shards
		// before the migration is recorded, not queued on this node
		ctx = ch.Context(ctx, ch.WithSettings(ch.Settings{"insert_distributed_sync": 1}))
	}
	for _, s := range stmts {
		if a := reAlterLocalOnCluster.FindStringSubmatch(s); a != nil {
			if err := m.alterPerShard(ctx, WithDB("ALTER TABLE "+a[1]+a[2], m.Database)); err != nil {
				return err
			}
			continue
		}
		if err := execTolerant(ctx, m.Conn, WithDB(s, m.Database)); err != nil {
			return err
		}
	}
	return nil
}

// alterPerShard runs an ALTER of a replicated table on one replica of each
// shard, which passes it on to the shard's other replicas. Not ON CLUSTER:
// on 18.16 the distributed DDL of an ALTER of a replicated table (executed
// by the shard's leader replica only) can leave its task unfinished — two
// replicas both execute it, the second fails with "already exists" and its
// host never reports — and the statement waits out
// distributed_ddl_task_timeout. The shards are told apart by the servers'
// {shard} macro; every shard of the cluster must be among m.Addrs.
func (m *Migrator) alterPerShard(ctx context.Context, stmt string) error {
	if m.Dial == nil || len(m.Addrs) == 0 {
		return fmt.Errorf("clickhouse cluster mode: %.80s: the migrator has no server list to reach every shard", stmt)
	}
	var shards uint64
	if err := m.Conn.QueryRow(ctx, ShardCountQuery(m.Topology.Cluster)).Scan(&shards); err != nil {
		return fmt.Errorf("clickhouse: shards of cluster %s: %w", m.Topology.Cluster, err)
	}
	done := map[string]string{} // shard macro -> server that ran the ALTER
	var unreachable []string
	for _, addr := range m.Addrs {
		if uint64(len(done)) == shards {
			break
		}
		conn, err := m.Dial(ctx, addr)
		if err != nil {
			unreachable = append(unreachable, addr)
			continue
		}
		var shard string
		err = conn.QueryRow(ctx, QueryShardMacro).Scan(&shard)
		if err == nil && done[shard] == "" {
			if err = execTolerant(ctx, conn, stmt); err == nil {
				done[shard] = addr
			}
		}
		_ = conn.Close()
		if err != nil {
			return fmt.Errorf("clickhouse cluster mode: on %s: %w", addr, err)
		}
	}
	if uint64(len(done)) < shards {
		return fmt.Errorf("clickhouse cluster mode: %.80s ran on %d of %d shards of cluster %s (%v): clickhouse.addr must list a reachable server of every shard (unreachable: %v)",
			stmt, len(done), shards, m.Topology.Cluster, done, unreachable)
	}
	return nil
}

// Applied returns the recorded versions and their checksums.
func (m *Migrator) Applied(ctx context.Context) (map[int]string, error) {
	out := map[int]string{}
	err := eachRow(ctx, m.Conn, WithDB(QueryAppliedMigrations, m.Database), func(rows driver.Rows) error {
		var v uint32
		var sum string
		if err := rows.Scan(&v, &sum); err != nil {
			return err
		}
		if prev, ok := out[int(v)]; ok && prev != sum {
			return fmt.Errorf("migration %d recorded with two checksums", v)
		}
		out[int(v)] = sum
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("clickhouse: read %s.schema_migrations: %w", m.Database, err)
	}
	return out, nil
}

// Up applies every migration not yet recorded. It returns the versions it applied.
func (m *Migrator) Up(ctx context.Context) ([]int, error) {
	log := m.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	migs, err := Migrations()
	if err != nil {
		return nil, err
	}
	if m.Server.Version == "" {
		if m.Server, err = DetectServer(ctx, m.Conn); err != nil {
			return nil, err
		}
	}
	for _, stmt := range BootstrapStatements {
		if err := m.exec(ctx, stmt); err != nil {
			return nil, err
		}
	}
	applied, err := m.Applied(ctx)
	if err != nil {
		return nil, err
	}
	var done []int
	for _, mig := range migs {
		if sum, ok := applied[mig.Version]; ok {
			if sum != mig.Checksum {
				return done, fmt.Errorf("clickhouse: migration %s was changed after it was applied (checksum %s, recorded %s); add a new migration instead",
					mig.Name, mig.Checksum[:12], sum[:min(12, len(sum))])
			}
			continue
		}
		for i, stmt := range mig.Statements {
			if err := m.exec(ctx, stmt); err != nil {
				return done, fmt.Errorf("clickhouse: migration %s statement %d: %w", mig.Name, i+1, err)
			}
		}
		if err := m.record(ctx, mig); err != nil {
			return done, err
		}
		log.Info("clickhouse migration applied", "database", m.Database, "migration", mig.Name)
		done = append(done, mig.Version)
	}
	engines, err := tableEngines(ctx, m.Conn, m.Database)
	if err != nil {
		return done, err
	}
	for _, stmt := range TableSettingStatements(m.Server, m.Topology, m.Retention, engines) {
		if err := execTolerant(ctx, m.Conn, WithDB(stmt, m.Database)); err != nil {
			return done, fmt.Errorf("clickhouse: table settings: %w", err)
		}
		log.Info("clickhouse table setting applied", "database", m.Database, "statement", WithDB(stmt, m.Database))
	}
	return done, nil
}

func (m *Migrator) record(ctx context.Context, mig Migration) error {
	// INSERT ... VALUES through Exec hangs on 18.16 over the native protocol;
	// a one-row batch works on every version.
	b, err := m.Conn.PrepareBatch(ctx, WithDB(InsertMigration, m.Database))
	if err != nil {
		return fmt.Errorf("clickhouse: record migration %s: %w", mig.Name, err)
	}
	if err := b.Append(uint32(mig.Version), mig.Name, mig.Checksum, time.Now().UTC().Truncate(time.Second)); err != nil {
		_ = b.Abort()
		return fmt.Errorf("clickhouse: record migration %s: %w", mig.Name, err)
	}
	if err := b.Send(); err != nil {
		return fmt.Errorf("clickhouse: record migration %s: %w", mig.Name, err)
	}
	return nil
}

// ClickHouse error codes that mean "someone else created it first".
const (
	codeTableAlreadyExists    = 57
	codeDatabaseAlreadyExists = 82
	codeDuplicateColumn       = 15
	// ILLEGAL_COLUMN: 18.16 answers an ADD COLUMN of an existing column
	// with it ("column with this name already exists"); it has no
	// ADD COLUMN IF NOT EXISTS
	codeIllegalColumn = 44
)

// ColumnAlreadyAdded reports whether err (its message) answers an ADD COLUMN
// of a column that exists: a migration run again, which counts as done.
func ColumnAlreadyAdded(stmt, err string) bool {
	return strings.Contains(stmt, " ADD COLUMN ") && strings.Contains(err, "already exists")
}

func execTolerant(ctx context.Context, conn driver.Conn, stmt string) error {
	err := conn.Exec(ctx, stmt)
	if err == nil {
		return nil
	}
	var ex *ch.Exception
	if errors.As(err, &ex) {
		switch ex.Code {
		case codeTableAlreadyExists, codeDatabaseAlreadyExists, codeDuplicateColumn:
			return nil
		case codeIllegalColumn:
			if ColumnAlreadyAdded(stmt, ex.Message) {
				return nil
			}
		}
	}
	return fmt.Errorf("%w\nstatement: %s", err, stmt)
}
