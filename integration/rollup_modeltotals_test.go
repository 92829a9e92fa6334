package integration

import (
	"context"
	"fmt"
	"math"
	"reflect"
	"testing"
	"time"

	"github.com/callpipe/callpipe/store/callsdb"
)

// TestRollupModelTotals: every seal also writes its rows per model summed
// over sources (usage_rollup by_user = 3; hours from migration 0007, days
// from 0008) and its totals, one row summed over everything (by_user = 4,
// 0008), each with the p50/p95/p99 buckets of its histograms weighed. Reads
// without user or source keys read those rows, and a group that is one
// sealed row (an hour of an hour bucket, a day of a day bucket) takes its
// percentiles from it: the same answer, to the bucket, as weighing the
// group's rows at read time, which is what seals recorded before 0007 and
// 0008 (model_totals = 0, totals = 0, no such rows) still do until `rollup
// rebuild` seals them again.
func TestRollupModelTotals(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	from := time.Now().UTC().Truncate(24*time.Hour).AddDate(0, 0, -3)
	to := from.AddDate(0, 0, 2)
	conn, db, o, sealer := sealedSynthetic(ctx, t, callsdb.SyntheticLoad{Calls: 40_000, From: from, Span: to.Sub(from), Models: 4, Users: 20, DuplicatePercent: 3, Seed: 23})
	ny := loadZone(t, "America/New_York")
	status := func() callsdb.RollupStatus { return rollupStatus(ctx, t, conn, db) }
	if st := status(); st.WithoutModelTotals != 0 || st.WithoutTotals != 0 || st.SealedHours < 48 {
		t.Fatalf("after rebuild: %d and %d of %d hours without model totals and totals", st.WithoutModelTotals, st.WithoutTotals, st.SealedHours)
	}

	// every hour's and day's rows per model hold its calls once, in one row
	// per model; its totals in one row
	var calls uint64
	if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT toUInt64(uniqExact(id)) FROM %s.calls", db)).Scan(&calls); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		level, grain, rows uint64
	}{{3, 1, 48 * 4}, {3, 2, 2 * 4}, {4, 1, 48}, {4, 2, 2}} {
		var rows, n uint64
		if err := conn.QueryRow(ctx, fmt.Sprintf(`SELECT toUInt64(count()), toUInt64(sum(calls)) FROM %[1]s.usage_rollup
WHERE by_user = %[2]d AND grain = %[3]d AND length(latency_q) = 3 AND (grain, period, version) IN (SELECT grain, period, max(version) FROM %[1]s.usage_seals GROUP BY grain, period)`, db, c.level, c.grain)).Scan(&rows, &n); err != nil {
			t.Fatal(err)
		}
		if rows != c.rows || n != calls {
			t.Fatalf("level %d grain %d: %d rows with buckets holding %d calls, want %d rows, %d calls", c.level, c.grain, rows, n, c.rows, calls)
		}
	}

	// with percentiles, in UTC and New York, over whole days and a ragged
	// range (per-call edges): hour x model and the hours of one model (rows
	// per model, an hour's group one row), hours and days (totals, a sealed
	// hour's or UTC day's group one row), day x model, model and the totals
	// (groups of several rows at those levels)
	specs := func() []callsdb.UsageSpec {
		var out []callsdb.UsageSpec
		for _, rg := range [][2]time.Time{{from, to}, {from.Add(5*time.Hour + 20*time.Minute), to.Add(-7 * time.Hour)}} {
			for _, tz := range []string{"", ny.String()} {
				for _, g := range []callsdb.GroupBy{{Bucket: callsdb.BucketHour, Model: true}, {Bucket: callsdb.BucketHour}, {Bucket: callsdb.BucketDay},
					{Bucket: callsdb.BucketDay, Model: true}, {Model: true}, {}} {
					out = append(out, callsdb.UsageSpec{From: rg[0], To: rg[1], TZ: tz, Group: g})
				}
				out = append(out, callsdb.UsageSpec{From: rg[0], To: rg[1], TZ: tz, Group: callsdb.GroupBy{Bucket: callsdb.BucketHour}, Filter: callsdb.UsageFilter{Model: "model-2"}})
			}
		}
		return out
	}
	read := func(what string) [][]callsdb.UsageRow {
		t.Helper()
		var all [][]callsdb.UsageRow
		for _, s := range specs() {
			rows, err := callsdb.UsageOf(ctx, conn, db, s)
			if err != nil {
				t.Fatalf("%s: %s %s: %v", what, s.Group, s.TZ, err)
			}
			all = append(all, rows)
		}
		checkRollupUsageIn(t, conn, db, o, from, to, what, 1, time.UTC, ny)
		return all
	}
	withTotals := read("with rows per model")
	checkHistogramBound(t, conn, db, from)

	// seals as recorded before migration 0008: no totals rows (by_user =
	// 4), totals = 0. The reads weigh the rows per model and give the same
	// answers.
	sealsAsBefore(ctx, t, conn, db, "totals", 4)
	if st := status(); st.WithoutTotals != st.SealedHours {
		t.Fatalf("old layout: %d of %d hours without totals", st.WithoutTotals, st.SealedHours)
	}
	sameReads(t, "seals without totals", read("seals without totals"), withTotals, specs())

	// and before 0007: no rows at by_user = 3 either, model_totals = 0.
	// The reads weigh every group's rows and give the same answers.
	sealsAsBefore(ctx, t, conn, db, "model_totals", 3)
	if st := status(); st.WithoutModelTotals != st.SealedHours {
		t.Fatalf("old layout: %d of %d hours without model totals", st.WithoutModelTotals, st.SealedHours)
	}
	sameReads(t, "seals without rows per model and totals", read("seals without rows per model and totals"), withTotals, specs())
	// rebuild seals them again, with the rows per model and the totals
	if _, _, err := sealer.Rebuild(ctx, from, to, nil); err != nil {
		t.Fatal(err)
	}
	if st := status(); st.WithoutModelTotals != 0 || st.WithoutTotals != 0 {
		t.Fatalf("after the second rebuild: %d and %d hours without model totals and totals", st.WithoutModelTotals, st.WithoutTotals)
	}
	sameReads(t, "sealed again", read("sealed again"), withTotals, specs())
	// a row added at by_user = 3 to an hour's seal is what hour x model
	// reads, and what hour x model x source does not
	var v uint64
	if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT max(version) FROM %s.usage_seals WHERE grain = 1 AND period = toDateTime(%d, 'UTC')", db, from.Unix())).Scan(&v); err != nil {
		t.Fatal(err)
	}
	if err := conn.Exec(ctx, fmt.Sprintf(`INSERT INTO %s.usage_rollup (grain, by_user, period, model, user_id, source, batch_id, version, calls, latency_q)
SELECT toUInt8(1), toUInt8(3), toDateTime(%d, 'UTC'), 'model-marker', '', '', '', toUInt64(%d), toUInt64(7), [toUInt16(3), toUInt16(4), toUInt16(5)]`, db, from.Unix(), v)); err != nil {
		t.Fatal(err)
	}
	marker := func(g callsdb.GroupBy) *callsdb.UsageRow {
		t.Helper()
		rows, err := callsdb.UsageOf(ctx, conn, db, callsdb.UsageSpec{From: from, To: to, Group: g})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			if r.Model == "model-marker" {
				return &r
			}
		}
		return nil
	}
	if r := marker(callsdb.GroupBy{Bucket: callsdb.BucketHour, Model: true}); r == nil || r.Calls != 7 || r.LatencyMS.P50 != 3 || r.LatencyMS.P99 != 5 {
		t.Fatalf("hour x model did not read the hour's row per model and its buckets: %+v", r)
	}
	if r := marker(callsdb.GroupBy{Bucket: callsdb.BucketHour, Model: true, Source: true}); r != nil {
		t.Fatalf("hour x model x source read the rows per model, which have no source: %+v", r)
	}
	// a row added at by_user = 4 to the first day's seal is what days and
	// the totals read, and what days by model do not
	dayCalls := func(g callsdb.GroupBy) uint64 {
		t.Helper()
		rows, err := callsdb.UsageOf(ctx, conn, db, callsdb.UsageSpec{From: from, To: from.AddDate(0, 0, 1), Group: g})
		if err != nil {
			t.Fatal(err)
		}
		var n uint64
		for _, r := range rows {
			n += r.Calls
		}
		return n
	}
	byDay, byModel, total := dayCalls(callsdb.GroupBy{Bucket: callsdb.BucketDay}), dayCalls(callsdb.GroupBy{Bucket: callsdb.BucketDay, Model: true}), dayCalls(callsdb.GroupBy{})
	if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT max(version) FROM %s.usage_seals WHERE grain = 2 AND period = toDateTime(%d, 'UTC')", db, from.Unix())).Scan(&v); err != nil {
		t.Fatal(err)
	}
	if err := conn.Exec(ctx, fmt.Sprintf(`INSERT INTO %s.usage_rollup (grain, by_user, period, model, user_id, source, batch_id, version, calls, latency_q)
SELECT toUInt8(2), toUInt8(4), toDateTime(%d, 'UTC'), '', '', '', '', toUInt64(%d), toUInt64(7), [toUInt16(3), toUInt16(4), toUInt16(5)]`, db, from.Unix(), v)); err != nil {
		t.Fatal(err)
	}
	if d, m, tot := dayCalls(callsdb.GroupBy{Bucket: callsdb.BucketDay}), dayCalls(callsdb.GroupBy{Bucket: callsdb.BucketDay, Model: true}), dayCalls(callsdb.GroupBy{}); d != byDay+7 || tot != total+7 || m != byModel {
		t.Fatalf("a totals row added to a day: day %d (was %d), totals %d (was %d), day x model %d (was %d); want the first two 7 more", d, byDay, tot, total, m, byModel)
	}
}

// sameReads fails unless the reads of specs give the same rows, to the
// bucket, as want (what they gave with every level sealed); costs, summed
// in another order, to 1e-9.
func sameReads(t *testing.T, what string, got, want [][]callsdb.UsageRow, specs []callsdb.UsageSpec) {
	t.Helper()
	for i := range want {
		if len(got[i]) != len(want[i]) {
			t.Fatalf("%s: %s %s from %s: %d rows, want %d", what, specs[i].Group, specs[i].TZ, specs[i].From, len(got[i]), len(want[i]))
		}
		for j := range want[i] {
			g := got[i][j]
			if math.Abs(g.CostUSD-want[i][j].CostUSD) <= 1e-9*math.Abs(want[i][j].CostUSD) { // sums of costs in another order
				g.CostUSD = want[i][j].CostUSD
			}
			if !reflect.DeepEqual(g, want[i][j]) {
				t.Fatalf("%s: %s %s from %s, row %d:\n got  %+v\n want %+v (weighed by the seals)", what, specs[i].Group, specs[i].TZ, specs[i].From, j, got[i][j], want[i][j])
			}
		}
	}
}
