package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/callpipe/callpipe/store/callsdb"
)

// Local days of clickhouse.rollup.zones: sealed beside the UTC days by the
// first pass of a sealer they were added to, read by day buckets and whole
// local days of their zone, sealed again after late data, and exact
// throughout (every grouping in UTC, New York and Tokyo equals SQL over the
// calls collapsed by id). New York's Nov 1, 2026 has 25 hours. Hours are
// sealed in slices and several at a time.
func TestRollupLocalDays(t *testing.T) {
	out, db := chTestDB(t)
	conn := out.Conn()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	ny, tokyo := loadZone(t, "America/New_York"), loadZone(t, "Asia/Tokyo")
	from := time.Date(2026, 10, 30, 0, 0, 0, 0, time.UTC)
	to := from.AddDate(0, 0, 4)
	o := loadSynthetic(ctx, t, conn, db, callsdb.SyntheticLoad{Calls: 100_000, From: from, Span: to.Sub(from), Models: 4, Users: 30, DuplicatePercent: 2, Seed: 11})
	// the zones' whole days inside the loaded range, and a range starting
	// inside a New York day
	nyFrom, nyTo := time.Date(2026, 10, 30, 0, 0, 0, 0, ny), time.Date(2026, 11, 3, 0, 0, 0, 0, ny).Add(-5*time.Hour)
	tokyoFrom, tokyoTo := time.Date(2026, 10, 31, 0, 0, 0, 0, tokyo), time.Date(2026, 11, 3, 0, 0, 0, 0, tokyo)
	check := func(what string) {
		t.Helper()
		checkRollupUsageIn(t, conn, db, o, nyFrom, nyTo, what+", New York's days", 1, ny, time.UTC)
		checkRollupUsageIn(t, conn, db, o, tokyoFrom, tokyoTo, what+", Tokyo's days", 2, tokyo)
		checkRollupUsageIn(t, conn, db, o, nyFrom.Add(7*time.Hour), nyTo, what+", from inside a New York day", 2, ny)
	}

	// UTC days only: New York's days are UTC days corrected by edge hours.
	// Sealed twice: each hour (~1,000 stored rows) alone in slices of at
	// most 700 rows, then again several hours a statement (at most 5,000
	// rows).
	for _, sliceRows := range []uint64{700, 5000} {
		if _, _, err := (&callsdb.Sealer{Conn: conn, Database: db, SliceRows: sliceRows}).Rebuild(ctx, from, to, nil); err != nil {
			t.Fatal(err)
		}
		check(fmt.Sprintf("UTC days only, hours sealed in statements of at most %d rows", sliceRows))
	}
	// percentiles within the histograms' bound of the exact ones: New York's
	// days subtract edge hours (signed sums), UTC days do not
	checkHistogramBound(t, conn, db, from)
	localSeals := func() map[string]uint64 { return sealVersions(ctx, t, conn, db, "3, 4, 5") }
	if n := len(localSeals()); n != 0 {
		t.Fatalf("%d local days sealed without zones", n)
	}

	// zones added: the sealer's first pass seals their local days over the
	// history (the hours are sealed already)
	sealer := &callsdb.Sealer{Conn: conn, Database: db, Zones: []*time.Location{ny, tokyo}}
	if _, err := sealer.Pass(ctx); err != nil {
		t.Fatal(err)
	}
	seals := localSeals()
	// New York: Oct 30 and 31 at 04:00 (EDT), Nov 1 at 04:00 with 25 hours,
	// Nov 2 at 05:00 (EST); Tokyo: Oct 30 .. Nov 2 at 15:00 the day before
	for _, k := range []string{"4@10-30T04", "4@10-31T04", "5@11-01T04", "4@11-02T05", "4@10-30T15", "4@10-31T15", "4@11-01T15", "4@11-02T15"} {
		if _, ok := seals[k]; !ok {
			t.Errorf("local day %s not sealed (sealed: %v)", k, seals)
		}
	}
	st, err := callsdb.Status(ctx, conn, db, callsdb.DefaultSealAfter, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	// today's days so far of the two zones (records of their first hours,
	// without calls here) are not whole days
	var soFar uint64
	if err := conn.QueryRow(ctx, fmt.Sprintf(`SELECT toUInt64(count()) FROM (SELECT grain, argMax(hour_versions, version) AS hv FROM %s.usage_seals WHERE grain IN (3, 4, 5) GROUP BY grain, period) WHERE length(hv) != grain + 20`, db)).Scan(&soFar); err != nil {
		t.Fatal(err)
	}
	if st.SealedLocalDays != len(seals)-int(soFar) || soFar > 2 {
		t.Errorf("status: %d local days sealed, usage_seals has %d, %d of them days so far", st.SealedLocalDays, len(seals), soFar)
	}
	check("local days sealed")
	checkHistogramBound(t, conn, db, from) // New York's days now only add up

	// late data in New York's Nov 1 (25 hours): copies re-attributed to
	// another user, the hours marked dirty as the sink does; read per call
	// until sealed again (by a pass past the clock skew of the marks), then
	// the local days holding them are sealed again from the new hour seals
	lateHour := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	if err := conn.Exec(ctx, copyCallsSQL(db, "'user-late'", 10, lateHour, lateHour.Add(2*time.Hour), "cityHash64(id) % 5 = 0")); err != nil {
		t.Fatal(err)
	}
	if err := callsdb.MarkDirty(ctx, conn, db, callsdb.Topology{}, []int64{lateHour.Unix(), lateHour.Add(time.Hour).Unix()}, "test late copies", time.Now()); err != nil {
		t.Fatal(err)
	}
	o.loadDays(t, conn, db, lateHour.Truncate(24*time.Hour), lateHour.Truncate(24*time.Hour).Add(24*time.Hour))
	check("late data, not sealed again yet")
	sealer.Now = func() time.Time { return time.Now().Add(callsdb.ClockSkew + time.Minute) }
	if _, err := sealer.Pass(ctx); err != nil {
		t.Fatal(err)
	}
	resealed := localSeals()
	// 10:00 and 11:00 UTC on Nov 1: New York's Nov 1, Tokyo's Nov 1 (from 15:00 UTC the day before)
	if resealed["5@11-01T04"] == seals["5@11-01T04"] || resealed["4@10-31T15"] == seals["4@10-31T15"] {
		t.Errorf("the local days holding the late hours were not sealed again: New York %d -> %d, Tokyo %d -> %d",
			seals["5@11-01T04"], resealed["5@11-01T04"], seals["4@10-31T15"], resealed["4@10-31T15"])
	}
	if resealed["4@10-30T04"] != seals["4@10-30T04"] {
		t.Errorf("a local day without late data was sealed again")
	}
	check("late data sealed again")

	// the reads use the local day rows: a row added to New York's Nov 1
	// seal (in the copy without users, which reads without users read)
	// shows up in its day bucket
	addMarkerRow(ctx, t, conn, db, "usage_rollup_by_model", 5, time.Date(2026, 11, 1, 4, 0, 0, 0, time.UTC), resealed["5@11-01T04"])
	rows, err := callsdb.UsageOf(ctx, conn, db, callsdb.UsageSpec{From: nyFrom, To: nyTo, TZ: ny.String(), SkipPercentiles: true,
		Group: callsdb.GroupBy{Bucket: callsdb.BucketDay, Model: true}})
	if err != nil {
		t.Fatal(err)
	}
	marked := false
	for _, r := range rows {
		if r.Model == "model-marker" {
			marked = r.Calls == 7 && r.Bucket.Equal(time.Date(2026, 11, 1, 0, 0, 0, 0, ny))
		}
	}
	if !marked {
		t.Fatal("New York's Nov 1 was not read from its local day seal")
	}
}
