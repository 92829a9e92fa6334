package integration

import (
	"cmp"
	"context"
	"maps"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/callpipe/callpipe/store/callsdb"
)

// TestUsageLimit: a usage read with a Limit answers the rows of the
// groups (model, user, source keys) with the most calls, ties by key, with
// every time bucket of each, equal to the same read without a limit, row
// for row and percentiles to the bucket (its percentiles are read for
// those groups alone); its totals are every group's, and it counts the
// groups it left out. Over sealed days, ragged edges read per call, time
// buckets in another zone, a filter, with and without percentiles.
func TestUsageLimit(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	to := time.Now().UTC().Truncate(24*time.Hour).AddDate(0, 0, -1)
	from := to.AddDate(0, 0, -9)
	conn, db, _, _ := sealedSynthetic(ctx, t, callsdb.SyntheticLoad{Calls: 30_000, From: from, Span: to.Sub(from), Models: 5, Users: 40, DuplicatePercent: 2, Seed: 41})
	ny := loadZone(t, "America/New_York")
	ragged := [2]time.Time{from.Add(5*time.Hour + 17*time.Minute), to.Add(-7 * time.Hour)}

	var specs []callsdb.UsageSpec
	for _, g := range []callsdb.GroupBy{
		{User: true}, {Model: true}, {Model: true, User: true}, {User: true, Source: true},
		{Bucket: callsdb.BucketDay, Model: true}, {Bucket: callsdb.BucketDay, User: true}, {Bucket: callsdb.BucketHour, Model: true, User: true},
	} {
		for _, r := range [][2]time.Time{{from, to}, ragged} {
			specs = append(specs, callsdb.UsageSpec{From: r[0], To: r[1], Group: g})
		}
	}
	specs = append(specs,
		callsdb.UsageSpec{From: ragged[0], To: ragged[1], Group: callsdb.GroupBy{Bucket: callsdb.BucketDay, Model: true, User: true}, TZ: ny.String()},
		callsdb.UsageSpec{From: from, To: to, Group: callsdb.GroupBy{User: true}, Filter: callsdb.UsageFilter{Source: "online"}},
		callsdb.UsageSpec{From: from, To: to, Group: callsdb.GroupBy{Model: true, User: true}, SkipPercentiles: true},
	)
	sealedRows := 0
	for _, s := range specs {
		full, err := callsdb.UsageWithTotals(ctx, conn, db, s)
		if err != nil {
			t.Fatalf("%s %s: %v", s.Group, s.TZ, err)
		}
		if full.Omitted != 0 {
			t.Fatalf("%s: %d groups omitted without a limit", s.Group, full.Omitted)
		}
		groups := topGroupsOf(full.Rows)
		for _, limit := range []int{1, 7, len(groups) - 1, len(groups) + 3} {
			if limit < 1 {
				continue
			}
			l := s
			l.Limit = limit
			got, err := callsdb.UsageWithTotals(ctx, conn, db, l)
			if err != nil {
				t.Fatalf("%s %s limit %d: %v", s.Group, s.TZ, limit, err)
			}
			kept := groups[:min(limit, len(groups))]
			want := slices.DeleteFunc(slices.Clone(full.Rows), func(r callsdb.UsageRow) bool { return !slices.Contains(kept, groupKeys(r)) })
			sameUsageAnswers(t, []callsdb.UsageSpec{l}, [][]callsdb.UsageRow{got.Rows}, [][]callsdb.UsageRow{want}, "limited", "every group's, filtered")
			if got.Omitted != len(groups)-len(kept) {
				t.Fatalf("%s limit %d: %d groups omitted, want %d of %d", s.Group, limit, got.Omitted, len(groups)-len(kept), len(groups))
			}
			if !sameTotals(got.Totals, full.Totals) {
				t.Fatalf("%s limit %d: totals %+v, want every group's %+v", s.Group, limit, got.Totals, full.Totals)
			}
			for _, r := range got.Rows {
				if r.Histogram {
					sealedRows++
				}
			}
		}
	}
	if sealedRows == 0 {
		t.Fatal("no limited row was read from sealed rollups")
	}
	t.Logf("%d specs, limited rows from sealed rollups: %d", len(specs), sealedRows)
}

// groupKeys is a usage row's group as a limit counts it: keys but time.
func groupKeys(r callsdb.UsageRow) [3]string { return [3]string{r.Model, r.UserID, r.Source} }

// topGroupsOf lists the groups of rows by their calls, most first, ties by
// model, user, source.
func topGroupsOf(rows []callsdb.UsageRow) [][3]string {
	calls := map[[3]string]uint64{}
	for _, r := range rows {
		calls[groupKeys(r)] += r.Calls
	}
	return rankGroups(calls)
}

// rankGroups orders groups (model, user, source) by their calls, most
// first, ties by key: the order a usage limit keeps them in.
func rankGroups(calls map[[3]string]uint64) [][3]string {
	keys := slices.Collect(maps.Keys(calls))
	slices.SortFunc(keys, func(a, b [3]string) int {
		return cmp.Or(cmp.Compare(calls[b], calls[a]), cmp.Compare(a[0], b[0]), cmp.Compare(a[1], b[1]), cmp.Compare(a[2], b[2]))
	})
	return keys
}

// sameTotals compares two totals rows (cost to rounding).
func sameTotals(a, b *callsdb.UsageRow) bool {
	if a == nil || b == nil {
		return a == b
	}
	x, y := *a, *b
	same := math.Abs(x.CostUSD-y.CostUSD) <= 1e-9*math.Max(1, math.Abs(y.CostUSD))
	x.CostUSD, y.CostUSD = 0, 0
	return same && x == y
}
