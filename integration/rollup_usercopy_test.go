package integration

import (
	"context"
	"testing"
	"time"

	"github.com/callpipe/callpipe/store/callsdb"
)

// TestRollupUserFilterWithAndWithoutCopy: reads filtered by one user equal
// the calls collapsed by id whether the seals have their copy sorted by user
// (usage_rollup_by_user, written by every seal since migration 0004) or not
// (seals from before it); rollup status counts the ones without, and a
// rebuild gives them their copy.
func TestRollupUserFilterWithAndWithoutCopy(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	from := time.Now().UTC().Truncate(24*time.Hour).AddDate(0, 0, -4)
	to := from.AddDate(0, 0, 3)
	conn, db, o, sealer := sealedSynthetic(ctx, t, callsdb.SyntheticLoad{Calls: 60_000, From: from, Span: to.Sub(from), Models: 4, Users: 30, DuplicatePercent: 3, Seed: 11})
	status := func() callsdb.RollupStatus { return rollupStatus(ctx, t, conn, db) }
	var copied uint64
	if err := conn.QueryRow(ctx, "SELECT toUInt64(count()) FROM "+db+".usage_rollup_by_user").Scan(&copied); err != nil {
		t.Fatal(err)
	}
	if st := status(); st.WithoutUserCopy != 0 || st.SealedDays < 3 || copied == 0 {
		t.Fatalf("after rebuild: %d seals without copy, %d days sealed, %d copied rows", st.WithoutUserCopy, st.SealedDays, copied)
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
