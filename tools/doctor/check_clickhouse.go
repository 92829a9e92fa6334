package doctor

import (
	"context"
	"errors"
	"sort"
	"strings"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/callpipe/callpipe/store/callsdb"
)

// ClickHouse error codes that mean the schema was never applied.
const (
	codeUnknownTable    = 60
	codeUnknownDatabase = 81
)

// ClickHouse opens a connection (open pings), reads the server version and
// compares the migrations recorded in <database>.schema_migrations with the
// ones this binary ships.
func ClickHouse(addr, database string, open func(ctx context.Context) (driver.Conn, error)) Check {
	return func(ctx context.Context) []Result {
		conn, err := open(ctx)
		if err != nil {
			fix := "check clickhouse.addr (CALLPIPE_CLICKHOUSE_ADDR, native protocol port, usually 9000) and that ClickHouse is running"
			var ex *ch.Exception
			if errors.As(err, &ex) && (ex.Code == 516 || ex.Code == 192 || ex.Code == 193) { // AUTHENTICATION_FAILED, UNKNOWN_USER, WRONG_PASSWORD
				fix = "check clickhouse.user and clickhouse.password (CALLPIPE_CLICKHOUSE_PASSWORD)"
			}
			return []Result{fail("clickhouse", fix, "%s: %v", addr, err)}
		}
		defer conn.Close()
		var version string
		if err := conn.QueryRow(ctx, "SELECT version()").Scan(&version); err != nil {
			return []Result{fail("clickhouse", "check the ClickHouse server log", "%s: SELECT version(): %v", addr, err)}
		}
		rs := []Result{ok("clickhouse", "%s: server %s", addr, version)}
		want, err := callsdb.Migrations()
		if err != nil {
			return append(rs, fail("clickhouse schema", "rebuild callpipe: its embedded migrations are invalid", "%v", err))
		}
		applied, err := (&callsdb.Migrator{Conn: conn, Database: database}).Applied(ctx)
		if err != nil {
			var ex *ch.Exception
			if errors.As(err, &ex) && (ex.Code == codeUnknownTable || ex.Code == codeUnknownDatabase) {
				return append(rs, fail("clickhouse schema", "run `callpipe migrate` (the clickhouse worker stage also applies it at start)",
					"database %s has no schema_migrations table: the schema was never applied", database))
			}
			return append(rs, fail("clickhouse schema", "check that clickhouse.user may read "+database, "%v", err))
		}
		return append(rs, compareSchema(database, want, applied))
	}
}

// compareSchema judges the recorded migrations against the shipped ones.
func compareSchema(database string, want []callsdb.Migration, applied map[int]string) Result {
	const label = "clickhouse schema"
	known := map[int]bool{}
	var missing, changed []string
	latest := 0
	for _, m := range want {
		known[m.Version] = true
		latest = max(latest, m.Version)
		sum, ok := applied[m.Version]
		switch {
		case !ok:
			missing = append(missing, m.Name)
		case sum != m.Checksum:
			changed = append(changed, m.Name)
		}
	}
	var newer []int
	for v := range applied {
		if !known[v] {
			newer = append(newer, v)
		}
	}
	sort.Ints(newer)
	switch {
	case len(changed) > 0:
		return fail(label, "migrations are append-only: restore the original file(s) or run a callpipe release that matches the database",
			"%s: %s recorded with a different checksum than this binary ships", database, strings.Join(changed, ", "))
	case len(missing) > 0:
		return fail(label, "run `callpipe migrate` (idempotent, safe while the pipeline runs)",
			"%s: %d of %d migrations applied; missing %s", database, len(want)-len(missing), len(want), strings.Join(missing, ", "))
	case len(newer) > 0:
		return warn(label, "upgrade this callpipe binary: the database was migrated by a newer release",
			"%s: has migration(s) %v that this binary does not know (it ships up to %04d)", database, newer, latest)
	}
	return ok(label, "%s: version %04d (all %d migrations applied)", database, latest, len(want))
}
