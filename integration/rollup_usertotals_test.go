package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/callpipe/callpipe/store/callsdb"
)

// TestRollupUserTotals: a day seal also writes its rows per model and user
// summed over sources and batches (usage_rollup by_user = 2, migration
// 0006); reads grouped by user without source read them, and every grouping
// still equals the calls collapsed by id, over whole days and ragged
// ranges. Days recorded before 0006 (no such rows, user_totals = 0) are read
// at by_user = 1 and sealed again by the sealer's next pass.
func TestRollupUserTotals(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	from := time.Now().UTC().Truncate(24*time.Hour).AddDate(0, 0, -4)
	to := from.AddDate(0, 0, 3)
	conn, db, o, sealer := sealedSynthetic(ctx, t, callsdb.SyntheticLoad{Calls: 60_000, From: from, Span: to.Sub(from), Models: 4, Users: 30, DuplicatePercent: 3, Seed: 17})
	ny := loadZone(t, "America/New_York")

	// levels: rows (and their calls) of the current seals per grain and by_user
	type level struct{ rows, calls uint64 }
	levels := func() map[[2]uint8]level {
		t.Helper()
		rows, err := conn.Query(ctx, fmt.Sprintf(`SELECT grain, by_user, toUInt64(count()), toUInt64(sum(calls)) FROM %[1]s.usage_rollup
WHERE (grain, period, version) IN (SELECT grain, period, max(version) FROM %[1]s.usage_seals GROUP BY grain, period)
GROUP BY grain, by_user`, db))
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		out := map[[2]uint8]level{}
		for rows.Next() {
			var g, l uint8
			var x level
			if err := rows.Scan(&g, &l, &x.rows, &x.calls); err != nil {
				t.Fatal(err)
			}
			out[[2]uint8{g, l}] = x
		}
		return out
	}
	checkLevels := func(what string) {
		t.Helper()
		lv := levels()
		day := func(l uint8) level { return lv[[2]uint8{2, l}] }
		if day(2).rows == 0 || day(2).calls != day(1).calls || day(1).calls != day(0).calls || day(2).rows >= day(1).rows {
			t.Fatalf("%s: UTC day rows per level %+v / %+v / %+v: the totals per user must hold every call in fewer rows", what, day(0), day(1), day(2))
		}
		if x, ok := lv[[2]uint8{1, 2}]; ok {
			t.Fatalf("%s: %d hour rows at by_user = 2", what, x.rows)
		}
		t.Logf("%s: UTC day rows by level 0/1/2: %d / %d / %d (%d calls)", what, day(0).rows, day(1).rows, day(2).rows, day(2).calls)
	}
	checkLevels("rebuilt")
	check := func(what string) {
		t.Helper()
		checkRollupUsageIn(t, conn, db, o, from, to, what+", whole days", 1, time.UTC, ny)
		checkRollupUsageIn(t, conn, db, o, from.Add(5*time.Hour), to.Add(-7*time.Hour), what+", ragged range", 1, time.UTC, ny)
	}
	check("with totals per user")
	checkHistogramBound(t, conn, db, from)

	// days as recorded before migration 0006: no rows at by_user = 2,
	// user_totals = 0 (tables rewritten: 18.16 has no synchronous delete)
	sealsAsBefore(ctx, t, conn, db, "user_totals", 2)
	if x := levels()[[2]uint8{2, 2}]; x.rows != 0 {
		t.Fatalf("%d day rows at by_user = 2 left", x.rows)
	}
	check("days without totals per user")

	// the sealer's pass seals those days again (their hours did not change)
	sealAgain(ctx, t, sealer, 3)
	checkLevels("sealed again")
	check("days sealed again")

	// the totals are what those reads use: a row added at by_user = 2 to the
	// first day's seal shows in model x user, not in user x source
	addUserMarkerRow(ctx, t, conn, db, from, 2, "model-marker")
	if !userMarked(ctx, t, conn, db, from, to, callsdb.GroupBy{Model: true, User: true}) {
		t.Fatal("model x user was not read from the day's totals per user")
	}
	if userMarked(ctx, t, conn, db, from, to, callsdb.GroupBy{User: true, Source: true}) {
		t.Fatal("user x source read the totals per user, which have no source")
	}
}
