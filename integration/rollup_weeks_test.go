package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

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
	reattributeLate(ctx, t, conn, db, o, day)
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

// TestRollupLocalWeeks: the weeks of a zone in clickhouse.rollup.zones
// (seven local days from a local Thursday) are sealed from their day seals
// with a grain per length, and reads without time buckets in that zone read
// a row per group and week instead of UTC weeks and days with the hours
// between them. New York's week from Oct 29, 2026 has 169 hours (daylight
// saving ends on Nov 1); Tokyo's weeks start at 15:00 UTC on Wednesdays.
// A late call into one of a week's days makes the week unreadable until it
// is sealed again; every answer stays exact.
func TestRollupLocalWeeks(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	ny, tokyo := loadZone(t, "America/New_York"), loadZone(t, "Asia/Tokyo")
	from := time.Date(2026, 10, 21, 0, 0, 0, 0, time.UTC)
	to := time.Date(2026, 11, 13, 0, 0, 0, 0, time.UTC)
	out, db := chTestDB(t)
	conn := out.Conn()
	o := loadSynthetic(ctx, t, conn, db, callsdb.SyntheticLoad{Calls: 60_000, From: from, Span: to.Sub(from), Models: 4, Users: 20, DuplicatePercent: 3, Seed: 31})
	sealer := &callsdb.Sealer{Conn: conn, Database: db, Zones: []*time.Location{ny, tokyo}}
	if _, _, err := sealer.Rebuild(ctx, from, to, nil); err != nil {
		t.Fatal(err)
	}
	weekSeals := func() map[string]uint64 { return sealVersions(ctx, t, conn, db, "7, 8, 9") }
	type week struct {
		key        string
		grain      uint8
		start, end time.Time
	}
	weeks := []week{
		{"8@10-22T04", 8, time.Date(2026, 10, 22, 0, 0, 0, 0, ny), time.Date(2026, 10, 29, 0, 0, 0, 0, ny)},
		{"9@10-29T04", 9, time.Date(2026, 10, 29, 0, 0, 0, 0, ny), time.Date(2026, 11, 5, 0, 0, 0, 0, ny)},
		{"8@11-05T05", 8, time.Date(2026, 11, 5, 0, 0, 0, 0, ny), time.Date(2026, 11, 12, 0, 0, 0, 0, ny)},
		{"8@10-21T15", 8, time.Date(2026, 10, 22, 0, 0, 0, 0, tokyo), time.Date(2026, 10, 29, 0, 0, 0, 0, tokyo)},
		{"8@10-28T15", 8, time.Date(2026, 10, 29, 0, 0, 0, 0, tokyo), time.Date(2026, 11, 5, 0, 0, 0, 0, tokyo)},
		{"8@11-04T15", 8, time.Date(2026, 11, 5, 0, 0, 0, 0, tokyo), time.Date(2026, 11, 12, 0, 0, 0, 0, tokyo)},
	}
	seals := weekSeals()
	if len(seals) != len(weeks) {
		t.Errorf("local weeks sealed: %v, want %d", seals, len(weeks))
	}
	if st := rollupStatus(ctx, t, conn, db); st.SealedLocalWeeks != len(seals) || st.SealedLocalDays < 40 {
		t.Errorf("status: %d local weeks and %d local days sealed, usage_seals has %d local weeks", st.SealedLocalWeeks, st.SealedLocalDays, len(seals))
	}
	// each week's rows hold each of its calls once, at every level
	for _, w := range weeks {
		v, ok := seals[w.key]
		if !ok {
			t.Fatalf("week %s not sealed (sealed: %v)", w.key, seals)
		}
		var in uint64
		if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT toUInt64(uniqExact(id)) FROM %s.calls WHERE start_time >= toDateTime(%d, 'UTC') AND start_time < toDateTime(%d, 'UTC')",
			db, w.start.Unix(), w.end.Unix())).Scan(&in); err != nil {
			t.Fatal(err)
		}
		for level := range 3 {
			var n uint64
			if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT toUInt64(sum(calls)) FROM %s.usage_rollup WHERE by_user = %d AND grain = %d AND period = toDateTime(%d, 'UTC') AND version = %d",
				db, level, w.grain, w.start.Unix(), v)).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != in || in == 0 {
				t.Errorf("week %s at level %d: %d calls, want %d", w.key, level, n, in)
			}
		}
	}
	nyFrom, nyTo := weeks[0].start, weeks[2].end
	tokyoFrom, tokyoTo := weeks[3].start, weeks[5].end
	check := func(what string) {
		t.Helper()
		checkRollupUsageIn(t, conn, db, o, nyFrom, nyTo, what+", New York's weeks", 1, ny, time.UTC)
		checkRollupUsageIn(t, conn, db, o, tokyoFrom, tokyoTo, what+", Tokyo's weeks", 2, tokyo)
	}
	check("local weeks sealed")

	// a row added to New York's 169-hour week (in the copy without users)
	// is what New York's reads without buckets read, and what UTC's and
	// reads by day do not
	addMarkerRow(ctx, t, conn, db, "usage_rollup_by_model", 9, weeks[1].start, seals["9@10-29T04"])
	marker := func(s callsdb.UsageSpec) uint64 {
		s.SkipPercentiles = true
		return markerCallsOf(ctx, t, conn, db, s)
	}
	nyModels := callsdb.UsageSpec{From: nyFrom, To: nyTo, TZ: ny.String(), Group: callsdb.GroupBy{Model: true}}
	if n := marker(nyModels); n != 7 {
		t.Fatalf("New York per model: the week's marker row counted %d calls, want 7", n)
	}
	if n := marker(callsdb.UsageSpec{From: nyFrom, To: nyTo, Group: callsdb.GroupBy{Model: true}}); n != 0 {
		t.Fatalf("UTC per model: New York's week was read (%d calls)", n)
	}
	if n := marker(callsdb.UsageSpec{From: nyFrom, To: nyTo, TZ: ny.String(), Group: callsdb.GroupBy{Bucket: callsdb.BucketDay, Model: true}}); n != 0 {
		t.Fatalf("New York per day and model: the week was read (%d calls)", n)
	}

	// late data into New York's Nov 2 (in the 169-hour week): until its
	// hours, day and week are sealed again, the week is not read
	late := time.Date(2026, 11, 2, 10, 0, 0, 0, time.UTC)
	if err := conn.Exec(ctx, copyCallsSQL(db, "'user-late'", 10, late, late.Add(3*time.Hour), "cityHash64(id) % 4 = 0")); err != nil {
		t.Fatal(err)
	}
	if err := callsdb.MarkDirty(ctx, conn, db, callsdb.Topology{}, []int64{late.Unix(), late.Add(time.Hour).Unix(), late.Add(2 * time.Hour).Unix()}, "test late copies", time.Now()); err != nil {
		t.Fatal(err)
	}
	o.loadDays(t, conn, db, late.Truncate(24*time.Hour), late.Truncate(24*time.Hour).Add(24*time.Hour))
	if n := marker(nyModels); n != 0 {
		t.Fatalf("late data, not sealed again: the week's marker was read (%d calls)", n)
	}
	check("late data, not sealed again yet")
	sealer.Now = func() time.Time { return time.Now().Add(callsdb.ClockSkew + time.Minute) }
	if _, err := sealer.Pass(ctx); err != nil {
		t.Fatal(err)
	}
	resealed := weekSeals()
	if resealed["9@10-29T04"] <= seals["9@10-29T04"] || resealed["8@10-28T15"] <= seals["8@10-28T15"] {
		t.Errorf("the weeks holding the late hours were not sealed again: New York %d -> %d, Tokyo %d -> %d",
			seals["9@10-29T04"], resealed["9@10-29T04"], seals["8@10-28T15"], resealed["8@10-28T15"])
	}
	if resealed["8@10-22T04"] != seals["8@10-22T04"] {
		t.Error("a week without late data was sealed again")
	}
	check("late data sealed again")
}

// reattributeLate stores copies of a fifth of the calls of day's first
// four hours re-attributed to another user, as late data: the hours are
// marked dirty just within the clock skew of now (dirty for the seals made
// before, clean for a seal made two seconds from now), and the oracle
// reloads the day.
func reattributeLate(ctx context.Context, t *testing.T, conn driver.Conn, db string, o rollupOracle, day time.Time) {
	t.Helper()
	if err := conn.Exec(ctx, copyCallsSQL(db, "'user-reattributed'", 10, day, day.Add(4*time.Hour), "cityHash64(id) % 5 = 0")); err != nil {
		t.Fatal(err)
	}
	var hours []int64
	for h := day; h.Before(day.Add(4 * time.Hour)); h = h.Add(time.Hour) {
		hours = append(hours, h.Unix())
	}
	if err := callsdb.MarkDirty(ctx, conn, db, callsdb.Topology{}, hours, "test re-attribution", time.Now().Add(-callsdb.ClockSkew+time.Second)); err != nil {
		t.Fatal(err)
	}
	o.loadDays(t, conn, db, day, day.Add(24*time.Hour))
}

// sealVersions is the newest version of every seal of the grains (a comma
// separated list), by "grain@MM-DDTHH" of its start in UTC.
func sealVersions(ctx context.Context, t *testing.T, conn driver.Conn, db, grains string) map[string]uint64 {
	t.Helper()
	got := map[string]uint64{}
	rows, err := conn.Query(ctx, fmt.Sprintf(`SELECT grain, toInt64(toUInt32(period)), max(version) FROM %s.usage_seals WHERE grain IN (%s) GROUP BY grain, period`, db, grains))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var g uint8
		var p int64
		var v uint64
		if err := rows.Scan(&g, &p, &v); err != nil {
			t.Fatal(err)
		}
		got[fmt.Sprintf("%d@%s", g, time.Unix(p, 0).UTC().Format("01-02T15"))] = v
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return got
}

// TestRollupFourWeeks: four weeks (28 days from a UTC midnight, or from a
// midnight of a zone in clickhouse.rollup.zones) are sealed from their day
// seals' rows per user alone, and a month's read grouped by user alone reads
// one row per user for them instead of weeks and days. A late call into one
// of their days makes them unreadable until they are sealed again; every
// answer stays exact, and percentiles stay within the histogram's bound.
func TestRollupFourWeeks(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	ny := loadZone(t, "America/New_York")
	from := time.Date(2026, 10, 20, 0, 0, 0, 0, time.UTC)
	to := time.Date(2026, 11, 21, 0, 0, 0, 0, time.UTC)
	out, db := chTestDB(t)
	conn := out.Conn()
	o := loadSynthetic(ctx, t, conn, db, callsdb.SyntheticLoad{Calls: 60_000, From: from, Span: to.Sub(from), Models: 4, Users: 20, DuplicatePercent: 3, Seed: 37})
	sealer := &callsdb.Sealer{Conn: conn, Database: db, Zones: []*time.Location{ny}}
	if _, _, err := sealer.Rebuild(ctx, from, to, nil); err != nil {
		t.Fatal(err)
	}
	// UTC: from Oct 20 to 24 (the last ends on Nov 21); New York: from its
	// Oct 20 to 23 (each over Nov 1, when daylight saving ends: 673 hours)
	seals := sealVersions(ctx, t, conn, db, "10, 11, 12, 13")
	want := map[string][2]time.Time{}
	for d := 20; d <= 24; d++ {
		start := time.Date(2026, 10, d, 0, 0, 0, 0, time.UTC)
		want["10@"+start.Format("01-02T15")] = [2]time.Time{start, start.AddDate(0, 0, 28)}
	}
	for d := 20; d <= 23; d++ {
		start := time.Date(2026, 10, d, 0, 0, 0, 0, ny)
		want["13@"+start.UTC().Format("01-02T15")] = [2]time.Time{start, start.AddDate(0, 0, 28)}
	}
	if len(seals) != len(want) {
		t.Errorf("four weeks sealed: %v, want %d", seals, len(want))
	}
	if st := rollupStatus(ctx, t, conn, db); st.SealedFourWeeks != len(seals) || st.WithoutModelCopy != 0 {
		t.Errorf("status: %d four weeks sealed (usage_seals has %d), %d seals without model copy", st.SealedFourWeeks, len(seals), st.WithoutModelCopy)
	}
	// each one's rows hold each of its calls once, per user alone only
	for key, span := range want {
		v, ok := seals[key]
		if !ok {
			t.Fatalf("four weeks %s not sealed (sealed: %v)", key, seals)
		}
		var in, calls, other uint64
		if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT toUInt64(uniqExact(id)) FROM %s.calls WHERE start_time >= toDateTime(%d, 'UTC') AND start_time < toDateTime(%d, 'UTC')",
			db, span[0].Unix(), span[1].Unix())).Scan(&in); err != nil {
			t.Fatal(err)
		}
		grain := key[:2]
		if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT toUInt64(sumIf(calls, by_user = 4 AND model = '' AND source = '')), toUInt64(countIf(by_user != 4)) FROM %s.usage_rollup WHERE grain = %s AND period = toDateTime(%d, 'UTC') AND version = %d",
			db, grain, span[0].Unix(), v)).Scan(&calls, &other); err != nil {
			t.Fatal(err)
		}
		if calls != in || in == 0 || other != 0 {
			t.Errorf("four weeks %s: %d calls per user alone, want %d; %d rows at other levels", key, calls, in, other)
		}
	}

	// a month grouped by user alone: exact, percentiles within the bound,
	// and one four-week row per user is what it reads (a marker row added
	// to the UTC four weeks from Oct 21 is counted by that read only)
	// (its whole days are those four weeks' alone)
	month := [2]time.Time{time.Date(2026, 10, 20, 13, 0, 0, 0, time.UTC), time.Date(2026, 11, 18, 13, 0, 0, 0, time.UTC)}
	nyMonth := [2]time.Time{time.Date(2026, 10, 20, 0, 0, 0, 0, ny), time.Date(2026, 11, 19, 0, 0, 0, 0, ny)}
	users := callsdb.GroupBy{User: true}
	check := func(what string) {
		t.Helper()
		for _, s := range []callsdb.UsageSpec{
			{From: month[0], To: month[1], Group: users},
			{From: month[0], To: month[1], Group: users, SkipPercentiles: true},
			{From: nyMonth[0], To: nyMonth[1], Group: users, TZ: ny.String()},
		} {
			loc := time.UTC
			if s.TZ != "" {
				loc = ny
			}
			if sealed := checkUsageSpec(ctx, t, conn, db, o, s, loc, what); sealed == 0 && !s.SkipPercentiles {
				t.Fatalf("%s: %+v read no sealed rows", what, s)
			}
			if !s.SkipPercentiles {
				checkHistogramSpec(ctx, t, conn, db, s)
			}
		}
		checkRollupUsageIn(t, conn, db, o, month[0], month[1], what, 2, time.UTC, ny)
	}
	check("four weeks sealed")
	marked := time.Date(2026, 10, 21, 0, 0, 0, 0, time.UTC)
	markedKey := "10@" + marked.Format("01-02T15")
	if err := conn.Exec(ctx, fmt.Sprintf(`INSERT INTO %s.usage_rollup (grain, by_user, period, model, user_id, source, batch_id, version, calls)
SELECT toUInt8(10), toUInt8(4), toDateTime(%d, 'UTC'), '', 'user-marker', '', '', toUInt64(%d), toUInt64(7)`, db, marked.Unix(), seals[markedKey])); err != nil {
		t.Fatal(err)
	}
	if !userMarked(ctx, t, conn, db, month[0], month[1], users) {
		t.Fatalf("a month per user does not read the four weeks from %s", marked.Format(time.DateOnly))
	}
	if userMarked(ctx, t, conn, db, month[0], month[1], callsdb.GroupBy{Model: true, User: true}) {
		t.Fatalf("a month per model and user reads four weeks")
	}

	// late calls into Nov 2, re-attributed to another user: every four
	// weeks over that day is stale until the day and they are sealed again
	day := time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC)
	reattributeLate(ctx, t, conn, db, o, day)
	if userMarked(ctx, t, conn, db, month[0], month[1], users) {
		t.Fatalf("the four weeks over a day with late calls are read")
	}
	check("late calls, not sealed again yet")
	time.Sleep(2 * time.Second)
	res, err := sealer.Pass(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// 5 UTC and 4 New York four weeks hold Nov 2, and the pass's empty
	// hours up to now complete more: a pass seals at most 8 with calls,
	// newest first, the next passes the rest
	if res.Resealed < 4 || res.FourWeeksSealed != 8 {
		t.Fatalf("pass after late data: %+v, want the 4 late hours and 8 four weeks sealed", res)
	}
	for pass := 2; res.FourWeeksSealed > 0; pass++ {
		if res, err = sealer.Pass(ctx); err != nil || pass > 20 {
			t.Fatalf("pass %d: %+v (%v)", pass, res, err)
		}
	}
	again := sealVersions(ctx, t, conn, db, "10, 11, 12, 13")
	for key, v := range seals {
		if again[key] <= v {
			t.Errorf("four weeks %s: version %d, was %d: not sealed again", key, again[key], v)
		}
	}
	check("late calls sealed again")
}
