// Package usagebench is `callpipe bench usage`: it bulk-loads synthetic calls
// into a scratch ClickHouse database (callsdb.SyntheticLoad, INSERT ... SELECT
// inside the server), seals every hour of them (callsdb.Sealer.Rebuild) and
// times the usage overview shapes the dashboard sends and the call list,
// with the server's peak memory of each query (system.query_log).
//
// It measures; it never asserts a speed. Targets (Targets) are reported as
// met or missed.
package usagebench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/callpipe/callpipe/internal/defaults"
	"github.com/callpipe/callpipe/store/callsdb"
)

// Options is one benchmark run.
type Options struct {
	Calls      uint64 // distinct calls loaded
	Days       int    // they start evenly over the Days before the start of the run
	Models     int
	Users      int
	DupPercent int // percent of calls stored twice (a redelivered copy)
	Seed       uint64
	Repeat     int    // runs of every query shape (min and median are reported)
	ChunkCalls uint64 // calls per load statement (progress granularity; default 5M)
	// LiveHours > 0 also times the overview shapes with the last LiveHours
	// hours of data marked dirty, i.e. read from the per-call rows as the
	// hours inside the redelivery horizon are in production.
	LiveHours int
	PageSize  int // call list page size (default 50, the dashboard's)
	// QueryTimeout bounds one timed query (default 2m); a query that runs
	// longer is killed and reported as failed.
	QueryTimeout time.Duration
	SealAfter    time.Duration // the sealer's horizon (callsdb.DefaultSealAfter when 0)
	// Zones are sealed as local days too (clickhouse.rollup.zones).
	Zones    []*time.Location
	Keep     bool   // keep the scratch database
	Database string // default callpipe_bench_usage_<random>
	// Reuse measures the calls and seals already in Database (a database
	// kept by an earlier run) without loading or sealing; the run's clock
	// is the newest stored call, so the ranges are the earlier run's. The
	// database is kept.
	Reuse bool
	Now   func() time.Time
	Out   io.Writer // progress and the report (default io.Discard)
}

// Check refuses options no run can have, naming the flags of `callpipe
// bench usage`.
func (o Options) Check() error {
	if o.Calls < 1 || o.Days < 1 || o.Models < 1 || o.Users < 1 || o.DupPercent < 0 || o.DupPercent > 100 || o.Repeat < 1 || o.LiveHours < 0 {
		return errors.New("need --calls, --days, --models, --users, --repeat >= 1, --live-hours >= 0 and 0 <= --dup-percent <= 100")
	}
	return nil
}

// Report is the result of a run; `callpipe bench usage --json` writes it.
type Report struct {
	RunID       string    `json:"run_id"`
	Database    string    `json:"database"`
	Kept        bool      `json:"kept"`
	Server      string    `json:"server_version"`
	MachineCPUs int       `json:"machine_cpus"`
	Calls       uint64    `json:"calls"`
	Days        int       `json:"days"`
	Models      int       `json:"models"`
	Users       int       `json:"users"`
	DupPercent  int       `json:"dup_percent"`
	Seed        uint64    `json:"seed"`
	Repeat      int       `json:"repeat"`
	From        time.Time `json:"from"` // the loaded calls start in [From, To)
	To          time.Time `json:"to"`

	Load   LoadResult   `json:"load"`
	Stored StoredResult `json:"stored"`
	Seal   SealResult   `json:"seal"`

	HeavyUser      string `json:"heavy_user"` // most calls over the loaded range
	HeavyUserCalls uint64 `json:"heavy_user_calls"`
	RareUser       string `json:"rare_user"` // fewest calls (at least one)
	RareUserCalls  uint64 `json:"rare_user_calls"`

	// LoadAverage is the machine's 1-minute load average before each phase
	// (load, seal, measure, end): other work on the machine skews the times.
	LoadAverage map[string]float64 `json:"load_average,omitempty"`

	Queries []QueryResult  `json:"queries"`
	Targets []TargetResult `json:"targets"`
}

// LoadResult is the bulk load.
type LoadResult struct {
	Statements int `json:"statements"`
	// RowsWritten is the INSERTs' written_rows in system.query_log: the calls
	// rows, copies included, on 18.16 (later servers may add the rows the
	// calls_by_user view wrote).
	RowsWritten uint64  `json:"rows_written"`
	Seconds     float64 `json:"seconds"`
	CallsPerS   float64 `json:"calls_per_s"`
}

// StoredResult is what the scratch database holds after the load.
type StoredResult struct {
	DistinctCalls uint64 `json:"distinct_calls"` // uniqExact(id), counted day by day
	Rows          uint64 `json:"rows"`           // stored rows (copies not merged away yet included)
	CallsBytes    uint64 `json:"calls_bytes_on_disk"`
	DatabaseBytes uint64 `json:"database_bytes_on_disk"`
	CallsParts    uint64 `json:"calls_active_parts"`
}

// SealResult is callsdb.Sealer.Rebuild over the loaded range.
type SealResult struct {
	Hours       int     `json:"hours"`
	Seconds     float64 `json:"seconds"`
	SealedCalls uint64  `json:"sealed_calls"` // the calls of the current hour seals
	CallsPerS   float64 `json:"calls_per_s"`  // SealedCalls / Seconds
	// UsageTotalCalls is the usage overview's call count over the whole
	// loaded range (read through the seals): it must equal DistinctCalls.
	UsageTotalCalls uint64  `json:"usage_total_calls"`
	RollupRows      uint64  `json:"rollup_rows"`
	RollupBytes     uint64  `json:"rollup_bytes_on_disk"`
	SecondsPerHour  float64 `json:"seconds_per_hour"`
}

// QueryResult is one query shape, run Repeat times.
type QueryResult struct {
	Name   string `json:"name"`
	Kind   string `json:"kind"` // usage or calls
	Range  string `json:"range"`
	TZ     string `json:"tz"`
	Group  string `json:"group_by,omitempty"`
	Filter string `json:"filter,omitempty"`
	State  string `json:"state"` // sealed: every loaded hour sealed; live: the last hours dirty
	// Percentiles: the usage request asks for latency and TTFT percentiles
	// (the API's default); the dashboard asks without (percentiles=false).
	Percentiles bool `json:"percentiles"`
	Rows        int  `json:"rows"` // rows (groups or calls) of the answer

	Runs     int       `json:"runs"`
	WallMS   []float64 `json:"wall_ms"` // client wall time of each run
	MinMS    float64   `json:"min_ms"`
	MedianMS float64   `json:"median_ms"`
	MaxMS    float64   `json:"max_ms"`
	// ServerMS is the median over runs of the server's query_duration_ms,
	// summed over the statements of a run (UsageOf also reads the seals).
	ServerMS float64 `json:"server_ms"`
	// MemoryBytes is the largest peak memory of one statement over all runs
	// (system.query_log memory_usage); MemoryMedian the median over runs.
	MemoryBytes  uint64 `json:"memory_bytes"`
	MemoryMedian uint64 `json:"memory_median_bytes"`
	Statements   uint64 `json:"statements"` // statements of one run (UsageOf also reads seals and dirty marks)
	ReadRows     uint64 `json:"read_rows"`  // the most of one run, summed over its statements
	Error        string `json:"error,omitempty"`
	Skipped      string `json:"skipped,omitempty"` // why the shape did not run (not a failure)
}

// TargetResult is one target of the issue, measured.
type TargetResult struct {
	Name  string  `json:"name"`
	Limit float64 `json:"limit"`
	Unit  string  `json:"unit"`
	Worst float64 `json:"worst"` // the worst value among the shapes it covers
	Of    string  `json:"of"`    // the shape with the worst value
	Met   bool    `json:"met"`
}

// The targets of the issue (at 100 M calls on a 2-core machine).
const (
	TargetOverviewMS     = 300
	TargetMemoryBytes    = 1 << 30
	TargetCallListMS     = 300
	TargetSealCallsPerS  = 50000
	defaultChunkCalls    = 5_000_000
	defaultQueryTimeout  = 2 * time.Minute
	defaultCallListLimit = 50
)

type runner struct {
	o     Options
	conn  driver.Conn
	db    string
	runID string
	out   io.Writer
	seq   int
	start time.Time // the run's clock: loaded calls end here
	// sealed is the time of the newest seal version or dirty mark in a
	// reused database (the run that sealed it ran its sealer on its own
	// sealClock, ahead of this run's)
	sealed time.Time
	sealer *callsdb.Sealer
}

// NewDatabaseName is a fresh scratch database name.
func NewDatabaseName() (name, runID string) {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	runID = hex.EncodeToString(b)
	return "callpipe_bench_usage_" + runID, runID
}

// Run loads, seals and measures; it drops the scratch database at the end
// unless o.Keep. conn must reach the server with the rights to create a
// database.
func Run(ctx context.Context, conn driver.Conn, o Options) (rep *Report, err error) {
	if err := o.Check(); err != nil {
		return nil, fmt.Errorf("bench usage: %w", err)
	}
	o.ChunkCalls = defaults.IfNotPositive(o.ChunkCalls, defaultChunkCalls)
	o.PageSize = defaults.IfNotPositive(o.PageSize, defaultCallListLimit)
	o.QueryTimeout = defaults.IfNotPositive(o.QueryTimeout, defaultQueryTimeout)
	o.SealAfter = defaults.IfNotPositive(o.SealAfter, callsdb.DefaultSealAfter)
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	if o.Reuse && o.Database == "" {
		return nil, errors.New("bench usage: reuse needs the database of an earlier run")
	}
	o.Keep = o.Keep || o.Reuse
	r := &runner{o: o, conn: conn, out: o.Out}
	r.db, r.runID = NewDatabaseName()
	if o.Database != "" {
		r.db = o.Database
	}
	r.start = o.Now().UTC().Truncate(time.Second)
	if o.Reuse {
		var last int64
		if err := conn.QueryRow(ctx, callsdb.WithDB("SELECT toInt64(toUInt32(max(start_time))) FROM {db}.calls", r.db)).Scan(&last); err != nil || last == 0 {
			return nil, fmt.Errorf("bench usage: reuse %s: no stored calls (%v)", r.db, err)
		}
		r.start = time.Unix(last+1, 0).UTC()
		var newest uint64
		if err := conn.QueryRow(ctx, callsdb.WithDB("SELECT greatest((SELECT max(version) FROM {db}.usage_seals), (SELECT toUInt64(max(marked_at)) FROM {db}.usage_dirty_hours))", r.db)).Scan(&newest); err != nil {
			return nil, fmt.Errorf("bench usage: reuse %s: newest seal or dirty mark: %w", r.db, err)
		}
		r.sealed = time.Unix(0, int64(newest)).UTC()
	}
	from := r.start.Add(-time.Duration(o.Days) * 24 * time.Hour)
	rep = &Report{RunID: r.runID, Database: r.db, Kept: o.Keep, MachineCPUs: runtime.NumCPU(), Calls: o.Calls, Days: o.Days,
		Models: o.Models, Users: o.Users, DupPercent: o.DupPercent, Seed: o.Seed, Repeat: o.Repeat, From: from, To: r.start}
	if err := conn.QueryRow(ctx, "SELECT version()").Scan(&rep.Server); err != nil {
		return nil, fmt.Errorf("bench usage: server version: %w", err)
	}
	r.say("bench usage  run %s: %d calls over %d days (%d models, %d users, %d%% stored twice) into %s on ClickHouse %s, %d CPUs",
		r.runID, o.Calls, o.Days, o.Models, o.Users, o.DupPercent, r.db, rep.Server, rep.MachineCPUs)
	if _, err := (&callsdb.Migrator{Conn: conn, Database: r.db}).Up(ctx); err != nil {
		return nil, fmt.Errorf("bench usage: migrate %s: %w", r.db, err)
	}
	defer func() {
		if o.Keep {
			r.say("kept         database %s", r.db)
			return
		}
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Minute)
		defer cancel()
		if derr := DropDatabase(dctx, conn, r.db); derr != nil {
			err = errors.Join(err, derr)
		}
	}()
	rep.LoadAverage = map[string]float64{}
	load := callsdb.SyntheticLoad{Calls: o.Calls, From: from, Span: r.start.Sub(from), Models: o.Models, Users: o.Users,
		DuplicatePercent: o.DupPercent, Seed: o.Seed}
	if !o.Reuse {
		loadAverage(rep, "load")
		if err := r.load(ctx, load, rep); err != nil {
			return rep, err
		}
	}
	if err := r.stored(ctx, rep); err != nil {
		return rep, err
	}
	if !o.Reuse {
		loadAverage(rep, "seal")
		if err := r.seal(ctx, rep); err != nil {
			return rep, err
		}
	} else {
		r.sealer = r.newSealer()
		if err := r.catchUp(ctx); err != nil {
			return rep, err
		}
		if err := r.dropSuperseded(ctx, from, r.start); err != nil {
			return rep, err
		}
		if err := r.users(ctx, rep); err != nil {
			return rep, err
		}
	}
	loadAverage(rep, "measure")
	if err := r.measure(ctx, rep); err != nil {
		return rep, err
	}
	loadAverage(rep, "end")
	rep.Targets = targets(rep)
	return rep, nil
}

func (r *runner) say(format string, args ...any) { fmt.Fprintf(r.out, format+"\n", args...) }

// queryCtx tags a statement: log_queries (an integer setting, accepted per
// query by 18.16 and modern servers alike) and a query id to find its
// system.query_log rows.
func (r *runner) queryCtx(ctx context.Context, id string) context.Context {
	return ch.Context(ctx, ch.WithQueryID(id), ch.WithSettings(ch.Settings{"log_queries": 1}))
}

func (r *runner) nextID(kind string) string {
	r.seq++
	return fmt.Sprintf("bench-usage-%s-%s-%d", r.runID, kind, r.seq)
}

func (r *runner) load(ctx context.Context, l callsdb.SyntheticLoad, rep *Report) error {
	start := time.Now()
	ids := map[string]int{}
	for lo := uint64(0); lo < l.Calls; lo += r.o.ChunkCalls {
		hi := min(lo+r.o.ChunkCalls, l.Calls)
		for _, stmt := range l.Statements(lo, hi) {
			id := r.nextID("load")
			ids[id] = 1
			if err := r.conn.Exec(r.queryCtx(ctx, id), callsdb.WithDB(stmt, r.db)); err != nil {
				return fmt.Errorf("bench usage: load calls [%d, %d): %w", lo, hi, err)
			}
			rep.Load.Statements++
		}
		el := time.Since(start).Seconds()
		r.say("load         %11d / %d calls  %6.1fs  %8.0f calls/s", hi, l.Calls, el, float64(hi)/el)
	}
	rep.Load.Seconds = time.Since(start).Seconds()
	rep.Load.CallsPerS = float64(l.Calls) / rep.Load.Seconds
	logs, err := r.queryLog(ctx, ids)
	if err != nil {
		return err
	}
	for id := range ids {
		rep.Load.RowsWritten += logs[id].writtenRows
	}
	return nil
}

// stored counts what the database holds: distinct ids day by day (copies
// of a call share its start time, so days never split a call, and one
// day's ids fit in memory at any scale the disk allows).
func (r *runner) stored(ctx context.Context, rep *Report) error {
	t := time.Now()
	for d := rep.From.Truncate(24 * time.Hour); d.Before(rep.To); d = d.Add(24 * time.Hour) {
		var distinct, rows uint64
		q := fmt.Sprintf(`SELECT toUInt64(uniqExact(id)), toUInt64(count()) FROM %s.calls WHERE start_time >= toDateTime(%d, 'UTC') AND start_time < toDateTime(%d, 'UTC')`,
			r.db, d.Unix(), d.Add(24*time.Hour).Unix())
		if err := r.conn.QueryRow(ctx, q).Scan(&distinct, &rows); err != nil {
			return fmt.Errorf("bench usage: count calls: %w", err)
		}
		rep.Stored.DistinctCalls += distinct
		rep.Stored.Rows += rows
	}
	var err error
	if rep.Stored.CallsBytes, rep.Stored.CallsParts, err = r.tableBytes(ctx, "calls"); err != nil {
		return err
	}
	if rep.Stored.DatabaseBytes, _, err = r.tableBytes(ctx, ""); err != nil {
		return err
	}
	r.say("stored       %d distinct calls, %d rows, calls %s on disk in %d parts, database %s  (counted in %.1fs)",
		rep.Stored.DistinctCalls, rep.Stored.Rows, gib(rep.Stored.CallsBytes), rep.Stored.CallsParts, gib(rep.Stored.DatabaseBytes), time.Since(t).Seconds())
	return nil
}

// tableBytes is the bytes on disk and active parts of one table ("" = the
// whole database).
func (r *runner) tableBytes(ctx context.Context, table string) (bytes, parts uint64, err error) {
	where := "database = " + callsdb.SQLString(r.db) + " AND active"
	if table != "" {
		where += " AND table = " + callsdb.SQLString(table)
	}
	// bytes: the 18.16 name of bytes_on_disk (modern servers keep it as an alias)
	q := "SELECT toUInt64(sum(bytes)), toUInt64(count()) FROM system.parts WHERE " + where
	if err := r.conn.QueryRow(ctx, q).Scan(&bytes, &parts); err != nil {
		return 0, 0, fmt.Errorf("bench usage: system.parts: %w", err)
	}
	return bytes, parts, nil
}

// sealClock is the sealer's clock: late enough that every hour holding a
// loaded call is past the horizon, and after every seal a reused database
// holds (a seal at an older version than the current one would not count).
func (r *runner) sealClock() time.Time {
	clock := r.start.Truncate(time.Hour).Add(time.Hour + r.o.SealAfter + time.Minute)
	if next := r.sealed.Add(time.Minute).Truncate(time.Minute); next.After(clock) {
		return next
	}
	return clock
}

// newSealer is the run's sealer, on sealClock.
func (r *runner) newSealer() *callsdb.Sealer {
	now := r.sealClock()
	return &callsdb.Sealer{Conn: r.conn, Database: r.db, SealAfter: r.o.SealAfter, Zones: r.o.Zones, Now: func() time.Time { return now }}
}

// catchUp runs one sealer pass over a reused database, as the clickhouse
// stage does first after an upgrade: seals recorded by an older build
// without rows this build reads (totals per user over models, say) are
// sealed again, so that the run measures what this build reads.
func (r *runner) catchUp(ctx context.Context) error {
	start := time.Now()
	res, err := r.sealer.Pass(ctx)
	if err != nil {
		return fmt.Errorf("bench usage: seal pass over %s: %w", r.db, err)
	}
	// a pass seals a few four weeks; the stage's next passes the rest
	first, fourWeeks := res, res.FourWeeksSealed
	for passes := 1; res.FourWeeksSealed > 0 && passes < 100; passes++ {
		if res, err = r.sealer.Pass(ctx); err != nil {
			return fmt.Errorf("bench usage: seal pass over %s: %w", r.db, err)
		}
		fourWeeks += res.FourWeeksSealed
	}
	r.say("seal pass    %d hours, %d days, %d days so far, %d weeks, %d four weeks sealed (again), %d hours dirty, in %s", first.HoursSealed, first.DaysSealed, first.DaysSoFarSealed, first.WeeksSealed, fourWeeks, res.DirtyHours, time.Since(start).Round(time.Second))
	return nil
}

// dropSuperseded deletes the rows of seals sealed again (a day so far each
// hour), as the clickhouse stage does Grace after, and waits for the
// deletes: the reads measured then see what they see in production between
// two passes, not the versions of every earlier run on this database.
func (r *runner) dropSuperseded(ctx context.Context, from, to time.Time) error {
	later := r.sealClock().Add(24 * time.Hour)
	cleaner := &callsdb.Sealer{Conn: r.conn, Database: r.db, Now: func() time.Time { return later }}
	n, err := cleaner.Cleanup(ctx, from.Add(-30*24*time.Hour).Unix(), to.Add(24*time.Hour).Unix())
	if err != nil {
		return fmt.Errorf("bench usage: delete superseded seals: %w", err)
	}
	q := "SELECT toUInt64(count()) FROM system.mutations WHERE database = " + callsdb.SQLString(r.db) + " AND is_done = 0"
	for {
		var pending uint64
		if err := r.conn.QueryRow(ctx, q).Scan(&pending); err != nil {
			return fmt.Errorf("bench usage: wait for deletes: %w", err)
		}
		if pending == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	if n > 0 {
		r.say("superseded   %d seals sealed again deleted, as the stage does Grace later", n)
	}
	return nil
}

func (r *runner) seal(ctx context.Context, rep *Report) error {
	r.sealer = r.newSealer()
	start := time.Now()
	last := start
	hours, _, err := r.sealer.Rebuild(ctx, rep.From, rep.To, func(done, total int, h time.Time) {
		if time.Since(last) >= 10*time.Second || done == total {
			last = time.Now()
			el := time.Since(start).Seconds()
			r.say("seal         %4d / %d hours (%s)  %6.1fs  %.2fs/hour", done, total, h.Format("2006-01-02T15Z"), el, el/float64(done))
		}
	})
	if err != nil {
		return fmt.Errorf("bench usage: rebuild: %w", err)
	}
	rep.Seal.Hours = hours
	rep.Seal.Seconds = time.Since(start).Seconds()
	q := fmt.Sprintf(`SELECT toUInt64(sum(c)) FROM (SELECT argMax(calls, version) AS c FROM %s.usage_seals WHERE grain = 1 GROUP BY period)`, r.db)
	if err := r.conn.QueryRow(ctx, q).Scan(&rep.Seal.SealedCalls); err != nil {
		return fmt.Errorf("bench usage: sealed calls: %w", err)
	}
	rep.Seal.CallsPerS = float64(rep.Seal.SealedCalls) / rep.Seal.Seconds
	if hours > 0 {
		rep.Seal.SecondsPerHour = rep.Seal.Seconds / float64(hours)
	}
	q = fmt.Sprintf(`SELECT toUInt64(count()) FROM %s.usage_rollup`, r.db)
	if err := r.conn.QueryRow(ctx, q).Scan(&rep.Seal.RollupRows); err != nil {
		return fmt.Errorf("bench usage: rollup rows: %w", err)
	}
	if rep.Seal.RollupBytes, _, err = r.tableBytes(ctx, "usage_rollup"); err != nil {
		return err
	}
	r.say("seal         %d hours in %.1fs: %d calls sealed, %.0f calls/s; %d rollup rows (%s)",
		hours, rep.Seal.Seconds, rep.Seal.SealedCalls, rep.Seal.CallsPerS, rep.Seal.RollupRows, gib(rep.Seal.RollupBytes))
	return r.users(ctx, rep)
}

// users reads the usage overview by user over the whole loaded range
// (through the seals): its total must be the distinct calls, and it names
// the heaviest and the rarest user for the filtered shapes.
func (r *runner) users(ctx context.Context, rep *Report) error {
	rows, err := callsdb.UsageOf(ctx, r.conn, r.db, callsdb.UsageSpec{From: rep.From.Truncate(time.Hour), To: rep.To.Truncate(time.Hour).Add(time.Hour),
		Group: callsdb.GroupBy{User: true}})
	if err != nil {
		return fmt.Errorf("bench usage: usage by user over the loaded range: %w", err)
	}
	for _, x := range rows {
		rep.Seal.UsageTotalCalls += x.Calls
		if x.Calls > rep.HeavyUserCalls {
			rep.HeavyUser, rep.HeavyUserCalls = x.UserID, x.Calls
		}
		if x.Calls > 0 && (rep.RareUserCalls == 0 || x.Calls < rep.RareUserCalls) {
			rep.RareUser, rep.RareUserCalls = x.UserID, x.Calls
		}
	}
	r.say("users        usage total %d calls of %d users; heaviest %s (%d calls), rarest %s (%d calls)", rep.Seal.UsageTotalCalls, len(rows), rep.HeavyUser, rep.HeavyUserCalls, rep.RareUser, rep.RareUserCalls)
	return nil
}

// DropDatabase drops a scratch database: materialized views first, then the
// tables, then the database (18.16 can hang in a DROP DATABASE that meets a
// materialized view whose source table it already dropped).
func DropDatabase(ctx context.Context, conn driver.Conn, db string) error {
	rows, err := conn.Query(ctx, "SELECT name, engine FROM system.tables WHERE database = "+callsdb.SQLString(db))
	if err != nil {
		return fmt.Errorf("bench usage: drop %s: %w", db, err)
	}
	var views, tables []string
	for rows.Next() {
		var name, engine string
		if err := rows.Scan(&name, &engine); err != nil {
			rows.Close()
			return fmt.Errorf("bench usage: drop %s: %w", db, err)
		}
		if engine == "MaterializedView" {
			views = append(views, name)
		} else {
			tables = append(tables, name)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("bench usage: drop %s: %w", db, err)
	}
	for _, t := range append(views, tables...) {
		if err := conn.Exec(ctx, "DROP TABLE IF EXISTS "+db+"."+quoteIdent(t)); err != nil {
			return fmt.Errorf("bench usage: drop %s.%s: %w", db, t, err)
		}
	}
	if err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+db); err != nil {
		return fmt.Errorf("bench usage: drop %s: %w", db, err)
	}
	return nil
}

func quoteIdent(s string) string { return "`" + strings.ReplaceAll(s, "`", "\\`") + "`" }

// logRow is what system.query_log says about the statements of one load
// statement or timed run.
type logRow struct {
	statements  uint64
	durationMS  uint64 // summed
	memory      uint64 // largest peak of one statement
	readRows    uint64
	writtenRows uint64
	exception   string
}

// queryLog reads the query_log rows of the statements in want (run or
// statement id -> statements issued under it). A statement's finish row can
// reach the log just after the client has its answer, so it flushes and
// reads again (for up to 10 s) until every statement is there.
func (r *runner) queryLog(ctx context.Context, want map[string]int) (map[string]logRow, error) {
	out := map[string]logRow{}
	for attempt := 0; len(want) > 0; attempt++ {
		if err := r.conn.Exec(ctx, "SYSTEM FLUSH LOGS"); err != nil {
			return nil, fmt.Errorf("bench usage: SYSTEM FLUSH LOGS: %w", err)
		}
		var err error
		if out, err = r.readQueryLog(ctx, want); err != nil {
			return nil, err
		}
		missing := 0
		for id, n := range want {
			if out[id].statements < uint64(n) {
				missing++
			}
		}
		if missing == 0 || attempt == 40 {
			if missing > 0 {
				r.say("note         system.query_log lacks statements of %d runs after 10 s: their memory and server time are partial", missing)
			}
			break
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	return out, nil
}

func (r *runner) readQueryLog(ctx context.Context, want map[string]int) (map[string]logRow, error) {
	// A timed run's statements have ids <run id>-s<n> (taggedConn). Only
	// finish rows count (QueryStart rows carry nothing); type is UInt8 on
	// 18.16 and an Enum8 later, hence toString.
	q := fmt.Sprintf(`SELECT replaceRegexpOne(query_id, '-s[0-9]+$', '') AS run_id,
    toUInt64(count()), toUInt64(sum(query_duration_ms)), toUInt64(max(memory_usage)),
    toUInt64(sum(read_rows)), toUInt64(sum(written_rows)), max(exception)
FROM system.query_log
WHERE event_date >= toDate(toDateTime(%d, 'UTC')) AND query_id LIKE %s
  AND toString(type) IN ('2', '3', '4', 'QueryFinish', 'ExceptionBeforeStart', 'ExceptionWhileProcessing')
GROUP BY run_id`, r.start.Add(-24*time.Hour).Unix(), callsdb.SQLString("bench-usage-"+r.runID+"-%"))
	rows, err := r.conn.Query(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("bench usage: system.query_log: %w", err)
	}
	defer rows.Close()
	out := map[string]logRow{}
	for rows.Next() {
		var id string
		var l logRow
		if err := rows.Scan(&id, &l.statements, &l.durationMS, &l.memory, &l.readRows, &l.writtenRows, &l.exception); err != nil {
			return nil, fmt.Errorf("bench usage: system.query_log: %w", err)
		}
		if _, ok := want[id]; ok {
			out[id] = l
		}
	}
	return out, rows.Err()
}

// loadAverage records the 1-minute load average (Linux; nothing elsewhere).
func loadAverage(rep *Report, phase string) {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return
	}
	if v, err := strconv.ParseFloat(f[0], 64); err == nil {
		rep.LoadAverage[phase] = v
	}
}

func gib(b uint64) string {
	switch {
	case b >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(b)/(1<<30))
	default:
		return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
	}
}
