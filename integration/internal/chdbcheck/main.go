// Command chdbcheck runs every migration and every statement callpipe sends to
// ClickHouse on the modern engine embedded in chDB (libchdb.so, loaded from
// CHDB_LIB_PATH by chdb-go's purego binding), so SQL that only 18.16 accepts
// fails the build. It is run by integration/clickhouse_chdb_test.go as a
// separate process because chdb-purego panics at init when the library is
// missing, which must not take the integration test binary down.
//
//	CHDB_LIB_PATH=... go run ./integration/internal/chdbcheck -calls calls.json -out usage.json
//
// It applies the migrations twice (the second run must be a no-op), inserts
// the calls of -calls twice through the sink's column list (as the redelivery
// of a whole batch), records a migration, checks what callpipe does only on
// modern servers (TTL and dedup-window ALTERs, insert_deduplication_token,
// TTL expiry, DROP PARTITION, and the parse of every cluster-mode DDL
// statement), runs every query of clickhouse.AllQueries and writes the Usage
// results per grouping to -out.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	chdb "github.com/chdb-io/chdb-go/chdb-purego"

	"github.com/callpipe/callpipe/schema"
	chsink "github.com/callpipe/callpipe/sinks/clickhouse"
	"github.com/callpipe/callpipe/store/callsdb"
)

const db = "callpipe_chdb"

func main() {
	callsFile := flag.String("calls", "", "JSON array of schema.Call to insert")
	outFile := flag.String("out", "", "where to write the Usage results (JSON)")
	from := flag.Int64("from", 0, "Usage range start, unix seconds")
	to := flag.Int64("to", 0, "Usage range end, unix seconds")
	flag.Parse()
	if err := run(*callsFile, *outFile, time.Unix(*from, 0).UTC(), time.Unix(*to, 0).UTC()); err != nil {
		fmt.Fprintln(os.Stderr, "chdbcheck:", err)
		os.Exit(1)
	}
}

type session struct {
	conn chdb.ChdbConn
	n    int
}

func (s *session) exec(sql, format string) (string, error) {
	s.n++
	res, err := s.conn.Query(sql, format)
	if err != nil {
		return "", fmt.Errorf("%w\nstatement: %s", err, sql)
	}
	defer res.Free()
	if err := res.Error(); err != nil {
		return "", fmt.Errorf("%w\nstatement: %s", err, sql)
	}
	return res.String(), nil
}

func run(callsFile, outFile string, from, to time.Time) error {
	dir, err := os.MkdirTemp("", "callpipe-chdb-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	conn, err := chdb.NewConnection(1, []string{"--path=" + dir})
	if err != nil {
		return err
	}
	defer conn.Close()
	s := &session{conn: conn}
	if v, err := s.exec("SELECT version()", "TabSeparated"); err == nil {
		fmt.Fprintln(os.Stderr, "chdbcheck: engine", strings.TrimSpace(v))
	} else {
		return err
	}

	migs, err := callsdb.Migrations()
	if err != nil {
		return err
	}
	for round := 0; round < 2; round++ {
		for _, st := range callsdb.BootstrapStatements {
			if _, err := s.exec(callsdb.WithDB(st, db), "TabSeparated"); err != nil {
				return err
			}
		}
		for _, m := range migs {
			for _, st := range m.Statements {
				if _, err := s.exec(callsdb.WithDB(st, db), "TabSeparated"); err != nil {
					// no ADD COLUMN IF NOT EXISTS on 18.16: the migrator counts
					// "already exists" as done, so the second run may meet it
					readded := round == 1 && callsdb.ColumnAlreadyAdded(st, err.Error())
					if !readded {
						return fmt.Errorf("migration %s (run %d): %w", m.Name, round+1, err)
					}
				}
			}
		}
	}
	rec := []any{uint32(migs[0].Version), migs[0].Name, migs[0].Checksum, time.Now().UTC().Truncate(time.Second)}
	if _, err := s.exec(valuesSQL(callsdb.WithDB(callsdb.InsertMigration, db), [][]any{rec}), "TabSeparated"); err != nil {
		return err
	}

	var calls []schema.Call
	if callsFile != "" {
		b, err := os.ReadFile(callsFile)
		if err != nil {
			return err
		}
		if err := json.Unmarshal(b, &calls); err != nil {
			return err
		}
	}
	now := time.Now()
	for copyN := 0; copyN < 2; copyN++ { // a whole batch redelivered
		for lo := 0; lo < len(calls); lo += 1000 {
			hi := min(lo+1000, len(calls))
			rows := make([][]any, 0, hi-lo)
			for i := lo; i < hi; i++ {
				rows = append(rows, chsink.CallRow(&calls[i], 4096, now, uint64(copyN+1)))
			}
			if _, err := s.exec(valuesSQL(callsdb.WithDB(callsdb.InsertCalls, db), rows), "TabSeparated"); err != nil {
				return err
			}
		}
	}

	if err := checkModern(s, calls, now); err != nil {
		return err
	}

	if !to.After(from) {
		from, to = time.Unix(0, 0).UTC(), time.Unix(1<<31, 0).UTC()
	}
	for _, q := range callsdb.AllQueries(from, to) {
		if _, err := s.exec(callsdb.WithDB(q, db), "TabSeparated"); err != nil {
			return err
		}
	}
	results := map[string][]callsdb.UsageRow{}
	for _, g := range callsdb.AllGroupings() {
		out, err := s.exec(callsdb.WithDB(callsdb.UsageQuery(from, to, g), db), "TabSeparated")
		if err != nil {
			return err
		}
		rows, err := parseUsage(out, g)
		if err != nil {
			return fmt.Errorf("usage %s: %w", g, err)
		}
		results[g.String()] = rows
	}
	fmt.Fprintf(os.Stderr, "chdbcheck: %d statements ran\n", s.n)
	if outFile != "" {
		b, err := json.Marshal(results)
		if err != nil {
			return err
		}
		return os.WriteFile(outFile, b, 0o644)
	}
	return nil
}

// checkModern runs what callpipe does only on modern servers, on the engine
// in chDB: version detection, the TTL and dedup-window ALTERs (a second pass
// must find nothing to do), an insert deduplication token dropping a resent
// batch in calls and in the rollups, TTL expiring rows, a partition drop, and
// the parse of every cluster-mode DDL statement (EXPLAIN AST: chDB has no
// ZooKeeper or remote servers to run them on).
func checkModern(s *session, calls []schema.Call, now time.Time) error {
	v, err := s.exec(callsdb.QueryServerVersion, "TabSeparated")
	if err != nil {
		return err
	}
	srv, err := callsdb.ParseServerVersion(v)
	if err != nil {
		return err
	}
	if !srv.Modern() {
		return fmt.Errorf("chDB engine %s is not modern by callpipe's cut-off", srv.Version)
	}
	// long retention on the checked database: nothing of the sample expires
	keep := callsdb.Retention{Calls: 3650, Rollups: 3650}
	for pass := 1; pass <= 2; pass++ {
		engines, err := engines(s, db)
		if err != nil {
			return err
		}
		stmts := callsdb.TableSettingStatements(srv, callsdb.Topology{}, keep, engines)
		if pass == 1 && len(stmts) != 16 {
			return fmt.Errorf("table settings: %d statements for 8 retained tables, want TTL + dedup window each: %q", len(stmts), stmts)
		}
		if pass == 2 && len(stmts) != 0 {
			return fmt.Errorf("table settings not idempotent: second pass wants %q", stmts)
		}
		for _, st := range stmts {
			if _, err := s.exec(callsdb.WithDB(st, db), "TabSeparated"); err != nil {
				return err
			}
		}
	}

	// a batch sent 3 times with one token is stored once, rollups included;
	// the same batch with another token is stored again (the control: a
	// count that could not see copies would prove nothing). Merges are
	// stopped so that ReplacingMergeTree does not collapse copies meanwhile.
	if len(calls) > 0 {
		const db = "callpipe_chdb_dedup" // apart from the Usage checks
		if err := migrateDB(s, db); err != nil {
			return err
		}
		eng, err := engines(s, db)
		if err != nil {
			return err
		}
		for _, st := range callsdb.TableSettingStatements(srv, callsdb.Topology{}, keep, eng) {
			if _, err := s.exec(callsdb.WithDB(st, db), "TabSeparated"); err != nil {
				return err
			}
		}
		for _, t := range []string{"calls", "calls_by_user"} {
			if _, err := s.exec("SYSTEM STOP MERGES "+db+"."+t, "TabSeparated"); err != nil {
				return err
			}
		}
		chunk := append([]schema.Call(nil), calls[:min(500, len(calls))]...)
		for i := range chunk {
			chunk[i].ID = "dedup-" + chunk[i].ID
		}
		send := func(token string, version uint64) error {
			rows := make([][]any, len(chunk))
			for i := range chunk {
				rows[i] = chsink.CallRow(&chunk[i], 4096, now, version)
			}
			_, err := s.exec(insertWithSettings(callsdb.WithDB(callsdb.InsertCalls, db), chsink.DedupSettings(token), rows), "TabSeparated")
			return err
		}
		n := uint64(len(chunk))
		for attempt := 0; attempt < 3; attempt++ {
			if err := send("chdbcheck-token", uint64(10+attempt)); err != nil {
				return err
			}
		}
		got, err := countsWhere(s, db, "id LIKE 'dedup-%'")
		if err != nil {
			return err
		}
		if got != [2]uint64{n, n} {
			return fmt.Errorf("dedup token: rows (calls, calls_by_user) = %v after one batch sent 3 times with one token, want %d each", got, n)
		}
		if err := send("chdbcheck-other-token", 20); err != nil {
			return err
		}
		if got, err = countsWhere(s, db, "id LIKE 'dedup-%'"); err != nil || got != [2]uint64{2 * n, 2 * n} {
			return fmt.Errorf("dedup control: rows %v (err %v) after a second token, want %d each", got, err, 2*n)
		}
		fmt.Fprintf(os.Stderr, "chdbcheck: a batch of %d sent 3 times with one token stored once (and again under another token)\n", n)
	}

	// TTL expires rows: a second database with calls and hour rollup kept 1 day
	const ttlDB = "callpipe_chdb_ttl"
	if err := migrateDB(s, ttlDB); err != nil {
		return err
	}
	eng, err := engines(s, ttlDB)
	if err != nil {
		return err
	}
	for _, st := range callsdb.TableSettingStatements(srv, callsdb.Topology{}, callsdb.Retention{Calls: 1}, eng) {
		if _, err := s.exec(callsdb.WithDB(st, ttlDB), "TabSeparated"); err != nil {
			return err
		}
	}
	old := schema.Call{ID: "old", StartTime: now.AddDate(0, 0, -3), EndTime: now.AddDate(0, 0, -3), Model: "m", UserID: "u", Status: 200}
	fresh := schema.Call{ID: "fresh", StartTime: now, EndTime: now, Model: "m", UserID: "u", Status: 200}
	rows := [][]any{chsink.CallRow(&old, 0, now, 1), chsink.CallRow(&fresh, 0, now, 1)}
	if _, err := s.exec(valuesSQL(callsdb.WithDB(callsdb.InsertCalls, ttlDB), rows), "TabSeparated"); err != nil {
		return err
	}
	for _, t := range []string{"calls", "calls_by_user"} {
		if _, err := s.exec("OPTIMIZE TABLE "+ttlDB+"."+t+" FINAL", "TabSeparated"); err != nil {
			return err
		}
	}
	got, err := counts(s, ttlDB)
	if err != nil {
		return err
	}
	if want := [2]uint64{1, 1}; got != want {
		return fmt.Errorf("TTL: rows (calls, calls_by_user) = %v after a merge, want %v (3-day-old call expired, kept 1 day)", got, want)
	}
	drop := callsdb.WithDB(callsdb.DropPartitionStatement(callsdb.Topology{}, "calls", fresh.StartTime.UTC().Format("20060102")), ttlDB)
	if _, err := s.exec(drop, "TabSeparated"); err != nil {
		return err
	}
	if got, err = counts(s, ttlDB); err != nil || got[0] != 0 {
		return fmt.Errorf("after %s: rows %v (err %v), want calls empty", drop, got, err)
	}

	cluster, err := callsdb.ClusterStatements(callsdb.Topology{Cluster: "callpipe_cluster"})
	if err != nil {
		return err
	}
	for _, st := range cluster {
		if _, err := s.exec("EXPLAIN AST "+callsdb.WithDB(st, db), "TabSeparated"); err != nil {
			return fmt.Errorf("cluster DDL does not parse: %w", err)
		}
	}
	for _, st := range []string{
		callsdb.DropPartitionStatement(callsdb.Topology{Cluster: "callpipe_cluster"}, "calls_local", "20261101"),
		"ALTER TABLE {db}.calls_local ON CLUSTER callpipe_cluster MODIFY TTL start_time + toIntervalDay(30)",
	} {
		if _, err := s.exec("EXPLAIN AST "+callsdb.WithDB(st, db), "TabSeparated"); err != nil {
			return fmt.Errorf("cluster DDL does not parse: %w", err)
		}
	}
	fmt.Fprintf(os.Stderr, "chdbcheck: engine %s: TTL, dedup token, partition drop ok; %d cluster statements parse\n", srv.Version, len(cluster)+2)
	return nil
}

func migrateDB(s *session, database string) error {
	migs, err := callsdb.Migrations()
	if err != nil {
		return err
	}
	for _, st := range callsdb.BootstrapStatements {
		if _, err := s.exec(callsdb.WithDB(st, database), "TabSeparated"); err != nil {
			return err
		}
	}
	for _, m := range migs {
		for _, st := range m.Statements {
			if _, err := s.exec(callsdb.WithDB(st, database), "TabSeparated"); err != nil {
				return err
			}
		}
	}
	return nil
}

func engines(s *session, database string) (map[string]string, error) {
	out, err := s.exec(callsdb.WithDB(callsdb.QueryTableEngines, database), "TabSeparated")
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		if name, engine, ok := strings.Cut(line, "\t"); ok {
			m[name] = engine
		}
	}
	return m, nil
}

// counts returns the stored rows of calls and of its user look-up table.
func counts(s *session, database string) ([2]uint64, error) { return countsWhere(s, database, "1") }

func countsWhere(s *session, database, where string) ([2]uint64, error) {
	var c [2]uint64
	for i, t := range []string{"calls", "calls_by_user"} {
		out, err := s.exec("SELECT count() FROM "+database+"."+t+" WHERE "+where, "TabSeparated")
		if err != nil {
			return c, err
		}
		if c[i], err = strconv.ParseUint(strings.TrimSpace(out), 10, 64); err != nil {
			return c, err
		}
	}
	return c, nil
}

// insertWithSettings is valuesSQL with a SETTINGS clause (what the driver
// sends as per-query settings over the native protocol).
func insertWithSettings(insert string, settings map[string]any, rows [][]any) string {
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + " = " + literal(settings[k])
	}
	return valuesSQL(insert+" SETTINGS "+strings.Join(parts, ", "), rows)
}

// valuesSQL renders a batch insert (what the driver sends as a native block)
// as INSERT ... VALUES, since chDB has no native protocol.
func valuesSQL(insert string, rows [][]any) string {
	var b strings.Builder
	b.WriteString(insert)
	b.WriteString(" VALUES ")
	for i, row := range rows {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('(')
		for j, v := range row {
			if j > 0 {
				b.WriteByte(',')
			}
			b.WriteString(literal(v))
		}
		b.WriteByte(')')
	}
	return b.String()
}

func literal(v any) string {
	switch x := v.(type) {
	case nil:
		return "NULL"
	case string:
		return quote(x)
	case time.Time:
		return quote(x.UTC().Format("2006-01-02 15:04:05"))
	case *time.Time:
		if x == nil {
			return "NULL"
		}
		return literal(*x)
	case *uint16:
		if x == nil {
			return "NULL"
		}
		return strconv.FormatUint(uint64(*x), 10)
	case *int64:
		if x == nil {
			return "NULL"
		}
		return strconv.FormatInt(*x, 10)
	case *float64:
		if x == nil {
			return "NULL"
		}
		return strconv.FormatFloat(*x, 'g', -1, 64)
	case []string:
		parts := make([]string, len(x))
		for i, s := range x {
			parts[i] = quote(s)
		}
		return "[" + strings.Join(parts, ",") + "]"
	case uint8, uint16, uint32, uint64, int32, int64, int, bool:
		return fmt.Sprint(x)
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64)
	}
	panic(fmt.Sprintf("chdbcheck: no literal for %T", v))
}

func quote(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `'`, `\'`)
	return "'" + r.Replace(s) + "'"
}

// parseUsage reads UsageQuery's TabSeparated output.
func parseUsage(out string, g callsdb.GroupBy) ([]callsdb.UsageRow, error) {
	var rows []callsdb.UsageRow
	for _, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		if line == "" {
			continue
		}
		f := strings.Split(line, "\t")
		if len(f) != 12 {
			return nil, fmt.Errorf("%d columns in %q", len(f), line)
		}
		var r callsdb.UsageRow
		var err error
		if g.Bucket != callsdb.BucketNone {
			if r.Bucket, err = time.Parse("2006-01-02 15:04:05", f[0]); err != nil {
				return nil, err
			}
		}
		r.Model, r.UserID = f[1], f[2]
		ints := []*int64{&r.InputTokens, &r.OutputTokens, &r.TotalTokens}
		if r.Calls, err = strconv.ParseUint(f[3], 10, 64); err != nil {
			return nil, err
		}
		if r.Errors, err = strconv.ParseUint(f[4], 10, 64); err != nil {
			return nil, err
		}
		for i, p := range ints {
			if *p, err = strconv.ParseInt(f[5+i], 10, 64); err != nil {
				return nil, err
			}
		}
		if r.CostUSD, err = strconv.ParseFloat(f[8], 64); err != nil {
			return nil, err
		}
		if r.LatencyMS, err = parseQ(f[9]); err != nil {
			return nil, err
		}
		if r.TTFTCalls, err = strconv.ParseUint(f[10], 10, 64); err != nil {
			return nil, err
		}
		if r.TTFTCalls > 0 {
			if r.TTFTMS, err = parseQ(f[11]); err != nil {
				return nil, err
			}
		}
		rows = append(rows, r)
	}
	return rows, nil
}

func parseQ(s string) (callsdb.Quantiles, error) {
	var v []float64
	if err := json.Unmarshal([]byte(s), &v); err != nil || len(v) != 3 {
		return callsdb.Quantiles{}, fmt.Errorf("quantiles %q: %v", s, err)
	}
	return callsdb.Quantiles{P50: v[0], P95: v[1], P99: v[2]}, nil
}
