package integration

import (
	"bufio"
	"context"
	"fmt"
	"math"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/integration/internal/testkit"
	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/store/callsdb"
)

// rollupTestCalls is how many distinct calls the scale test loads:
// CALLPIPE_ROLLUP_TEST_CALLS, 10 million by default.
func rollupTestCalls(t *testing.T) uint64 {
	if v := os.Getenv("CALLPIPE_ROLLUP_TEST_CALLS"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("CALLPIPE_ROLLUP_TEST_CALLS=%q: %v", v, err)
		}
		return n
	}
	return 10_000_000
}

// fineKey is the finest grain the oracle keeps: UTC hour, model, user,
// source, batch.
type fineKey struct {
	hour                       int64
	model, user, source, batch string
}

type fineAgg struct {
	calls, errors  uint64
	in, out, total int64
	cost           float64
	ttftCalls      uint64
}

// rollupOracle is the usage of the loaded calls, computed day by day by SQL
// over calls collapsed by id (the newest copy of each), independently of
// the rollups.
type rollupOracle map[fineKey]*fineAgg

func (o rollupOracle) loadDays(t *testing.T, conn driver.Conn, db string, from, to time.Time) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	for k := range o {
		if k.hour >= from.Unix() && k.hour < to.Unix() {
			delete(o, k)
		}
	}
	for d := from; d.Before(to); d = d.Add(24 * time.Hour) {
		rows, err := conn.Query(ctx, fmt.Sprintf(`SELECT toInt64(toUInt32(toStartOfHour(st))) AS h, m, u, s, b,
    toUInt64(count()), toUInt64(sum(e)), toInt64(sum(i)), toInt64(sum(o)), toInt64(sum(tt)), toFloat64(sum(c)), toUInt64(sum(ht))
FROM
(
    SELECT id, argMax(start_time, version) AS st, argMax(model, version) AS m, argMax(user_id, version) AS u,
        argMax(source, version) AS s, argMax(batch_id, version) AS b,
        argMax(toUInt8(status >= 400 OR error != ''), version) AS e, argMax(input_tokens, version) AS i,
        argMax(output_tokens, version) AS o, argMax(total_tokens, version) AS tt, argMax(ifNull(cost_usd, 0.), version) AS c,
        argMax(toUInt8(isNotNull(ttft_ms)), version) AS ht
    FROM %s.calls
    WHERE start_time >= toDateTime(%d, 'UTC') AND start_time < toDateTime(%d, 'UTC')
    GROUP BY id
)
GROUP BY h, m, u, s, b`, db, d.Unix(), min(d.Add(24*time.Hour).Unix(), to.Unix())))
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var k fineKey
			a := &fineAgg{}
			if err := rows.Scan(&k.hour, &k.model, &k.user, &k.source, &k.batch, &a.calls, &a.errors, &a.in, &a.out, &a.total, &a.cost, &a.ttftCalls); err != nil {
				t.Fatal(err)
			}
			o[k] = a
		}
		if err := rows.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// usage aggregates the oracle for one spec (zones with whole-hour offsets:
// hours map into their buckets whole).
func (o rollupOracle) usage(s callsdb.UsageSpec, loc *time.Location) map[string]fineAgg {
	out := map[string]fineAgg{}
	for k, a := range o {
		if k.hour < s.From.Unix() || k.hour >= s.To.Unix() {
			continue
		}
		f := s.Filter
		if (f.Model != "" && k.model != f.Model) || (f.User != "" && k.user != f.User) || (f.Source != "" && k.source != f.Source) || (f.BatchID != "" && k.batch != f.BatchID) {
			continue
		}
		out[oracleKey(s.Group, time.Unix(k.hour, 0).In(loc), k.model, k.user, k.source)] = addAgg(out[oracleKey(s.Group, time.Unix(k.hour, 0).In(loc), k.model, k.user, k.source)], *a)
	}
	return out
}

func addAgg(a, b fineAgg) fineAgg {
	a.calls += b.calls
	a.errors += b.errors
	a.in += b.in
	a.out += b.out
	a.total += b.total
	a.cost += b.cost
	a.ttftCalls += b.ttftCalls
	return a
}

func oracleKey(g callsdb.GroupBy, at time.Time, model, user, source string) string {
	var parts []string
	switch g.Bucket {
	case callsdb.BucketHour:
		parts = append(parts, at.Truncate(time.Hour).Format(time.RFC3339))
	case callsdb.BucketDay:
		y, m, d := at.Date()
		parts = append(parts, time.Date(y, m, d, 0, 0, 0, 0, at.Location()).Format(time.RFC3339))
	}
	if g.Model {
		parts = append(parts, model)
	}
	if g.User {
		parts = append(parts, user)
	}
	if g.Source {
		parts = append(parts, source)
	}
	return strings.Join(parts, "|")
}

// loadSynthetic stores load's calls in db (INSERT ... SELECT) and returns
// the oracle of the days they span.
func loadSynthetic(ctx context.Context, t *testing.T, conn driver.Conn, db string, load callsdb.SyntheticLoad) rollupOracle {
	t.Helper()
	for _, st := range load.Statements(0, load.Calls) {
		if err := conn.Exec(ctx, callsdb.WithDB(st, db)); err != nil {
			t.Fatal(err)
		}
	}
	o := rollupOracle{}
	o.loadDays(t, conn, db, load.From, load.From.Add(load.Span))
	return o
}

// sealedSynthetic stores load's calls in a new test database and seals its
// days as rollup rebuild does.
func sealedSynthetic(ctx context.Context, t *testing.T, load callsdb.SyntheticLoad) (driver.Conn, string, rollupOracle, *callsdb.Sealer) {
	t.Helper()
	out, db := chTestDB(t)
	conn := out.Conn()
	o := loadSynthetic(ctx, t, conn, db, load)
	sealer := &callsdb.Sealer{Conn: conn, Database: db}
	if _, _, err := sealer.Rebuild(ctx, load.From, load.From.Add(load.Span), nil); err != nil {
		t.Fatal(err)
	}
	return conn, db, o, sealer
}

// rollupStatus is `callpipe rollup status` of db now.
func rollupStatus(ctx context.Context, t *testing.T, conn driver.Conn, db string) callsdb.RollupStatus {
	t.Helper()
	st, err := callsdb.Status(ctx, conn, db, callsdb.DefaultSealAfter, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// sealsAsBefore rewrites db's rollups as a release before the migration
// that added usage_seals column sealColumn (0 in every record) and, when
// level >= 0, the usage_rollup rows at by_user = level (none). Tables are
// rewritten: 18.16 has no synchronous update or delete.
func sealsAsBefore(ctx context.Context, t *testing.T, conn driver.Conn, db, sealColumn string, level int) {
	t.Helper()
	var stmts []string
	if level >= 0 {
		stmts = append(stmts,
			"CREATE TABLE {db}.rollup_old AS {db}.usage_rollup",
			fmt.Sprintf("INSERT INTO {db}.rollup_old SELECT * FROM {db}.usage_rollup WHERE by_user != %d", level),
			"TRUNCATE TABLE {db}.usage_rollup",
			"INSERT INTO {db}.usage_rollup SELECT * FROM {db}.rollup_old",
			"DROP TABLE {db}.rollup_old")
	}
	for _, st := range stmts {
		if err := conn.Exec(ctx, callsdb.WithDB(st, db)); err != nil {
			t.Fatalf("%s: %v", st, err)
		}
	}
	sealsRecordedWith(ctx, t, conn, db, sealColumn, 0)
}

// sameUsageAnswers fails unless the answers a and b to reads (labelled
// aWhat and bWhat) are the same rows: costs may differ in their last bits
// (sums in another order), and buckets are compared as instants (a
// bucket's zone is loaded per read).
func sameUsageAnswers(t *testing.T, reads []callsdb.UsageSpec, a, b [][]callsdb.UsageRow, aWhat, bWhat string) {
	t.Helper()
	for i, s := range reads {
		if len(a[i]) != len(b[i]) {
			t.Fatalf("%s %s: %d rows %s, %d %s", s.Group, s.TZ, len(a[i]), aWhat, len(b[i]), bWhat)
		}
		for j := range a[i] {
			x, y := a[i][j], b[i][j]
			same := math.Abs(x.CostUSD-y.CostUSD) <= 1e-9*math.Max(1, math.Abs(y.CostUSD)) && x.Bucket.Equal(y.Bucket)
			x.CostUSD, y.CostUSD, x.Bucket, y.Bucket = 0, 0, time.Time{}, time.Time{}
			if x != y || !same {
				t.Fatalf("%s %s row %d:\n %-12s %+v\n %-12s %+v", s.Group, s.TZ, j, aWhat, a[i][j], bWhat, b[i][j])
			}
		}
	}
}

// sealsRecordedWith sets column sealColumn of every seal record to value.
func sealsRecordedWith(ctx context.Context, t *testing.T, conn driver.Conn, db, sealColumn string, value uint8) {
	t.Helper()
	cols := []string{"grain", "period", "version", "calls", "hour_versions", "sealed_at", "user_copy", "user_totals", "model_totals", "model_copy", "user_over_models"}
	if i := slices.Index(cols, sealColumn); i < 0 {
		t.Fatalf("usage_seals has no column %s", sealColumn)
	} else {
		cols[i] = fmt.Sprintf("toUInt8(%d)", value)
	}
	for _, st := range []string{
		"CREATE TABLE {db}.seals_old AS {db}.usage_seals",
		"INSERT INTO {db}.seals_old SELECT " + strings.Join(cols, ", ") + " FROM {db}.usage_seals",
		"TRUNCATE TABLE {db}.usage_seals",
		"INSERT INTO {db}.usage_seals SELECT * FROM {db}.seals_old",
		"DROP TABLE {db}.seals_old",
	} {
		if err := conn.Exec(ctx, callsdb.WithDB(st, db)); err != nil {
			t.Fatalf("%s: %v", st, err)
		}
	}
}

// checkRollupUsage compares UsageOf with the oracle for every grouping in
// UTC and New York, unfiltered and with filters: counts, errors, tokens and
// TTFT counts exactly, cost to 1e-9 relative. It returns how many answers
// used the sealed rollups.
func checkRollupUsage(t *testing.T, conn driver.Conn, db string, o rollupOracle, from, to time.Time, what string) int {
	return checkRollupUsageEvery(t, conn, db, o, from, to, what, 1)
}

// checkRollupUsageEvery is checkRollupUsage on every nth grouping (the
// phases after the first full check, to keep the test's time in bounds).
func checkRollupUsageEvery(t *testing.T, conn driver.Conn, db string, o rollupOracle, from, to time.Time, what string, nth int) int {
	t.Helper()
	return checkRollupUsageIn(t, conn, db, o, from, to, what, nth, time.UTC, loadZone(t, "America/New_York"))
}

func loadZone(t *testing.T, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

// checkRollupUsageIn is checkRollupUsageEvery in the given zones (whole-hour
// offsets: the oracle maps hours into buckets whole).
func checkRollupUsageIn(t *testing.T, conn driver.Conn, db string, o rollupOracle, from, to time.Time, what string, nth int, zones ...*time.Location) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	sealed := 0
	var worst time.Duration
	began := time.Now()
	for i, g := range append(callsdb.AllGroupings(), callsdb.AllSourceGroupings()...) {
		if i%nth != 0 {
			continue
		}
		for _, loc := range zones {
			s := callsdb.UsageSpec{From: from, To: to, Group: g}
			if loc != time.UTC {
				s.TZ = loc.String()
				// New York days start at 04:00/05:00 UTC: whole hours, so the range
				// stays on hours and the oracle's hours map into the buckets whole
			}
			// the counts are checked; percentiles (checked against exact ones
			// in checkHistogramBound) are merged in a third of the reads
			s.SkipPercentiles = i%3 != 0
			switch i % 4 {
			case 1:
				s.Filter.Model = "model-3"
			case 2:
				s.Filter.User = "user-0"
			case 3:
				s.Filter.Source, s.Filter.BatchID = "batch", fmt.Sprintf("batch-%d", from.Add(24*time.Hour).Unix()/86400)
			}
			t0 := time.Now()
			sealed += checkUsageSpec(ctx, t, conn, db, o, s, loc, what)
			worst = max(worst, time.Since(t0))
		}
	}
	t.Logf("%s: every grouping equals the oracle (%d rows from sealed rollups; slowest answer %s, all in %s)", what, sealed, worst.Round(time.Millisecond), time.Since(began).Round(time.Second))
	return sealed
}

// checkUsageSpec compares the answer to s (buckets in loc) with the
// oracle's, row for row; it returns the rows read from sealed rollups.
func checkUsageSpec(ctx context.Context, t *testing.T, conn driver.Conn, db string, o rollupOracle, s callsdb.UsageSpec, loc *time.Location, what string) (sealed int) {
	t.Helper()
	g := s.Group
	got, err := callsdb.UsageOf(ctx, conn, db, s)
	if err != nil {
		t.Fatalf("%s: usage %s %s: %v", what, g, loc, err)
	}
	want := o.usage(s, loc)
	if len(got) != len(want) {
		t.Fatalf("%s: usage %s %s %+v: %d rows, want %d", what, g, loc, s.Filter, len(got), len(want))
	}
	for _, r := range got {
		if r.Histogram {
			sealed++
		}
		w, ok := want[oracleKey(g, r.Bucket, r.Model, r.UserID, r.Source)]
		if !ok || r.Calls != w.calls || r.Errors != w.errors || r.InputTokens != w.in || r.OutputTokens != w.out ||
			r.TotalTokens != w.total || r.TTFTCalls != w.ttftCalls || math.Abs(r.CostUSD-w.cost) > 1e-9*math.Max(1, math.Abs(w.cost)) {
			t.Fatalf("%s: usage %s %s %+v row %s/%s/%s/%s:\n got  %+v\n want %+v (found %v)", what, g, loc, s.Filter,
				r.Bucket, r.Model, r.UserID, r.Source, r, w, ok)
		}
	}
	return sealed
}

// checkHalfHourZone compares day x model usage in Asia/Kolkata (UTC+5:30:
// its days start inside a UTC hour) with SQL over calls collapsed by id.
func checkHalfHourZone(t *testing.T, conn driver.Conn, db string, from, to time.Time) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	const zone = "Asia/Kolkata"
	loc, err := time.LoadLocation(zone)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][2]int64{}
	for d := from; d.Before(to); d = d.Add(24 * time.Hour) {
		rows, err := conn.Query(ctx, fmt.Sprintf(`SELECT toInt64(toUInt32(toStartOfDay(st, '%s'))) AS b, m, toInt64(count()), toInt64(sum(i))
FROM (SELECT id, argMax(start_time, version) AS st, argMax(model, version) AS m, argMax(input_tokens, version) AS i
    FROM %s.calls WHERE start_time >= toDateTime(%d, 'UTC') AND start_time < toDateTime(%d, 'UTC') GROUP BY id)
GROUP BY b, m`, zone, db, d.Unix(), min(d.Add(24*time.Hour).Unix(), to.Unix())))
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var b, n, in int64
			var m string
			if err := rows.Scan(&b, &m, &n, &in); err != nil {
				t.Fatal(err)
			}
			k := time.Unix(b, 0).In(loc).Format(time.RFC3339) + "|" + m
			w := want[k]
			want[k] = [2]int64{w[0] + n, w[1] + in}
		}
		_ = rows.Close()
	}
	got, err := callsdb.UsageOf(ctx, conn, db, callsdb.UsageSpec{From: from, To: to, TZ: zone, SkipPercentiles: true,
		Group: callsdb.GroupBy{Bucket: callsdb.BucketDay, Model: true}})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("%s days x model: %d rows, want %d", zone, len(got), len(want))
	}
	for _, r := range got {
		if w := want[r.Bucket.Format(time.RFC3339)+"|"+r.Model]; int64(r.Calls) != w[0] || r.InputTokens != w[1] {
			t.Fatalf("%s day %s model %s: %d calls, %d input tokens; want %v", zone, r.Bucket, r.Model, r.Calls, r.InputTokens, w)
		}
	}
	t.Logf("%s (half-hour offset) days x model equal the calls: %d rows", zone, len(got))
}

// checkHistogramBound compares latency and TTFT quantiles read from the
// sealed rollups with exact quantiles of the same calls, within
// HistogramRelativeError, on a few days: per UTC day x model, per UTC day x
// model x user (every user's groups), per hour x model (the buckets weighed
// by each hour's seal), and per New York day x model over three days (day
// rows with edge hours subtracted: signed counts).
func checkHistogramBound(t *testing.T, conn driver.Conn, db string, days ...time.Time) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ny, err := time.LoadLocation("America/New_York")
	if err != nil {
		t.Fatal(err)
	}
	checked, began := 0, time.Now()
	for _, d := range days {
		nyDay := time.Date(d.Year(), d.Month(), d.Day(), 0, 0, 0, 0, ny)
		for _, s := range []callsdb.UsageSpec{
			{From: d, To: d.Add(24 * time.Hour), Group: callsdb.GroupBy{Bucket: callsdb.BucketDay, Model: true}},
			{From: d, To: d.Add(24 * time.Hour), Group: callsdb.GroupBy{Bucket: callsdb.BucketDay, Model: true, User: true}},
			{From: d, To: d.Add(24 * time.Hour), Group: callsdb.GroupBy{Bucket: callsdb.BucketHour, Model: true}},
			{From: nyDay, To: nyDay.AddDate(0, 0, 3), Group: callsdb.GroupBy{Bucket: callsdb.BucketDay, Model: true}, TZ: ny.String()},
		} {
			checked += checkHistogramSpec(ctx, t, conn, db, s)
		}
	}
	t.Logf("histogram quantiles within %.2f%% of exact: %d checked in %s", 100*callsdb.HistogramRelativeError, checked, time.Since(began).Round(time.Second))
}

// checkHistogramSpec checks one usage read's quantiles against exact ones
// (quantilesExact over the calls collapsed by id, grouped the same way: by
// its time buckets, or none, and its model and user keys): within
// HistogramRelativeError, and each the value of the bucket that holds the
// exact quantile.
func checkHistogramSpec(ctx context.Context, t *testing.T, conn driver.Conn, db string, s callsdb.UsageSpec) int {
	t.Helper()
	got, err := callsdb.UsageOf(ctx, conn, db, s)
	if err != nil {
		t.Fatal(err)
	}
	tz := s.TZ
	if tz == "" {
		tz = "UTC"
	}
	user := "''"
	if s.Group.User {
		user = "u"
	}
	bucket := fmt.Sprintf("toUnixTimestamp(toStartOfDay(st, '%s'))", tz)
	switch s.Group.Bucket {
	case callsdb.BucketHour:
		bucket = fmt.Sprintf("toUnixTimestamp(toStartOfHour(st, '%s'))", tz)
	case callsdb.BucketNone:
		bucket = "toUInt32(0)"
	}
	model := "m"
	if !s.Group.Model {
		model = "''"
	}
	rows, err := conn.Query(ctx, fmt.Sprintf(`SELECT %s AS b, %s AS mk, %s AS uk,
    arrayMap(x -> toFloat64(x), quantilesExact(0.5, 0.95, 0.99)(lat)),
    arrayMap(x -> toFloat64(x), quantilesExactIf(0.5, 0.95, 0.99)(tt, ht = 1))
FROM (SELECT id, argMax(start_time, version) AS st, argMax(model, version) AS m, argMax(user_id, version) AS u,
        argMax(latency_ms, version) AS lat, argMax(ifNull(ttft_ms, 0), version) AS tt,
        argMax(toUInt8(isNotNull(ttft_ms)), version) AS ht
    FROM %s.calls WHERE start_time >= toDateTime(%d, 'UTC') AND start_time < toDateTime(%d, 'UTC') GROUP BY id)
GROUP BY b, mk, uk`, bucket, model, user, db, s.From.Unix(), s.To.Unix()))
	if err != nil {
		t.Fatal(err)
	}
	type key struct {
		b    uint32
		m, u string
	}
	exact := map[key][2][]float64{}
	for rows.Next() {
		var k key
		var lat, tt []float64
		if err := rows.Scan(&k.b, &k.m, &k.u, &lat, &tt); err != nil {
			t.Fatal(err)
		}
		exact[k] = [2][]float64{lat, tt}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	_ = rows.Close()
	if len(got) != len(exact) {
		t.Fatalf("%s %s from %s: %d groups, exact %d", s.Group, tz, s.From, len(got), len(exact))
	}
	checked := 0
	for _, r := range got {
		if !r.Histogram {
			t.Fatalf("%s %s from %s: not read from the sealed rollups", s.Group, tz, s.From)
		}
		b := uint32(0) // a read without time buckets: one bucket
		if !r.Bucket.IsZero() {
			b = uint32(r.Bucket.Unix())
		}
		e, ok := exact[key{b, r.Model, r.UserID}]
		if !ok {
			t.Fatalf("%s %s: group %s/%s/%s has no exact counterpart", s.Group, tz, r.Bucket, r.Model, r.UserID)
		}
		for i, q := range [][2]float64{{r.LatencyMS.P50, e[0][0]}, {r.LatencyMS.P95, e[0][1]}, {r.LatencyMS.P99, e[0][2]},
			{r.TTFTMS.P50, e[1][0]}, {r.TTFTMS.P95, e[1][1]}, {r.TTFTMS.P99, e[1][2]}} {
			if q[1] == 0 && q[0] == 0 {
				continue
			}
			if rel := math.Abs(q[0]-q[1]) / q[1]; rel > callsdb.HistogramRelativeError {
				t.Fatalf("%s %s group %s/%s/%s quantile %d: histogram %v, exact %v: relative error %.5f > %.5f",
					s.Group, tz, r.Bucket, r.Model, r.UserID, i, q[0], q[1], rel, callsdb.HistogramRelativeError)
			}
			// Bucketing is monotone, so the bucket holding the exact
			// quantile's rank among the calls' buckets is the bucket of the
			// exact quantile: however a read merges its histograms, it must
			// answer that bucket's value, not just one within the bound.
			if want := callsdb.HistogramValue(callsdb.HistogramBucket(int64(q[1]))); q[0] != want {
				t.Fatalf("%s %s group %s/%s/%s quantile %d: histogram %v, exact %v in the bucket of value %v",
					s.Group, tz, r.Bucket, r.Model, r.UserID, i, q[0], q[1], want)
			}
			checked++
		}
	}
	return checked
}

// runRebuild runs `callpipe rollup rebuild` on db; killAt > 0 SIGKILLs it
// once it reported that many sealed hours.
func runRebuild(t *testing.T, db string, from, to time.Time, killAt int) {
	t.Helper()
	ch := harness.ClickHouse(t)
	cmd := exec.Command(testkit.Binary(t), "rollup", "rebuild", "--from", from.Format(time.RFC3339), "--to", to.Format(time.RFC3339))
	cmd.Env = append(os.Environ(), "CALLPIPE_CLICKHOUSE_ADDR="+ch.Native, "CALLPIPE_CLICKHOUSE_DATABASE="+db, "CALLPIPE_LOG_FORMAT=text")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stdout strings.Builder
	cmd.Stdout = &stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stderr)
	var tail []string
	killed := false
	for sc.Scan() {
		line := sc.Text()
		tail = append(tail[max(0, len(tail)-20):], line)
		var done, total int
		if killAt > 0 && !killed {
			if _, err := fmt.Sscanf(line, "rollup rebuild: %d/%d", &done, &total); err == nil && done >= killAt {
				_ = cmd.Process.Signal(syscall.SIGKILL)
				killed = true
			}
		}
	}
	err = cmd.Wait()
	if killAt > 0 {
		if !killed {
			t.Fatalf("rebuild ended before %d hours: %v\n%s", killAt, err, strings.Join(tail, "\n"))
		}
		return
	}
	if err != nil {
		t.Fatalf("rollup rebuild: %v\n%s\n%s", err, stdout.String(), strings.Join(tail, "\n"))
	}
	t.Logf("%s", strings.TrimSpace(stdout.String()))
}

// TestRollupAtScale loads CALLPIPE_ROLLUP_TEST_CALLS calls (10 million by
// default) over 30 days with INSERT ... SELECT, 2 % of them stored twice,
// and checks that the usage reads equal SQL over calls collapsed by id for
// every grouping: after a rebuild SIGKILLed part-way (sealed and unsealed
// hours mixed), after the rebuild completes, after late calls and
// re-attributed copies land in sealed hours (before and after they are
// sealed again), and after a sealed day is replayed twice. The histogram
// quantiles stay within their bound of exact ones.
func TestRollupAtScale(t *testing.T) {
	n := rollupTestCalls(t)
	out, db := chTestDB(t)
	conn := out.Conn()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	from := time.Now().UTC().Truncate(24*time.Hour).AddDate(0, 0, -32)
	to := from.AddDate(0, 0, 30)
	load := callsdb.SyntheticLoad{Calls: n, From: from, Span: to.Sub(from), Models: 12, Users: 200, DuplicatePercent: 2, Seed: 7}
	t0 := time.Now()
	const chunk = 2_500_000
	for lo := uint64(0); lo < n; lo += chunk {
		for _, st := range load.Statements(lo, min(lo+chunk, n)) {
			if err := conn.Exec(ctx, callsdb.WithDB(st, db)); err != nil {
				t.Fatal(err)
			}
		}
	}
	distinct, stored, err := callsdb.CallCounts(ctx, conn, db)
	if err != nil {
		t.Fatal(err)
	}
	if distinct != n || stored <= n {
		t.Fatalf("loaded %d distinct calls in %d rows, want %d distinct and some copies", distinct, stored, n)
	}
	t.Logf("loaded %d calls (%d rows with copies) in %s", n, stored, time.Since(t0).Round(time.Second))

	o := rollupOracle{}
	t0 = time.Now()
	o.loadDays(t, conn, db, from, to)
	t.Logf("oracle over calls collapsed by id, day by day: %s", time.Since(t0).Round(time.Second))

	// a rebuild killed after 672 of 720 hours: sealed hours, a half-written
	// seal maybe, unsealed hours (read per call: a few keep the check's
	// time in bounds); then the whole rebuild
	runRebuild(t, db, from, to, 672)
	checkRollupUsageEvery(t, conn, db, o, from, to, "rebuild SIGKILLed", 3)
	t0 = time.Now()
	runRebuild(t, db, from, to, 0)
	t.Logf("rebuild of 30 days: %s", time.Since(t0).Round(time.Second))
	st, err := callsdb.Status(ctx, conn, db, callsdb.DefaultSealAfter, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	// 30 days hold at least three whole weeks, which reads without time
	// buckets take from their week seals
	if len(st.Unsealed) != 0 || len(st.Dirty) != 0 || st.SealedDays < 30 || st.SealedWeeks < 3 {
		t.Fatalf("after rebuild: %d unsealed, %d dirty hours, %d days and %d weeks sealed", len(st.Unsealed), len(st.Dirty), st.SealedDays, st.SealedWeeks)
	}
	if sealed := checkRollupUsage(t, conn, db, o, from, to, "sealed"); sealed == 0 {
		t.Fatal("no answer came from the sealed rollups")
	}
	checkHistogramBound(t, conn, db, from.AddDate(0, 0, 3), from.AddDate(0, 0, 17))
	checkHalfHourZone(t, conn, db, from, to)

	// late data into sealed hours: new calls through the sink's output (which
	// marks their hours dirty), and copies of sealed calls re-attributed to
	// another user with a higher version (a replayed, corrected record)
	lateDay := from.AddDate(0, 0, 10)
	var late []schema.Call
	for i := 0; i < 3000; i++ {
		st := lateDay.Add(time.Duration(i%5)*time.Hour + time.Duration(i)*time.Second)
		late = append(late, schema.Call{ID: fmt.Sprintf("late-%d", i), TraceID: fmt.Sprintf("late-%d", i), StartTime: st, EndTime: st.Add(time.Second),
			LatencyMS: 1000 + int64(i%700), Model: "model-late", UserID: "user-0", Source: "online", Status: 200, Kind: "chat",
			InputTokens: 10, OutputTokens: 5, TotalTokens: 15})
	}
	if err := out.WriteBatch(ctx, late); err != nil {
		t.Fatal(err)
	}
	if err := conn.Exec(ctx, copyCallsSQL(db, "'user-reattributed'", 10, lateDay, lateDay.Add(3*time.Hour), "cityHash64(id) % 7 = 0")); err != nil {
		t.Fatal(err)
	}
	var hours []int64
	for h := lateDay; h.Before(lateDay.Add(3 * time.Hour)); h = h.Add(time.Hour) {
		hours = append(hours, h.Unix())
	}
	if err := callsdb.MarkDirty(ctx, conn, db, callsdb.Topology{}, hours, "test re-attribution", time.Now()); err != nil {
		t.Fatal(err)
	}
	o.loadDays(t, conn, db, lateDay, lateDay.Add(24*time.Hour))
	// While hours are dirty and sealed again, the days around them are
	// checked (every grouping); the whole range once all is sealed again.
	lateFrom, lateTo := lateDay.AddDate(0, 0, -1), lateDay.AddDate(0, 0, 2)
	checkRollupUsage(t, conn, db, o, lateFrom, lateTo, "late calls, not sealed again yet")
	sealer := &callsdb.Sealer{Conn: conn, Database: db}
	res, err := sealer.Pass(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.Resealed < 5 {
		t.Fatalf("pass after late data: %+v, want the 5 late hours sealed again", res)
	}
	checkRollupUsage(t, conn, db, o, lateFrom, lateTo, "late calls sealed again within the clock skew of their marks")
	// a mark within ClockSkew of a seal's start keeps its hour dirty: the
	// next pass after the skew seals it again (and then its day)
	time.Sleep(callsdb.ClockSkew + time.Second)
	if _, err = sealer.Pass(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err = callsdb.Status(ctx, conn, db, callsdb.DefaultSealAfter, time.Now()); err != nil || len(st.Dirty) != 0 || len(st.Unsealed) != 0 || st.SealedDays < 30 {
		t.Fatalf("after sealing again: dirty %v, unsealed %v, %d days sealed (err %v)", st.Dirty, st.Unsealed, st.SealedDays, err)
	}
	checkRollupUsage(t, conn, db, o, lateFrom, lateTo, "late calls sealed again")

	// a sealed day replayed twice: every call of the day stored again, twice
	replayDay := from.AddDate(0, 0, 20)
	for i := 0; i < 2; i++ {
		if err := conn.Exec(ctx, copyCallsSQL(db, "user_id", uint64(100+i), replayDay, replayDay.Add(24*time.Hour), "1")); err != nil {
			t.Fatal(err)
		}
	}
	hours = hours[:0]
	for h := replayDay; h.Before(replayDay.Add(24 * time.Hour)); h = h.Add(time.Hour) {
		hours = append(hours, h.Unix())
	}
	if err := callsdb.MarkDirty(ctx, conn, db, callsdb.Topology{}, hours, "replay", time.Now()); err != nil {
		t.Fatal(err)
	}
	// a dirty day is read per call, three copies of each: every third
	// grouping keeps the check's time in bounds
	checkRollupUsageEvery(t, conn, db, o, replayDay.AddDate(0, 0, -1), replayDay.AddDate(0, 0, 2), "day replayed twice, not sealed again yet", 3)
	if _, err := sealer.Pass(ctx); err != nil {
		t.Fatal(err)
	}
	checkRollupUsage(t, conn, db, o, from, to, "day replayed twice, sealed again")
	t.Logf("late day %s and replayed day %s stayed exact", lateDay.Format(time.DateOnly), replayDay.Format(time.DateOnly))
}

// copyCallsSQL stores another copy of the calls of [from, to) matching
// where, with user set to the user expression and the version raised.
func copyCallsSQL(db, user string, addVersion uint64, from, to time.Time, where string) string {
	cols := "id, trace_id, session_id, start_time, start_ms, end_time, end_ms, first_token_time, first_token_ms, latency_ms, ttft_ms, endpoint, kind, model, instance, %s, user_source, api_key_hash, api_key_prefix, stream, status, error, finish_reason, input_text, output_text, input, output, model_parameters, input_tokens, output_tokens, total_tokens, usage_source, cost_usd, metadata, tags, source, batch_id, truncated, inserted_at, %s"
	return fmt.Sprintf("INSERT INTO %s.calls (%s)\nSELECT %s\nFROM %s.calls\nWHERE start_time >= toDateTime(%d, 'UTC') AND start_time < toDateTime(%d, 'UTC') AND %s",
		db, fmt.Sprintf(cols, "user_id", "version"), fmt.Sprintf(cols, user, fmt.Sprintf("version + %d", addVersion)), db, from.Unix(), to.Unix(), where)
}

// addMarkerRow adds a row of 7 calls of model "model-marker" at level 0
// (summed over users, source online) to the seal (grain, period, version)
// in table: what a read that uses that seal's rows from table counts.
func addMarkerRow(ctx context.Context, t *testing.T, conn driver.Conn, db, table string, grain uint8, period time.Time, version uint64) {
	t.Helper()
	if err := conn.Exec(ctx, fmt.Sprintf(`INSERT INTO %s.%s (grain, by_user, period, model, user_id, source, batch_id, version, calls)
SELECT toUInt8(%d), toUInt8(0), toDateTime(%d, 'UTC'), 'model-marker', '', 'online', '', toUInt64(%d), toUInt64(7)`, db, table, grain, period.Unix(), version)); err != nil {
		t.Fatal(err)
	}
}

// markerCalls is the calls of model "model-marker" in the answer to a read
// of [from, to) grouped by g, without percentiles.
func markerCalls(ctx context.Context, t *testing.T, conn driver.Conn, db string, from, to time.Time, g callsdb.GroupBy) uint64 {
	t.Helper()
	return markerCallsOf(ctx, t, conn, db, callsdb.UsageSpec{From: from, To: to, Group: g, SkipPercentiles: true})
}

// markerCallsOf is the calls of model "model-marker" in the answer to s.
func markerCallsOf(ctx context.Context, t *testing.T, conn driver.Conn, db string, s callsdb.UsageSpec) uint64 {
	t.Helper()
	rows, err := callsdb.UsageOf(ctx, conn, db, s)
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, r := range rows {
		if r.Model == "model-marker" {
			n += r.Calls
		}
	}
	return n
}

// addUserMarkerRow adds a row of 7 calls of user "user-marker" (model
// model) at level by_user to the current seal of the UTC day day: the reads
// that count it are the ones that read that level.
func addUserMarkerRow(ctx context.Context, t *testing.T, conn driver.Conn, db string, day time.Time, byUser uint8, model string) {
	t.Helper()
	var v uint64
	if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT max(version) FROM %s.usage_seals WHERE grain = 2 AND period = toDateTime(%d, 'UTC')", db, day.Unix())).Scan(&v); err != nil {
		t.Fatal(err)
	}
	if err := conn.Exec(ctx, fmt.Sprintf(`INSERT INTO %s.usage_rollup (grain, by_user, period, model, user_id, source, batch_id, version, calls)
SELECT toUInt8(2), toUInt8(%d), toDateTime(%d, 'UTC'), '%s', 'user-marker', '', '', toUInt64(%d), toUInt64(7)`, db, byUser, day.Unix(), model, v)); err != nil {
		t.Fatal(err)
	}
}

// userMarked reports whether a read of [from, to) grouped by g counts the
// row addUserMarkerRow added.
func userMarked(ctx context.Context, t *testing.T, conn driver.Conn, db string, from, to time.Time, g callsdb.GroupBy) bool {
	t.Helper()
	rows, err := callsdb.UsageOf(ctx, conn, db, callsdb.UsageSpec{From: from, To: to, Group: g, SkipPercentiles: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rows {
		if r.UserID == "user-marker" {
			return r.Calls == 7
		}
	}
	return false
}

// sealAgain runs the sealer's pass over seals recorded as before a
// migration that added day rows: every day (at least days) is sealed
// again, no hour.
func sealAgain(ctx context.Context, t *testing.T, sealer *callsdb.Sealer, days int) {
	t.Helper()
	res, err := sealer.Pass(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.DaysSealed < days || res.HoursSealed != 0 {
		t.Fatalf("pass over days recorded as before: %d days, %d hours sealed; want the days again (%d), no hour", res.DaysSealed, res.HoursSealed, days)
	}
}
