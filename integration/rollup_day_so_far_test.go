package integration

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/callpipe/callpipe/store/callsdb"
)

// TestRollupDaySoFar: the sealer seals today's sealed hours as one day so
// far (a UTC day seal over its first hours), grows it each pass from its own
// rows and the hours sealed since, and seals the whole day from it at
// midnight. Reads of today read it (one row per group instead of an hour
// row each), never while one of its hours is dirty, and every answer stays
// exact. Status counts it apart from whole days. So for a zone in
// clickhouse.rollup.zones (New York), from its local midnight.
func TestRollupDaySoFar(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	// the sealer's clock is days ahead of the real one, so that dirty
	// marks this test makes at that clock are newer than every seal
	day := time.Now().UTC().Truncate(24*time.Hour).AddDate(0, 0, 3)
	from, to := day.AddDate(0, 0, -2), day.AddDate(0, 0, 1)
	out, db := chTestDB(t)
	conn := out.Conn()
	o := loadSynthetic(ctx, t, conn, db, callsdb.SyntheticLoad{Calls: 30_000, From: from, Span: to.Sub(from), Models: 4, Users: 20, DuplicatePercent: 3, Seed: 41})
	clock := day.Add(5*time.Hour + 20*time.Minute)
	ny := loadZone(t, "America/New_York") // days from 05:00 UTC (EST) in December
	sealer := &callsdb.Sealer{Conn: conn, Database: db, Zones: []*time.Location{ny}, Now: func() time.Time { return clock }}
	if _, _, err := sealer.Rebuild(ctx, from, to, nil); err != nil {
		t.Fatal(err)
	}
	nyDay := day.Add(5 * time.Hour)
	// nyDaySoFar is how many hours the newest seal of New York's day lists
	nyDaySoFar := func() (version uint64, hours int) {
		t.Helper()
		var hv []uint64
		if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT max(version), argMax(hour_versions, version) FROM %s.usage_seals WHERE grain = 4 AND period = toDateTime(%d, 'UTC')", db, nyDay.Unix())).Scan(&version, &hv); err != nil {
			t.Fatal(err)
		}
		return version, len(hv)
	}

	// daySoFar is the newest seal of the day and the calls its rows hold at
	// the levels per model and per user
	daySoFar := func() (version uint64, hours int, calls [2]uint64) {
		t.Helper()
		var hv []uint64
		if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT max(version), argMax(hour_versions, version) FROM %s.usage_seals WHERE grain = 2 AND period = toDateTime(%d, 'UTC')", db, day.Unix())).Scan(&version, &hv); err != nil {
			t.Fatal(err)
		}
		for level := range calls {
			if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT toUInt64(sum(calls)) FROM %s.usage_rollup WHERE by_user = %d AND grain = 2 AND period = toDateTime(%d, 'UTC') AND version = %d AND model != 'model-marker'",
				db, level, day.Unix(), version)).Scan(&calls[level]); err != nil {
				t.Fatal(err)
			}
		}
		return version, len(hv), calls
	}
	callsIn := func(hours int) uint64 {
		t.Helper()
		var n uint64
		if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT toUInt64(uniqExact(id)) FROM %s.calls WHERE start_time >= toDateTime(%d, 'UTC') AND start_time < toDateTime(%d, 'UTC')",
			db, day.Unix(), day.Add(time.Duration(hours)*time.Hour).Unix())).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	expect := func(what string, wantHours int) uint64 {
		t.Helper()
		v, hours, calls := daySoFar()
		if n := callsIn(wantHours); hours != wantHours || calls != [2]uint64{n, n} {
			t.Fatalf("%s: day seal (version %d) over %d hours holds %v calls per level; want %d hours, %d calls", what, v, hours, calls, wantHours, n)
		}
		return v
	}
	status := func() callsdb.RollupStatus {
		t.Helper()
		st, err := callsdb.Status(ctx, conn, db, callsdb.DefaultSealAfter, clock)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	check := func(what string) {
		t.Helper()
		checkRollupUsageIn(t, conn, db, o, from, to, what, 1, time.UTC, ny)
		checkRollupUsageIn(t, conn, db, o, from.Add(7*time.Hour), day.Add(3*time.Hour), what+", ragged range", 2, time.UTC, ny)
	}
	pass := func(what string) callsdb.PassResult {
		t.Helper()
		clock = clock.Add(time.Hour)
		res, err := sealer.Pass(ctx)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return res
	}

	// rollup rebuild at 05:20 seals the day so far over hours 0..4
	v1 := expect("after rebuild", 5)
	if st := status(); st.DaySoFarHours != 5 || st.SealedDays != 2 {
		t.Fatalf("status: day so far %d hours, %d whole days; want 5 and 2", st.DaySoFarHours, st.SealedDays)
	}
	check("day so far of 5 hours")
	// reads of today read it: a row added to it (in the copy without
	// users) is counted
	addMarkerRow(ctx, t, conn, db, "usage_rollup_by_model", 2, day, v1)
	if n := markerCalls(ctx, t, conn, db, from, to, callsdb.GroupBy{Model: true}); n != 7 {
		t.Fatalf("per model over the range: the day so far's marker row counted %d calls, want 7", n)
	}

	// each pass grows it by the hour it sealed, summing its own rows: a
	// row added to them is carried into the next one
	if res := pass("06:20"); res.HoursSealed != 1 || res.DaysSoFarSealed != 1 || res.DaysSealed != 0 {
		t.Fatalf("pass at 06:20: %+v, want one hour and the day so far sealed, no whole day", res)
	}
	v2 := expect("at 06:20", 6)
	if n := markerCalls(ctx, t, conn, db, from, to, callsdb.GroupBy{Model: true}); n != 0 {
		t.Fatalf("the superseded day so far is read (%d marker calls)", n)
	}
	check("day so far of 6 hours")
	addMarkerRow(ctx, t, conn, db, "usage_rollup", 2, day, v2)
	localDays := status().SealedLocalDays
	pass("07:20")
	v3 := expect("at 07:20", 7)
	// New York's day began at 05:00: its first two hours are its day so
	// far, which a New York read of today reads
	nyV, nyHours := nyDaySoFar()
	if nyHours != 2 {
		t.Fatalf("New York's day so far at 07:20: %d hours, want 2", nyHours)
	}
	if st := status(); st.SealedLocalDays != localDays || len(st.LocalDaysSoFar) != 1 || !st.LocalDaysSoFar[0].Start.Equal(nyDay) || st.LocalDaysSoFar[0].Hours != 2 {
		t.Fatalf("status: %d local days (was %d), local days so far %+v; want New York's day so far (from %s, 2 hours) apart", st.SealedLocalDays, localDays, st.LocalDaysSoFar, nyDay)
	}
	addMarkerRow(ctx, t, conn, db, "usage_rollup_by_model", 4, nyDay, nyV)
	if n := markerCallsOf(ctx, t, conn, db, callsdb.UsageSpec{From: from.Add(5 * time.Hour), To: nyDay.Add(24 * time.Hour), TZ: ny.String(),
		Group: callsdb.GroupBy{Model: true}, SkipPercentiles: true}); n != 7 {
		t.Fatalf("per model in New York: its day so far's marker row counted %d calls, want 7", n)
	}
	var carried uint64
	if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT toUInt64(sum(calls)) FROM %s.usage_rollup WHERE by_user = 0 AND grain = 2 AND version = %d AND model = 'model-marker'", db, v3)).Scan(&carried); err != nil {
		t.Fatal(err)
	}
	if carried != 7 {
		t.Fatalf("the day so far at 07:20 holds %d marker calls: it was not summed from the one before", carried)
	}

	// late calls into hours 0..3: until they are sealed again, no read may
	// use the day so far (which also holds the marker now)
	if err := conn.Exec(ctx, copyCallsSQL(db, "'user-late'", 10, day, day.Add(4*time.Hour), "cityHash64(id) % 5 = 0")); err != nil {
		t.Fatal(err)
	}
	late := []int64{day.Unix(), day.Add(time.Hour).Unix(), day.Add(2 * time.Hour).Unix(), day.Add(3 * time.Hour).Unix()}
	if err := callsdb.MarkDirty(ctx, conn, db, callsdb.Topology{}, late, "test late calls", clock); err != nil {
		t.Fatal(err)
	}
	o.loadDays(t, conn, db, day, day.Add(24*time.Hour))
	check("late calls, not sealed again yet")
	// sealed again: its hours changed, so it is summed from them anew
	// (with New York's day so far, and its day before, which held hours
	// 00:00 to 04:00 UTC)
	if res := pass("08:20"); res.Resealed != 4 || res.DaysSoFarSealed != 2 || res.DaysSealed != 1 {
		t.Fatalf("pass at 08:20: %+v, want the 4 late hours, both days so far and New York's day before (a whole day) sealed again", res)
	}
	expect("at 08:20, after late calls", 8)
	if _, nyHours := nyDaySoFar(); nyHours != 3 {
		t.Fatalf("New York's day so far at 08:20: %d hours, want 3", nyHours)
	}
	if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT toUInt64(count()) FROM %s.usage_rollup WHERE grain = 2 AND period = toDateTime(%d, 'UTC') AND version > %d AND model = 'model-marker'", db, day.Unix(), v3)).Scan(&carried); err != nil {
		t.Fatal(err)
	}
	if carried != 0 {
		t.Fatal("the day so far sealed after late calls was summed from the one they made stale")
	}
	check("late calls sealed again")

	// retention drops a day's calls only once the whole day is sealed: the
	// day so far holds only some of its hours
	expired := func() []string {
		t.Helper()
		dropped, err := callsdb.DropExpired(ctx, conn, db, callsdb.Topology{}, callsdb.Retention{Calls: 1}, day.AddDate(0, 0, 3), nil)
		if err != nil {
			t.Fatal(err)
		}
		return dropped
	}
	callsOf := func(d time.Time) string { return "calls/" + d.Format("20060102") }
	if dropped := expired(); !slices.Contains(dropped, callsOf(from)) || !slices.Contains(dropped, callsOf(from.AddDate(0, 0, 1))) || slices.Contains(dropped, callsOf(day)) {
		t.Fatalf("retention with the last day sealed so far: dropped %v; want the two whole days' calls, not the last day's", dropped)
	}

	// at midnight the whole day is sealed (from the day so far and the
	// hours after it); status (which looks from the first stored call on:
	// the day's) counts it as a day
	clock = day.Add(23*time.Hour + 20*time.Minute)
	if res := pass("00:20"); res.DaysSealed != 1 || res.DaysSoFarSealed != 1 {
		t.Fatalf("pass at 00:20: %+v, want the whole UTC day and New York's day so far (19 hours) sealed", res)
	}
	expect("at midnight", 24)
	if st := status(); st.DaySoFarHours != 0 || st.SealedDays != 1 || len(st.LocalDaysSoFar) != 1 || st.LocalDaysSoFar[0].Hours != 19 {
		t.Fatalf("status at 00:20: day so far %d hours, %d whole days, local days so far %+v; want 0, 1 and New York's of 19 hours", st.DaySoFarHours, st.SealedDays, st.LocalDaysSoFar)
	}
	check("whole day")
	if dropped := expired(); !slices.Contains(dropped, callsOf(day)) {
		t.Fatalf("retention with the last day whole: dropped %v; want its calls", dropped)
	}
}
