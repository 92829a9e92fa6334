package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/callpipe/callpipe/store/callsdb"
)

// TestRollupUserOverModels: a day or week seal also writes its totals per
// user summed over models (usage_rollup by_user = 4, migration 0010); reads
// grouped by user alone read them, and answer what the totals per model and
// user (by_user = 2) answer, percentiles to the bucket, equal to the calls
// collapsed by id over whole days, a whole week and ragged ranges. Seals
// recorded before 0010 (no such rows, user_over_models = 0) are read at
// by_user = 2 and sealed again by the sealer's next pass.
func TestRollupUserOverModels(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	// 16 days hold at least one whole week (weeks start on Thursdays, UTC)
	to := time.Now().UTC().Truncate(24*time.Hour).AddDate(0, 0, -1)
	from := to.AddDate(0, 0, -16)
	conn, db, o, sealer := sealedSynthetic(ctx, t, callsdb.SyntheticLoad{Calls: 40_000, From: from, Span: to.Sub(from), Models: 4, Users: 20, DuplicatePercent: 3, Seed: 37})
	ny := loadZone(t, "America/New_York")

	// rows and calls of the current day and week seals at a level
	spanLevel := func(level int) (rows, calls uint64) {
		t.Helper()
		if err := conn.QueryRow(ctx, fmt.Sprintf(`SELECT toUInt64(count()), toUInt64(sum(calls)) FROM %[1]s.usage_rollup
WHERE by_user = %[2]d AND grain != 1
  AND (grain, period, version) IN (SELECT grain, period, max(version) FROM %[1]s.usage_seals GROUP BY grain, period)`, db, level)).Scan(&rows, &calls); err != nil {
			t.Fatal(err)
		}
		return rows, calls
	}
	// hourTotals: the hour seals have their totals per user too (sealed by
	// this build), or none (recorded as before)
	checkLevels := func(what string, hourTotals bool) {
		t.Helper()
		r2, c2 := spanLevel(2)
		r4, c4 := spanLevel(4)
		if r4 == 0 || c4 != c2 || r4 >= r2 {
			t.Fatalf("%s: day and week rows at by_user = 2: %d (%d calls), at 4: %d (%d calls); the totals over models must hold every call in fewer rows", what, r2, c2, r4, c4)
		}
		var hourRows, hourCalls, calls uint64
		if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT toUInt64(countIf(by_user = 4)), toUInt64(sumIf(calls, by_user = 4)), toUInt64(sumIf(calls, by_user = 0)) FROM %s.usage_rollup WHERE grain = 1", db)).Scan(&hourRows, &hourCalls, &calls); err != nil {
			t.Fatal(err)
		}
		if hourTotals && (hourRows == 0 || hourCalls != calls) || !hourTotals && hourRows != 0 {
			t.Fatalf("%s: %d hour rows at by_user = 4 holding %d of %d calls; want every call: %v", what, hourRows, hourCalls, calls, hourTotals)
		}
		t.Logf("%s: day and week rows at by_user 2 / 4: %d / %d (%d calls)", what, r2, r4, c4)
	}
	checkLevels("rebuilt", true)

	ragged := [2]time.Time{from.Add(5 * time.Hour), to.Add(-7 * time.Hour)}
	check := func(what string) {
		t.Helper()
		checkRollupUsageIn(t, conn, db, o, from, to, what+", whole days", 1, time.UTC, ny)
		checkRollupUsageIn(t, conn, db, o, ragged[0], ragged[1], what+", ragged range", 1, time.UTC, ny)
	}
	check("with totals over models")

	// what reads grouped by user alone answer, percentiles included
	reads := []callsdb.UsageSpec{
		{From: from, To: to, Group: callsdb.GroupBy{User: true}},
		{From: ragged[0], To: ragged[1], Group: callsdb.GroupBy{User: true}},
		{From: from, To: to, Group: callsdb.GroupBy{Bucket: callsdb.BucketDay, User: true}},
		{From: from, To: to, Group: callsdb.GroupBy{Bucket: callsdb.BucketDay, User: true}, TZ: ny.String()},
	}
	answers := func() [][]callsdb.UsageRow {
		t.Helper()
		out := make([][]callsdb.UsageRow, len(reads))
		for i, s := range reads {
			rows, err := callsdb.UsageOf(ctx, conn, db, s)
			if err != nil {
				t.Fatal(err)
			}
			sealed := 0
			for _, r := range rows {
				if r.Histogram {
					sealed++
				}
			}
			if sealed == 0 {
				t.Fatalf("%s %s: no row read from sealed rollups", s.Group, s.TZ)
			}
			out[i] = rows
		}
		return out
	}
	overModels := answers()

	// seals as recorded before migration 0010: no rows at by_user = 4,
	// user_over_models = 0 in every record
	sealsAsBefore(ctx, t, conn, db, "user_over_models", 4)
	if rows, _ := spanLevel(4); rows != 0 {
		t.Fatalf("%d day and week rows at by_user = 4 left", rows)
	}
	check("seals without totals over models")
	sameUsageAnswers(t, reads, overModels, answers(), "over models", "per model")

	// the sealer's pass seals those days and weeks again (their hours did
	// not change)
	sealAgain(ctx, t, sealer, 16)
	checkLevels("sealed again", false)
	check("sealed again")

	// the totals over models are what reads grouped by user alone read: a
	// row added at by_user = 4 to the first day's seal shows per user and
	// day, not per model and user
	addUserMarkerRow(ctx, t, conn, db, from, 4, "")
	if !userMarked(ctx, t, conn, db, from, to, callsdb.GroupBy{Bucket: callsdb.BucketDay, User: true}) {
		t.Fatal("user by day was not read from the day's totals over models")
	}
	if userMarked(ctx, t, conn, db, from, to, callsdb.GroupBy{Model: true, User: true}) {
		t.Fatal("model x user read the totals over models, which have no model")
	}
}
