package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/callpipe/callpipe/store/callsdb"
)

// TestRollupHourUserTotals: an hour seal also writes its rows summed per
// user over models, sources and batches (by_user = 4), as day and week seals
// do (not per model and user: by_user = 2 would add two thirds to an hour's
// rows for little). Reads grouped by user alone read the hours they take as
// hours (the edges of a range, a range of hours, hour buckets) at that
// level, and answer what the rows per model, user, source and batch answer,
// percentiles to the bucket, equal to the calls collapsed by id. Hours
// recorded without them (user_over_models = 0) are read at by_user = 1
// until `rollup rebuild` seals them again.
func TestRollupHourUserTotals(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	from := time.Now().UTC().Truncate(24*time.Hour).AddDate(0, 0, -3)
	to := from.AddDate(0, 0, 2)
	conn, db, o, sealer := sealedSynthetic(ctx, t, callsdb.SyntheticLoad{Calls: 40_000, From: from, Span: to.Sub(from), Models: 4, Users: 20, DuplicatePercent: 3, Seed: 41})
	ny := loadZone(t, "America/New_York")
	status := func() callsdb.RollupStatus { return rollupStatus(ctx, t, conn, db) }
	if st := status(); st.WithoutUserTotals != 0 || st.SealedHours < 48 {
		t.Fatalf("after rebuild: %d of %d hours without user totals", st.WithoutUserTotals, st.SealedHours)
	}

	// each hour's calls once per user, in fewer rows
	type level struct{ rows, calls uint64 }
	hourLevel := func(l int) (x level) {
		t.Helper()
		if err := conn.QueryRow(ctx, fmt.Sprintf(`SELECT toUInt64(count()), toUInt64(sum(calls)) FROM %[1]s.usage_rollup
WHERE grain = 1 AND by_user = %[2]d AND (grain, period, version) IN (SELECT grain, period, max(version) FROM %[1]s.usage_seals GROUP BY grain, period)`, db, l)).Scan(&x.rows, &x.calls); err != nil {
			t.Fatal(err)
		}
		return x
	}
	l1, l2, l4 := hourLevel(1), hourLevel(2), hourLevel(4)
	if l4.calls != l1.calls || l1.calls == 0 || l4.rows >= l1.rows || l2.rows != 0 {
		t.Fatalf("hour rows by level 1 / 2 / 4: %+v / %+v / %+v; want the same calls in fewer rows at 4, none at 2", l1, l2, l4)
	}
	t.Logf("hour rows by level 1 / 2 / 4: %d / %d / %d (%d calls)", l1.rows, l2.rows, l4.rows, l1.calls)

	// ranges whose first and last hours are read as hours; the oracle
	// counts whole hours, the reads also start inside one (per-call edge)
	ragged := [2]time.Time{from.Add(5 * time.Hour), to.Add(-7 * time.Hour)}
	hours := [2]time.Time{from.Add(26 * time.Hour), from.Add(31 * time.Hour)}
	var reads []callsdb.UsageSpec
	for _, rg := range [][2]time.Time{ragged, hours, {ragged[0].Add(20 * time.Minute), ragged[1]}} {
		for _, tz := range []string{"", ny.String()} {
			for _, g := range []callsdb.GroupBy{{User: true}, {Model: true, User: true}, {Bucket: callsdb.BucketHour, User: true}, {Bucket: callsdb.BucketDay, User: true}} {
				reads = append(reads, callsdb.UsageSpec{From: rg[0], To: rg[1], TZ: tz, Group: g})
			}
		}
	}
	answers := func(what string) [][]callsdb.UsageRow {
		t.Helper()
		out := make([][]callsdb.UsageRow, len(reads))
		for i, s := range reads {
			rows, err := callsdb.UsageOf(ctx, conn, db, s)
			if err != nil {
				t.Fatalf("%s: %s %s: %v", what, s.Group, s.TZ, err)
			}
			out[i] = rows
		}
		for _, rg := range [][2]time.Time{ragged, hours} {
			checkRollupUsageIn(t, conn, db, o, rg[0], rg[1], what, 1, time.UTC, ny)
		}
		return out
	}
	summed := answers("hours with totals per user")
	checkHistogramBound(t, conn, db, from)

	// the totals per user are what a range of hours grouped by user
	// reads: a row added at by_user = 4 to one of its hours shows per user,
	// not per model and user
	var v uint64
	marked := hours[0].Add(2 * time.Hour)
	if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT max(version) FROM %s.usage_seals WHERE grain = 1 AND period = toDateTime(%d, 'UTC')", db, marked.Unix())).Scan(&v); err != nil {
		t.Fatal(err)
	}
	if err := conn.Exec(ctx, fmt.Sprintf(`INSERT INTO %s.usage_rollup (grain, by_user, period, model, user_id, source, batch_id, version, calls)
SELECT toUInt8(1), toUInt8(4), toDateTime(%d, 'UTC'), '', 'user-marker', '', '', toUInt64(%d), toUInt64(7)`, db, marked.Unix(), v)); err != nil {
		t.Fatal(err)
	}
	if !userMarked(ctx, t, conn, db, hours[0], hours[1], callsdb.GroupBy{User: true}) {
		t.Fatal("a range of hours grouped by user was not read from the hours' totals per user")
	}
	if userMarked(ctx, t, conn, db, hours[0], hours[1], callsdb.GroupBy{Model: true, User: true}) {
		t.Fatal("model x user read the totals per user, which have no model")
	}
	if userMarked(ctx, t, conn, db, hours[0], hours[1], callsdb.GroupBy{User: true, Source: true}) {
		t.Fatal("user x source read the totals per user, which have no source")
	}

	// seals recorded without the totals per user (the marker goes with
	// them): hours are read at by_user = 1, days at 2, and every answer
	// stays the same
	sealsAsBefore(ctx, t, conn, db, "user_over_models", 4)
	if st := status(); st.WithoutUserTotals != st.SealedHours {
		t.Fatalf("old layout: %d of %d hours without user totals", st.WithoutUserTotals, st.SealedHours)
	}
	sameUsageAnswers(t, reads, summed, answers("hours without totals per user"), "summed", "per source")

	// rebuild seals them again, with the totals
	if _, _, err := sealer.Rebuild(ctx, from, to, nil); err != nil {
		t.Fatal(err)
	}
	if st := status(); st.WithoutUserTotals != 0 {
		t.Fatalf("after the second rebuild: %d hours without user totals", st.WithoutUserTotals)
	}
	sameUsageAnswers(t, reads, summed, answers("sealed again"), "summed", "sealed again")
}
