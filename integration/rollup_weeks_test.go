package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/callpipe/callpipe/store/callsdb"
)

// TestRollupWeeks: a week whose seven UTC days are sealed is sealed from
// their rows (grain 6), and reads without time buckets (per model, per user,
// model x user, totals) read a row per group and week instead of seven day
// rows. A late call into one of its days makes the week unreadable until the
// sealer seals the day and then the week again; every answer stays exact.
func TestRollupWeeks(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	// 16 days hold at least one whole week (weeks start on Thursdays, UTC)
	to := time.Now().UTC().Truncate(24*time.Hour).AddDate(0, 0, -1)
	from := to.AddDate(0, 0, -16)
	conn, db, o, sealer := sealedSynthetic(ctx, t, callsdb.SyntheticLoad{Calls: 40_000, From: from, Span: to.Sub(from), Models: 4, Users: 20, DuplicatePercent: 3, Seed: 29})
	ny := loadZone(t, "America/New_York")
	week := from.Add(time.Duration(-from.Unix()%(7*86400)) * time.Second)
	if week.Before(from) {
		week = week.AddDate(0, 0, 7)
	}
	if st := rollupStatus(ctx, t, conn, db); st.SealedWeeks < 1 {
		t.Fatalf("after rebuild: %d weeks sealed", st.SealedWeeks)
	}

	// the week's rows hold each of its calls once, at every level
	weekSeal := func() (version uint64, calls [3]uint64) {
		t.Helper()
		if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT max(version) FROM %s.usage_seals WHERE grain = 6 AND period = toDateTime(%d, 'UTC')", db, week.Unix())).Scan(&version); err != nil {
			t.Fatal(err)
		}
		for level := range calls {
			if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT toUInt64(sum(calls)) FROM %s.usage_rollup WHERE by_user = %d AND grain = 6 AND period = toDateTime(%d, 'UTC') AND version = %d",
				db, level, week.Unix(), version)).Scan(&calls[level]); err != nil {
				t.Fatal(err)
			}
		}
		return version, calls
	}
	var inWeek uint64
	if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT toUInt64(uniqExact(id)) FROM %s.calls WHERE start_time >= toDateTime(%d, 'UTC') AND start_time < toDateTime(%d, 'UTC')",
		db, week.Unix(), week.AddDate(0, 0, 7).Unix())).Scan(&inWeek); err != nil {
		t.Fatal(err)
	}
	v1, calls := weekSeal()
	if v1 == 0 || calls != [3]uint64{inWeek, inWeek, inWeek} {
		t.Fatalf("week %s (version %d): calls per level %v, want %d at each", week.Format(time.DateOnly), v1, calls, inWeek)
	}
	// a range starting and ending inside days too (day rows with hours
	// subtracted; the oracle is per hour)
	ragged := [2]time.Time{from.Add(7 * time.Hour), to.Add(-5 * time.Hour)}
	check := func(what string) {
		t.Helper()
		checkRollupUsageIn(t, conn, db, o, from, to, what, 1, time.UTC, ny)
		checkRollupUsageIn(t, conn, db, o, ragged[0], ragged[1], what+", ragged range", 1, time.UTC, ny)
	}
	check("weeks sealed")

	// a row added to the week's seal (in the copy without users, which
	// reads without users read) is what reads without buckets read, and
	// what reads by day do not
	addMarkerRow(ctx, t, conn, db, "usage_rollup_by_model", 6, week, v1)
	marker := func(g callsdb.GroupBy) uint64 { return markerCalls(ctx, t, conn, db, from, to, g) }
	if n := marker(callsdb.GroupBy{Model: true}); n != 7 {
		t.Fatalf("per model over the range: the week's marker row counted %d calls, want 7", n)
	}
	if n := marker(callsdb.GroupBy{Bucket: callsdb.BucketDay, Model: true}); n != 0 {
		t.Fatalf("per day and model: the week's row was read (%d calls)", n)
	}
	// late data into the week's third day: copies of some calls with a
	// higher version, re-attributed to another user. Until the day and the
	// week are sealed again, reads must not use the week's rows (nor the
	// marker, which stays with the old version).
	day := week.AddDate(0, 0, 2)
	if err := conn.Exec(ctx, copyCallsSQL(db, "'user-reattributed'", 10, day, day.Add(4*time.Hour), "cityHash64(id) % 5 = 0")); err != nil {
		t.Fatal(err)
	}
	var hours []int64
	for h := day; h.Before(day.Add(4 * time.Hour)); h = h.Add(time.Hour) {
		hours = append(hours, h.Unix())
	}
	// marked just within the clock skew of now: dirty for the seals made
	// before, clean for a seal made two seconds from now
	if err := callsdb.MarkDirty(ctx, conn, db, callsdb.Topology{}, hours, "test re-attribution", time.Now().Add(-callsdb.ClockSkew+time.Second)); err != nil {
		t.Fatal(err)
	}
	o.loadDays(t, conn, db, day, day.Add(24*time.Hour))
	check("late calls, not sealed again yet")
	time.Sleep(2 * time.Second)
	res, err := sealer.Pass(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.Resealed < 4 || res.WeeksSealed < 1 {
		t.Fatalf("pass after late data: %+v, want the 4 late hours, their day and week sealed again", res)
	}
	v2, calls := weekSeal()
	if v2 <= v1 || calls != [3]uint64{inWeek, inWeek, inWeek} {
		t.Fatalf("week sealed again: version %d (was %d), calls per level %v, want %d at each", v2, v1, calls, inWeek)
	}
	if st := rollupStatus(ctx, t, conn, db); len(st.Dirty) != 0 {
		t.Fatalf("after sealing again: dirty hours %v", st.Dirty)
	}
	check("late calls sealed again")
}
