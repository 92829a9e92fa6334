package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/callpipe/callpipe/store/callsdb"
)

// TestRollupUserFilterWithAndWithoutCopy: reads filtered by one user equal
// the calls collapsed by id whether the seals have their copy sorted by user
// in small granules (usage_rollup_user_copy, written by every seal since
// migration 0009), in the copy of 0004 to 0008 (usage_rollup_by_user), or
// none (seals from before 0004); each read reads the copy its seals have
// (a marker row only there counts); rollup status counts the seals without
// the current copy, and a rebuild gives them it.
func TestRollupUserFilterWithAndWithoutCopy(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	from := time.Now().UTC().Truncate(24*time.Hour).AddDate(0, 0, -4)
	to := from.AddDate(0, 0, 3)
	conn, db, o, sealer := sealedSynthetic(ctx, t, callsdb.SyntheticLoad{Calls: 60_000, From: from, Span: to.Sub(from), Models: 4, Users: 30, DuplicatePercent: 3, Seed: 11})
	status := func() callsdb.RollupStatus { return rollupStatus(ctx, t, conn, db) }
	count := func(table string) uint64 {
		t.Helper()
		var n uint64
		if err := conn.QueryRow(ctx, "SELECT toUInt64(count()) FROM "+db+"."+table).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if st, copied, legacy := status(), count("usage_rollup_user_copy"), count("usage_rollup_by_user"); st.WithoutUserCopy != 0 || st.SealedDays < 3 || copied == 0 || legacy != 0 {
		t.Fatalf("after rebuild: %d seals without copy, %d days sealed, %d copied rows, %d in the copy of 0004", st.WithoutUserCopy, st.SealedDays, copied, legacy)
	}
	// markerRead adds a row of 7 calls of model "model-marker" for user-0
	// to table, on the first day's current seal, and reports whether
	// user-0's read by model counts it
	markerRead := func(table string) bool {
		t.Helper()
		var v uint64
		if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT max(version) FROM %s.usage_seals WHERE grain = 2 AND period = toDateTime(%d, 'UTC')", db, from.Unix())).Scan(&v); err != nil {
			t.Fatal(err)
		}
		if err := conn.Exec(ctx, fmt.Sprintf(`INSERT INTO %s.%s (grain, period, model, user_id, source, batch_id, version, calls)
SELECT toUInt8(2), toDateTime(%d, 'UTC'), 'model-marker', 'user-0', 'online', '', toUInt64(%d), toUInt64(7)`, db, table, from.Unix(), v)); err != nil {
			t.Fatal(err)
		}
		return markerCallsOf(ctx, t, conn, db, callsdb.UsageSpec{From: from, To: to, Group: callsdb.GroupBy{Model: true},
			Filter: callsdb.UsageFilter{User: "user-0"}, SkipPercentiles: true}) == 7
	}
	// withoutMarkers rewrites table without the marker rows (18.16 has no
	// synchronous delete)
	withoutMarkers := func(src, dst string) {
		t.Helper()
		for _, st := range []string{
			"CREATE TABLE {db}.copy_old AS {db}." + src,
			"INSERT INTO {db}.copy_old SELECT * FROM {db}." + src + " WHERE model != 'model-marker'",
			"TRUNCATE TABLE {db}." + src,
			"INSERT INTO {db}." + dst + " SELECT * FROM {db}.copy_old",
			"DROP TABLE {db}.copy_old",
		} {
			if err := conn.Exec(ctx, callsdb.WithDB(st, db)); err != nil {
				t.Fatalf("%s: %v", st, err)
			}
		}
	}
	check := func(what string) {
		t.Helper()
		// whole UTC days, and ragged edges (day rows minus the hours out of
		// the range) with and without a user filter
		for _, rg := range [][2]time.Time{{from, to}, {from.Add(5 * time.Hour), to.Add(-7 * time.Hour)}, {from.Add(19 * time.Hour), to.Add(-20 * time.Hour)}} {
			for _, user := range []string{"user-0", "user-29", "user-nobody", ""} {
				for _, g := range []callsdb.GroupBy{{Bucket: callsdb.BucketDay, Model: true}, {Bucket: callsdb.BucketHour}, {Model: true, User: true}, {Model: true}, {Bucket: callsdb.BucketDay}} {
					for _, loc := range []*time.Location{time.UTC, mustLoad(t, "America/New_York"), mustLoad(t, "Asia/Tokyo")} {
						s := callsdb.UsageSpec{From: rg[0], To: rg[1], Group: g, TZ: loc.String(), Filter: callsdb.UsageFilter{User: user}, SkipPercentiles: user == "user-29"}
						got, err := callsdb.UsageOf(ctx, conn, db, s)
						if err != nil {
							t.Fatalf("%s: %v", what, err)
						}
						want := o.usage(s, loc)
						if len(got) != len(want) {
							t.Fatalf("%s: user %s %s %s: %d rows, want %d", what, user, g, loc, len(got), len(want))
						}
						for _, r := range got {
							w, ok := want[oracleKey(g, r.Bucket, r.Model, r.UserID, r.Source)]
							if !ok || r.Calls != w.calls || r.InputTokens != w.in || r.OutputTokens != w.out || r.Errors != w.errors ||
								r.TTFTCalls != w.ttftCalls || r.Histogram == s.SkipPercentiles {
								t.Fatalf("%s: %s..%s user %q %s %s row %+v, want %+v (found %v)", what, rg[0], rg[1], user, g, loc, r, w, ok)
							}
							if !s.SkipPercentiles && (r.LatencyMS.P50 <= 0 || r.LatencyMS.P99 < r.LatencyMS.P50) {
								t.Fatalf("%s: user %q %s %s row %+v: latency percentiles", what, user, g, loc, r)
							}
						}
					}
				}
			}
		}
	}
	check("seals with copies")
	if !markerRead("usage_rollup_user_copy") {
		t.Fatal("seals with copies: the read filtered by user does not read usage_rollup_user_copy")
	}

	// seals as recorded by migrations 0004 to 0008: user_copy = 1, their
	// copy in usage_rollup_by_user
	withoutMarkers("usage_rollup_user_copy", "usage_rollup_by_user")
	sealsRecordedWith(ctx, t, conn, db, "user_copy", 1)
	if st := status(); st.WithoutUserCopy < st.SealedHours+st.SealedDays || count("usage_rollup_user_copy") != 0 {
		t.Fatalf("seals recorded before 0009: %d without the copy of %d hours + %d days", st.WithoutUserCopy, st.SealedHours, st.SealedDays)
	}
	check("seals with the copy of 0004 (read from usage_rollup_by_user)")
	if !markerRead("usage_rollup_by_user") {
		t.Fatal("seals recorded before 0009: the read filtered by user does not read usage_rollup_by_user")
	}

	// seals as recorded before migration 0004: no copy, user_copy = 0
	sealsAsBefore(ctx, t, conn, db, "user_copy", -1)
	if err := conn.Exec(ctx, callsdb.WithDB("TRUNCATE TABLE {db}.usage_rollup_by_user", db)); err != nil {
		t.Fatal(err)
	}
	st := status()
	if st.WithoutUserCopy < st.SealedHours+st.SealedDays || st.SealedDays < 3 {
		t.Fatalf("seals without copy: %d of %d hours + %d days", st.WithoutUserCopy, st.SealedHours, st.SealedDays)
	}
	check("seals without copies (read from usage_rollup)")

	if _, _, err := sealer.Rebuild(ctx, from, to, nil); err != nil {
		t.Fatal(err)
	}
	if st := status(); st.WithoutUserCopy != 0 {
		t.Fatalf("after the second rebuild: %d seals without copy", st.WithoutUserCopy)
	}
	check("sealed again, with copies")
}

func mustLoad(t *testing.T, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatal(err)
	}
	return loc
}
