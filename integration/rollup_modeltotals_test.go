package integration

import (
	"context"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/callpipe/callpipe/store/callsdb"
)

// TestRollupModelTotals: an hour seal also writes its rows per model summed
// over sources, with the p50/p95/p99 buckets of their histograms weighed
// (usage_rollup by_user = 3, migration 0007). Reads bucketed by hour and
// keyed by model take a sealed group's percentiles from that row: the same
// answer, to the bucket, as weighing the group's rows at read time, which is
// what hours recorded before 0007 (model_totals = 0, no such rows) still do
// until `rollup rebuild` seals them again.
func TestRollupModelTotals(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	from := time.Now().UTC().Truncate(24*time.Hour).AddDate(0, 0, -3)
	to := from.AddDate(0, 0, 2)
	conn, db, o, sealer := sealedSynthetic(ctx, t, callsdb.SyntheticLoad{Calls: 40_000, From: from, Span: to.Sub(from), Models: 4, Users: 20, DuplicatePercent: 3, Seed: 23})
	ny := loadZone(t, "America/New_York")
	status := func() callsdb.RollupStatus { return rollupStatus(ctx, t, conn, db) }
	if st := status(); st.WithoutModelTotals != 0 || st.SealedHours < 48 {
		t.Fatalf("after rebuild: %d of %d hours without model totals", st.WithoutModelTotals, st.SealedHours)
	}

	// every hour's rows per model hold its calls once, in one row per model;
	// no day has such rows
	var calls, hourRows, hourCalls, dayRows uint64
	if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT toUInt64(uniqExact(id)) FROM %s.calls", db)).Scan(&calls); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, fmt.Sprintf(`SELECT toUInt64(countIf(grain = 1)), toUInt64(sumIf(calls, grain = 1)), toUInt64(countIf(grain != 1)) FROM %[1]s.usage_rollup
WHERE by_user = 3 AND (grain, period, version) IN (SELECT grain, period, max(version) FROM %[1]s.usage_seals GROUP BY grain, period)`, db)).Scan(&hourRows, &hourCalls, &dayRows); err != nil {
		t.Fatal(err)
	}
	if hourCalls != calls || hourRows != 48*4 || dayRows != 0 {
		t.Fatalf("rows per model: %d hour rows holding %d calls (want %d rows, %d calls), %d day rows (want 0)", hourRows, hourCalls, 48*4, calls, dayRows)
	}

	// hour x model and the hours of one model, with percentiles, in UTC and
	// New York, over whole days and a ragged range (per-call edges)
	specs := func() []callsdb.UsageSpec {
		var out []callsdb.UsageSpec
		for _, rg := range [][2]time.Time{{from, to}, {from.Add(5*time.Hour + 20*time.Minute), to.Add(-7 * time.Hour)}} {
			for _, tz := range []string{"", ny.String()} {
				out = append(out,
					callsdb.UsageSpec{From: rg[0], To: rg[1], TZ: tz, Group: callsdb.GroupBy{Bucket: callsdb.BucketHour, Model: true}},
					callsdb.UsageSpec{From: rg[0], To: rg[1], TZ: tz, Group: callsdb.GroupBy{Bucket: callsdb.BucketHour}, Filter: callsdb.UsageFilter{Model: "model-2"}})
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

	// a row added at by_user = 3 to an hour's seal (in the copy without
	// users, which these reads read: every seal has one) is what hour x
	// model reads, and what hour x model x source does not
	var v uint64
	if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT max(version) FROM %s.usage_seals WHERE grain = 1 AND period = toDateTime(%d, 'UTC')", db, from.Unix())).Scan(&v); err != nil {
		t.Fatal(err)
	}
	if err := conn.Exec(ctx, fmt.Sprintf(`INSERT INTO %s.usage_rollup_by_model (grain, by_user, period, model, user_id, source, batch_id, version, calls, latency_q)
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

	// hours as recorded before migration 0007: no rows at by_user = 3,
	// model_totals = 0 (the marker stays in the copy, at a level these
	// reads no longer read). The reads weigh every group's rows and give
	// the same answers.
	sealsAsBefore(ctx, t, conn, db, "model_totals", 3)
	if st := status(); st.WithoutModelTotals != st.SealedHours {
		t.Fatalf("old layout: %d of %d hours without model totals", st.WithoutModelTotals, st.SealedHours)
	}
	if old := read("hours without rows per model"); !reflect.DeepEqual(old, withTotals) {
		t.Fatal("hour x model weighed at read time differs from the buckets weighed by the seals")
	}

	// rebuild seals them again, with the rows per model
	if _, _, err := sealer.Rebuild(ctx, from, to, nil); err != nil {
		t.Fatal(err)
	}
	if st := status(); st.WithoutModelTotals != 0 {
		t.Fatalf("after the second rebuild: %d hours without model totals", st.WithoutModelTotals)
	}
	if again := read("sealed again"); !reflect.DeepEqual(again, withTotals) {
		t.Fatal("hour x model after sealing again differs")
	}
}
