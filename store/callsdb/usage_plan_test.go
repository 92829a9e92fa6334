package callsdb

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"
)

// planState seals every hour of [from, to) at version 100+i, marks hours
// dirty as asked, and seals the complete days over their current hours.
func planState(from, to int64, dirty map[int64]uint64, days ...int64) *sealState {
	st := newSealState()
	if dirty != nil {
		st.dirty = dirty
	}
	for h, i := from, 0; h < to; h, i = h+3600, i+1 {
		st.hours[h] = Seal{Grain: grainHour, Period: h, Version: uint64(time.Hour) + uint64(i), Calls: 1}
	}
	for _, d := range days {
		day := Seal{Grain: grainDay, Period: d, Version: 7}
		for h := d; h < d+86400; h += 3600 {
			day.HourVersions = append(day.HourVersions, st.hours[h].Version)
		}
		st.days[d] = day
	}
	return st
}

// grainHours is how many hours a period of grain g spans.
func grainHours(g uint8) int64 {
	switch g {
	case grainHour:
		return 1
	case grainDay:
		return 24
	case grainWeek:
		return 7 * 24
	}
	if isLocalWeek(g) {
		return int64(g) + 160
	}
	if g == grainFourWeeks {
		return fourWeeksDays * 24
	}
	if isFourWeeks(g) {
		return int64(g) + 660
	}
	return int64(g) + 20
}

// covered checks that every second of [from, to) is counted exactly once
// and nothing outside it: day and hour rows and per-call intervals add, the
// plan's minus hours subtract.
func covered(t *testing.T, p usagePlan, from, to int64) {
	t.Helper()
	coveredIn(t, nil, p, from, to)
}

// coveredIn is covered where a UTC or local day row read may be a day so
// far of st (its first hours).
func coveredIn(t *testing.T, st *sealState, p usagePlan, from, to int64) {
	t.Helper()
	hoursOf := func(r sealRef) int64 {
		if st != nil && dayHours(r.Grain) > 0 {
			if x, ok := st.current(r.Grain, r.Period); ok {
				return int64(len(x.HourVersions))
			}
		}
		return grainHours(r.Grain)
	}
	delta := map[int64]int{}
	add := func(a, b int64, w int) {
		if a >= b {
			t.Fatalf("empty span [%d, %d)", a, b)
		}
		delta[a] += w
		delta[b] -= w
	}
	for _, r := range p.rollup {
		add(r.Period, r.Period+hoursOf(r)*3600, 1)
	}
	for _, r := range p.minus {
		if r.Grain != grainHour {
			t.Fatalf("minus %+v: only hours are subtracted", r)
		}
		add(r.Period, r.Period+3600, -1)
	}
	for _, r := range p.perCall {
		add(r[0], r[1], 1)
	}
	delta[from], delta[to] = delta[from], delta[to] // both are boundaries
	var at []int64
	for x := range delta {
		at = append(at, x)
	}
	slices.Sort(at)
	level := 0
	for i, x := range at {
		level += delta[x]
		if i+1 == len(at) {
			break
		}
		inside := x >= from && at[i+1] <= to
		if (inside && level != 1) || (!inside && level != 0) {
			t.Fatalf("[%d, %d) counted %d times (range [%d, %d))", x, at[i+1], level, from, to)
		}
	}
	if at[0] > from || at[len(at)-1] < to || level != 0 {
		t.Fatalf("plan spans %v, range [%d, %d)", at, from, to)
	}
}

func TestPlanUsage(t *testing.T) {
	d0 := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC).Unix()
	kolkata := loadZone(t, "Asia/Kolkata")
	ny := loadZone(t, "America/New_York")
	from, to := d0+1800, d0+3*86400+600 // partial hours at both edges
	dirtyHour := d0 + 86400 + 5*3600
	st := planState(d0, d0+2*86400+12*3600, map[int64]uint64{
		dirtyHour: uint64(time.Hour) + 30, // newer than its seal: dirty
		d0 + 3600: 1,                      // long before its seal: clean
	}, d0, d0+86400)
	for name, c := range map[string]struct {
		s                                 UsageSpec
		loc                               *time.Location
		wantDays, wantHours, minus, calls int
	}{
		// the first half hour per call; hours 1..23 of day 0 as its day row
		// minus hour 0; day 1 has a dirty hour: 23 sealed hours; day 2: 12
		// sealed hours, the rest per call
		"none": {UsageSpec{Group: GroupBy{Model: true}}, time.UTC, 1, 23 + 12, 1, 3},
		"day":  {UsageSpec{Group: GroupBy{Bucket: BucketDay}}, time.UTC, 1, 23 + 12, 1, 3},
		"hour": {UsageSpec{Group: GroupBy{Bucket: BucketHour}}, time.UTC, 0, 23 + 23 + 12, 0, 3},
		// New York's Nov 1 starts at 04:00 UTC (EDT): day 0's row counts on
		// Nov 1 minus hours 0..3; hours 1..3 are added again on Oct 31
		"ny":    {UsageSpec{Group: GroupBy{Bucket: BucketDay}, TZ: "America/New_York"}, ny, 1, 3 + 23 + 12, 4, 3},
		"india": {UsageSpec{Group: GroupBy{Bucket: BucketHour}, TZ: "Asia/Kolkata"}, kolkata, 0, 0, 0, 1},
		// India's days start at 18:30 UTC: only that hour of each day is read per call
		// (days 0 and 1: 18:00, plus the dirty hour and the tail)
		"india-days": {UsageSpec{Group: GroupBy{Bucket: BucketDay}, TZ: "Asia/Kolkata"}, kolkata, 0, 23 + 23 + 12 - 2, 0, 5},
		// no buckets: a half-hour zone only matters at the edges
		"india-total": {UsageSpec{Group: GroupBy{User: true}, TZ: "Asia/Kolkata", SkipPercentiles: true}, kolkata, 1, 23 + 12, 1, 3},
	} {
		// without percentiles: with them no day row is trimmed at the
		// edges (TestPlanUsageUnsignedWithPercentiles)
		c.s.From, c.s.To, c.s.SkipPercentiles = time.Unix(from, 0), time.Unix(to, 0), true
		p := planUsage(c.s, st, c.loc)
		covered(t, p, from, to)
		days, hours := 0, 0
		for _, r := range p.rollup {
			if r.Grain == grainDay {
				days++
			} else {
				hours++
			}
		}
		if days != c.wantDays || hours != c.wantHours || len(p.minus) != c.minus || len(p.perCall) != c.calls {
			t.Errorf("%s: %d days, %d hours, %d minus, per-call %v; want %d, %d, %d, %d intervals",
				name, days, hours, len(p.minus), p.perCall, c.wantDays, c.wantHours, c.minus, c.calls)
		}
		for _, r := range append(slices.Clone(p.rollup), p.minus...) {
			if r.Period == dirtyHour {
				t.Errorf("%s: the dirty hour is read from its seal", name)
			}
		}
		if p.byUser != c.s.Group.User {
			t.Errorf("%s: by_user %v", name, p.byUser)
		}
	}

	// whole days: day 1 is read from its day seal when the range starts at midnight
	s := UsageSpec{From: time.Unix(d0, 0), To: time.Unix(d0+2*86400, 0)}
	p := planUsage(s, planState(d0, d0+2*86400, map[int64]uint64{}, d0, d0+86400), time.UTC)
	covered(t, p, d0, d0+2*86400)
	if len(p.rollup) != 2 || p.rollup[0].Grain != grainDay || p.rollup[1].Grain != grainDay || len(p.perCall) != 0 {
		t.Fatalf("two sealed days: %+v", p)
	}
	// a day seal summed from other hour versions (an hour was sealed again) is not used
	st2 := planState(d0, d0+86400, map[int64]uint64{}, d0)
	h := st2.hours[d0+7200]
	h.Version += 1000
	st2.hours[d0+7200] = h
	p = planUsage(UsageSpec{From: time.Unix(d0, 0), To: time.Unix(d0+86400, 0)}, st2, time.UTC)
	if len(p.rollup) != 24 || p.rollup[0].Grain != grainHour {
		t.Fatalf("stale day seal used: %+v", p)
	}
	// a user filter reads the by-user level, from the copy sorted by user
	// only when every seal read has it in the same table (seals from before
	// migration 0004 have none; from 0004 to 0008, the copy of large
	// granules)
	userDay := UsageSpec{From: time.Unix(d0, 0), To: time.Unix(d0+86400, 0), Filter: UsageFilter{User: "u"}}
	if p := planUsage(userDay, st2, time.UTC); !p.byUser || p.userCopy != "" {
		t.Fatalf("a user filter over seals without copies: by_user %v, copy %q", p.byUser, p.userCopy)
	}
	for k, x := range st2.hours {
		x.UserCopy = userCopyLegacy
		st2.hours[k] = x
	}
	if p := planUsage(userDay, st2, time.UTC); !p.byUser || p.userCopy != legacyUserCopyTable ||
		!strings.Contains(usageRollupSQL(userDay, p), "{db}."+legacyUserCopyTable+"\n") {
		t.Fatalf("a user filter over seals recorded before 0009: by_user %v, copy %q", p.byUser, p.userCopy)
	}
	for k, x := range st2.hours {
		if k != d0+5*3600 {
			x.UserCopy = userCopyCurrent
			st2.hours[k] = x
		}
	}
	if p := planUsage(userDay, st2, time.UTC); p.userCopy != "" {
		t.Fatalf("seals with their copies in two tables: copy %q, want none", p.userCopy)
	}
	x := st2.hours[d0+5*3600]
	x.UserCopy = userCopyCurrent
	st2.hours[d0+5*3600] = x
	if p := planUsage(userDay, st2, time.UTC); !p.byUser || p.userCopy != userCopyTable ||
		!strings.Contains(usageRollupSQL(userDay, p), "{db}."+userCopyTable+"\n") {
		t.Fatalf("a user filter over seals with copies: by_user %v, copy %q", p.byUser, p.userCopy)
	}
	if p := planUsage(UsageSpec{From: userDay.From, To: userDay.To, Group: GroupBy{User: true}}, st2, time.UTC); p.userCopy != "" {
		t.Fatal("the copy sorted by user is for reads of one user")
	}
	// a Limit's groups of models and users read the copy too, narrowed to
	// their users; groups of users alone keep their one row per user
	top := map[usageKey]bool{{model: "m", user: "u"}: true, {model: "n", user: "v"}: true}
	for _, g := range []GroupBy{{Model: true, User: true}, {Bucket: BucketHour, Model: true, User: true}, {Model: true, User: true, Source: true}} {
		s := UsageSpec{From: userDay.From, To: userDay.To, Group: g, Filter: withGroups(UsageFilter{}, g, top)}
		if p := planUsage(s, st2, time.UTC); !p.byUser || p.userCopy != userCopyTable ||
			!strings.Contains(usageRollupSQL(s, p), "user_id IN ('u', 'v')") {
			t.Fatalf("top groups %s: by_user %v, copy %q\n%s", g, p.byUser, p.userCopy, usageRollupSQL(s, p))
		}
	}
	topUsers := UsageSpec{From: userDay.From, To: userDay.To, Group: GroupBy{User: true},
		Filter: withGroups(UsageFilter{}, GroupBy{User: true}, map[usageKey]bool{{user: "u"}: true})}
	if p := planUsage(topUsers, st2, time.UTC); p.userCopy != "" {
		t.Fatalf("top users alone read the copy %q", p.userCopy)
	}
	x = st2.hours[d0+5*3600]
	x.UserCopy = 0
	st2.hours[d0+5*3600] = x
	if p := planUsage(userDay, st2, time.UTC); p.userCopy != "" {
		t.Fatal("one seal without a copy: the copy must not be read")
	}
	// nothing sealed: one per-call interval
	p = planUsage(UsageSpec{From: time.Unix(from, 0), To: time.Unix(to, 0)}, planState(0, 0, nil), time.UTC)
	if len(p.rollup) != 0 || len(p.perCall) != 1 || p.perCall[0] != [2]int64{from, to} {
		t.Fatalf("unsealed range: %+v", p)
	}
}

// withLocalDays seals the local days of loc in [from, to) over st's hours.
func withLocalDays(st *sealState, loc *time.Location, from, to int64) *sealState {
	for _, w := range localDays(loc, from, to) {
		g, _ := localDayGrain((w[1] - w[0]) / 3600)
		hours, ok := st.cleanHours(w[0], w[1])
		if ok {
			st.setDay(spanSeal(g, w[0], 9, hours))
		}
	}
	return st
}

func TestLocalDays(t *testing.T) {
	zone := func(name string) *time.Location { return loadZone(t, name) }
	utc := func(s string) int64 {
		x, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		return x.Unix()
	}
	for _, c := range []struct {
		zone, from, to string
		want           [][2]string // local days as [start, end) in UTC
	}{
		// spring forward on Mar 8: a 23-hour day; the range's first partial day is left out
		{"America/New_York", "2026-03-06T12:00:00Z", "2026-03-10T04:00:00Z", [][2]string{
			{"2026-03-07T05:00:00Z", "2026-03-08T05:00:00Z"}, {"2026-03-08T05:00:00Z", "2026-03-09T04:00:00Z"}, {"2026-03-09T04:00:00Z", "2026-03-10T04:00:00Z"}}},
		// fall back on Nov 1: 25 hours
		{"America/New_York", "2026-11-01T04:00:00Z", "2026-11-02T05:00:00Z", [][2]string{{"2026-11-01T04:00:00Z", "2026-11-02T05:00:00Z"}}},
		// London's winter days are UTC days (sealed as such); Mar 29 has 23 hours from midnight
		{"Europe/London", "2026-03-27T00:00:00Z", "2026-03-30T00:00:00Z", [][2]string{
			{"2026-03-29T00:00:00Z", "2026-03-29T23:00:00Z"}}},
		// Sydney's DST ends Apr 5: 25 hours from 13:00 UTC
		{"Australia/Sydney", "2026-04-04T13:00:00Z", "2026-04-05T14:00:00Z", [][2]string{{"2026-04-04T13:00:00Z", "2026-04-05T14:00:00Z"}}},
		// India's days start inside a UTC hour: none
		{"Asia/Kolkata", "2026-03-01T00:00:00Z", "2026-03-10T00:00:00Z", nil},
		{"UTC", "2026-03-01T00:00:00Z", "2026-03-10T00:00:00Z", nil},
	} {
		got := localDays(zone(c.zone), utc(c.from), utc(c.to))
		var want [][2]int64
		for _, w := range c.want {
			want = append(want, [2]int64{utc(w[0]), utc(w[1])})
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s [%s, %s): local days %v, want %v", c.zone, c.from, c.to, got, want)
		}
	}
}

func TestPlanUsageLocalDays(t *testing.T) {
	ny := loadZone(t, "America/New_York")
	d0 := time.Date(2026, 10, 30, 0, 0, 0, 0, time.UTC).Unix()
	st := withLocalDays(planState(d0, d0+5*86400, map[int64]uint64{}, d0, d0+86400, d0+2*86400, d0+3*86400, d0+4*86400), ny, d0, d0+5*86400)
	grains := func(p usagePlan) map[uint8]int {
		n := map[uint8]int{}
		for _, r := range p.rollup {
			n[r.Grain]++
		}
		return n
	}
	// New York's Oct 31, Nov 1 (25 hours) and Nov 2, bucketed by day and in
	// total: one row set per local day, nothing subtracted
	from := time.Date(2026, 10, 31, 0, 0, 0, 0, ny).Unix()
	to := time.Date(2026, 11, 3, 0, 0, 0, 0, ny).Unix()
	for _, g := range []GroupBy{{Bucket: BucketDay}, {Model: true}} {
		s := UsageSpec{From: time.Unix(from, 0), To: time.Unix(to, 0), TZ: "America/New_York", Group: g}
		p := planUsage(s, st, ny)
		covered(t, p, from, to)
		if n := grains(p); len(p.rollup) != 3 || n[grainLocalDay24] != 2 || n[grainLocalDay25] != 1 || len(p.minus) != 0 || len(p.perCall) != 0 {
			t.Errorf("%v: three local days: %+v", g, p)
		}
	}
	// hour buckets cannot use a day's row
	s := UsageSpec{From: time.Unix(from, 0), To: time.Unix(to, 0), TZ: "America/New_York", Group: GroupBy{Bucket: BucketHour}}
	if p := planUsage(s, st, ny); len(p.rollup) != 73 || grains(p)[grainHour] != 73 {
		t.Errorf("hour buckets: %d rows, %v", len(p.rollup), grains(p))
	}
	// a range starting inside a local day: that day from UTC rows, the
	// whole ones from their local day rows; every second once
	mid := from + 7*3600 + 1800
	s = UsageSpec{From: time.Unix(mid, 0), To: time.Unix(to, 0), TZ: "America/New_York", Group: GroupBy{Bucket: BucketDay}}
	p := planUsage(s, st, ny)
	covered(t, p, mid, to)
	if n := grains(p); n[grainLocalDay24]+n[grainLocalDay25] != 2 {
		t.Errorf("partial first day: %+v", p)
	}
	// a local day summed from an hour seal since sealed again is not used
	st2 := withLocalDays(planState(d0, d0+5*86400, map[int64]uint64{}), ny, d0, d0+5*86400)
	h := st2.hours[from+3*3600]
	h.Version += 1000
	st2.hours[from+3*3600] = h
	s = UsageSpec{From: time.Unix(from, 0), To: time.Unix(to, 0), TZ: "America/New_York", Group: GroupBy{Bucket: BucketDay}}
	p = planUsage(s, st2, ny)
	covered(t, p, from, to)
	if n := grains(p); n[grainLocalDay24] != 1 || n[grainLocalDay25] != 1 || n[grainHour] != 24 {
		t.Errorf("stale local day: %v", n)
	}
}

func TestHourGroups(t *testing.T) {
	var hours []int64
	rows := map[int64]uint64{}
	for i := range 60 {
		h := int64(i) * 3600
		hours = append(hours, h)
		rows[h] = 100
	}
	rows[hours[5]] = 950    // alone, in 3 slices of at most 400
	delete(rows, hours[40]) // no calls
	got := hourGroups(hours, rows, 400)
	want := []hourGroup{{0, 4, 1}, {4, 5, 1}, {5, 6, 3}, {6, 10, 1}}
	if !slices.Equal(got[:4], want) {
		t.Fatalf("groups %v, want %v first", got[:4], want)
	}
	n := 0
	for i, g := range got {
		var total uint64
		for _, h := range hours[g.from:g.to] {
			total += rows[h]
		}
		if g.from != n || g.to <= g.from || g.to-g.from > sealHoursAtOnce || (g.to-g.from > 1 && total > 400) || uint64(g.slices)*400 < total {
			t.Fatalf("group %d %+v (%d rows)", i, g, total)
		}
		n = g.to
	}
	if n != len(hours) {
		t.Fatalf("groups end at %d of %d hours", n, len(hours))
	}
	// few rows: a day at a time
	if got := hourGroups(hours, map[int64]uint64{}, 400); len(got) != 3 || got[0] != (hourGroup{0, 24, 1}) {
		t.Fatalf("empty hours: %v", got)
	}
}

func TestLateHours(t *testing.T) {
	now := time.Date(2026, 11, 1, 12, 20, 0, 0, time.UTC)
	times := func(ts ...time.Time) func(func(time.Time) bool) {
		return func(yield func(time.Time) bool) {
			for _, x := range ts {
				if !yield(x) {
					return
				}
			}
		}
	}
	// sealAfter 15m: the 11:00 hour ended 20m ago, later than 15m-30s: late;
	// 12:00 is open
	got := LateHours(times(now.Add(-80*time.Minute), now.Add(-75*time.Minute), now.Add(-time.Minute), now.Add(-5*time.Hour)), now, 15*time.Minute)
	want := []int64{now.Add(-80 * time.Minute).Truncate(time.Hour).Unix(), now.Add(-5 * time.Hour).Truncate(time.Hour).Unix()}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("late hours %v, want %v", got, want)
	}
	if got := LateHours(times(now.Add(-21*time.Minute)), now, 30*time.Minute); len(got) != 0 {
		t.Fatalf("the 11:00 hour is not late with a 30m horizon: %v", got)
	}
}

// mergePlans are an hour read by an unsigned plan (an hour row) and a
// signed one (its day row with the hour subtracted), for the tests of how
// a read merges histograms.
func mergePlans() (h int64, unsigned, signed usagePlan) {
	h = time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC).Unix()
	unsigned = usagePlan{rollup: []sealRef{{Grain: grainHour, Period: h, Version: 5}}}
	signed = usagePlan{rollup: []sealRef{{Grain: grainDay, Period: h, Version: 6}}, minus: []sealRef{{Grain: grainHour, Period: h, Version: 5}}}
	return h, unsigned, signed
}

// A plan whose rows only add weighs every group's histograms in the sums
// query (quantilesExactWeightedArray). A plan that subtracts hours from day
// rows cannot weigh negative counts: where each group sums few rows the
// histograms come back as text for the Go merge; over a model's month or a
// day of every model sumMap merges them on the server (every user's groups
// are never signed: TestPlanUsageUnsignedPercentilesPerUser). Without
// percentiles none runs.
func TestHistogramMergePlace(t *testing.T) {
	h, unsigned, signed := mergePlans()
	for _, c := range []struct {
		s             UsageSpec
		signed, plain string // merged by, in a signed and in an unsigned plan
	}{
		{UsageSpec{Group: GroupBy{Bucket: BucketHour, Model: true}}, "text", "array"},
		{UsageSpec{Group: GroupBy{Bucket: BucketDay, Model: true}}, "text", "array"},
		{UsageSpec{Group: GroupBy{Bucket: BucketDay}, Filter: UsageFilter{Model: "m"}}, "text", "array"},
		{UsageSpec{Group: GroupBy{Bucket: BucketDay, User: true}, Filter: UsageFilter{User: "u"}}, "text", "array"},
		{UsageSpec{Group: GroupBy{Model: true}, Filter: UsageFilter{BatchID: "b"}}, "text", "array"},
		{UsageSpec{Group: GroupBy{Model: true}}, "sumMap", "array"},
		{UsageSpec{Group: GroupBy{Bucket: BucketDay}}, "sumMap", "array"},
		{UsageSpec{Group: GroupBy{Bucket: BucketHour, Model: true}, SkipPercentiles: true}, "none", "none"},
	} {
		c.s.From, c.s.To = time.Unix(h, 0), time.Unix(h+3600, 0)
		for _, pc := range []struct {
			p    usagePlan
			want string
		}{{signed, c.signed}, {unsigned, c.plain}} {
			sql := usageRollupSQL(c.s, pc.p)
			got := "none"
			switch {
			case strings.Contains(sql, "quantilesExactWeightedArray("+histogramLevels+")(lb, lc) AS latency_q") &&
				strings.Contains(sql, "quantilesExactWeightedArray("+histogramLevels+")(tb, tc) AS ttft_q"):
				got = "array"
			case strings.Contains(sql, "groupArrayIf(concat(toString(lb)"):
				got = "text"
			case strings.Contains(sql, "sumMap(lb, lc)"):
				got = "sumMap"
			}
			if got != pc.want {
				t.Errorf("%+v %+v (signed %v): histograms merged by %s, want %s", c.s.Group, c.s.Filter, pc.p.signed(), got, pc.want)
			}
		}
	}
}

// Reads weighing the percentiles of every model and user's groups run on
// one thread (singleThreaded); every other read keeps the server's
// default.
func TestSingleThreadedUsageRead(t *testing.T) {
	h, unsigned, signed := mergePlans()
	for _, c := range []struct {
		s    UsageSpec
		p    usagePlan
		want bool
	}{
		{UsageSpec{Group: GroupBy{Model: true, User: true}}, unsigned, true},
		{UsageSpec{Group: GroupBy{Bucket: BucketDay, Model: true, User: true, Source: true}}, unsigned, true},
		{UsageSpec{Group: GroupBy{Model: true, User: true}, SkipPercentiles: true}, unsigned, false},
		{UsageSpec{Group: GroupBy{Model: true, User: true}, Filter: UsageFilter{User: "u"}}, signed, false}, // merged as text
		{UsageSpec{Group: GroupBy{User: true}}, unsigned, false},
		{UsageSpec{Group: GroupBy{Model: true}}, unsigned, false},
		// a Limit's second read weighs its groups alone
		{UsageSpec{Group: GroupBy{Model: true, User: true}, Filter: withGroups(UsageFilter{}, GroupBy{Model: true, User: true},
			map[usageKey]bool{{model: "m", user: "u"}: true})}, unsigned, false},
	} {
		c.s.From, c.s.To = time.Unix(h, 0), time.Unix(h+3600, 0)
		sql := usageRollupSQL(c.s, c.p)
		if got := strings.HasSuffix(sql, "\nSETTINGS max_threads = 1"); got != c.want {
			t.Errorf("%+v %+v (signed %v): one thread %v, want %v", c.s.Group, c.s.Filter, c.p.signed(), got, c.want)
		}
		if n := strings.Count(sql, "SETTINGS"); n > 1 || (n == 1) != c.want {
			t.Errorf("%+v: %d SETTINGS clauses", c.s.Group, n)
		}
	}
}

// TestPlanUsageUserTotals: a read that keeps users apart but not sources or
// batches reads day rows summed over them (levelUserTotals) when every day
// seal it uses has them, hour rows (added or subtracted) at levelUsers; any
// other read, or a day recorded before migration 0006, keeps the levels it
// had.
func TestPlanUsageUserTotals(t *testing.T) {
	d0 := time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC).Unix()
	st := planState(d0, d0+3*86400, map[int64]uint64{}, d0, d0+86400, d0+2*86400)
	for d, x := range st.days {
		x.UserTotals = true
		st.days[d] = x
	}
	// from 05:00 on the first day to 21:00 on the last: day rows minus the
	// hours out of the range
	spec := func(g GroupBy, f UsageFilter) UsageSpec {
		return UsageSpec{From: time.Unix(d0+5*3600, 0), To: time.Unix(d0+3*86400-3*3600, 0), Group: g, Filter: f, SkipPercentiles: true}
	}
	level := func(p usagePlan, s UsageSpec) (days, hours string) {
		sql := rollupRowsSQL(s, p, false)
		for _, l := range []uint8{levelModels, levelUsers, levelUserTotals} {
			if strings.Contains(sql, fmt.Sprintf("(by_user = %d AND grain = %d ", l, grainDay)) {
				days += fmt.Sprint(l)
			}
			if strings.Contains(sql, fmt.Sprintf("(by_user = %d AND grain = %d ", l, grainHour)) {
				hours += fmt.Sprint(l)
			}
		}
		return days, hours
	}
	for _, c := range []struct {
		name        string
		g           GroupBy
		f           UsageFilter
		totals      bool
		days, hours string
	}{
		{"model x user", GroupBy{Model: true, User: true}, UsageFilter{}, true, "2", "1"},
		{"user by day", GroupBy{Bucket: BucketDay, User: true}, UsageFilter{Model: "m"}, true, "2", "1"},
		{"user x source", GroupBy{User: true, Source: true}, UsageFilter{}, false, "1", "1"},
		{"user, one source", GroupBy{User: true}, UsageFilter{Source: "online"}, false, "1", "1"},
		{"user, one batch", GroupBy{User: true}, UsageFilter{BatchID: "b"}, false, "1", "1"},
		{"one user, no copy", GroupBy{Model: true}, UsageFilter{User: "u"}, true, "2", "1"},
		{"model", GroupBy{Model: true}, UsageFilter{}, false, "0", "0"},
	} {
		s := spec(c.g, c.f)
		p := planUsage(s, st, time.UTC)
		covered(t, p, s.From.Unix(), s.To.Unix())
		if len(p.minus) == 0 {
			t.Fatalf("%s: the plan subtracts no hours: %+v", c.name, p)
		}
		days, hours := level(p, s)
		if p.userTotals != c.totals || days != c.days || hours != c.hours {
			t.Errorf("%s: totals %v, day rows at level %q, hour rows at %q; want %v, %q, %q", c.name, p.userTotals, days, hours, c.totals, c.days, c.hours)
		}
	}
	// a user filter over seals with their copies sorted by user reads the
	// copy (one level)
	withCopy := planState(d0, d0+3*86400, map[int64]uint64{}, d0, d0+86400, d0+2*86400)
	for h, x := range withCopy.hours {
		x.UserCopy = userCopyCurrent
		withCopy.hours[h] = x
	}
	for d, x := range withCopy.days {
		x.UserCopy, x.UserTotals = userCopyCurrent, true
		withCopy.days[d] = x
	}
	if p := planUsage(spec(GroupBy{Model: true}, UsageFilter{User: "u"}), withCopy, time.UTC); p.userCopy != userCopyTable || p.userTotals {
		t.Errorf("one user with copies: copy %q, totals %v", p.userCopy, p.userTotals)
	}
	// a day recorded before migration 0006 makes the whole read keep
	// levelUsers; hours alone have no totals
	old := st.days[d0+86400]
	old.UserTotals = false
	st.days[d0+86400] = old
	s := spec(GroupBy{Model: true, User: true}, UsageFilter{})
	if p := planUsage(s, st, time.UTC); p.userTotals {
		t.Error("a day without totals per user read at levelUserTotals")
	} else if days, _ := level(p, s); days != "1" {
		t.Errorf("day rows at level %q, want 1", days)
	}
	hoursOnly := UsageSpec{From: time.Unix(d0+3600, 0), To: time.Unix(d0+5*3600, 0), Group: GroupBy{User: true}}
	if p := planUsage(hoursOnly, st, time.UTC); len(p.rollup) != 4 {
		t.Errorf("hours only: %d seals", len(p.rollup))
	} else if _, hours := level(p, hoursOnly); hours != "1" {
		t.Errorf("hours only, sealed without totals per user: hour rows at level %q, want 1", hours)
	}
}

// daysWithUserTotals is three days of hours from d0, each day sealed with
// its totals per user and per user over models (the hours without).
func daysWithUserTotals(d0 int64) *sealState {
	st := planState(d0, d0+3*86400, map[int64]uint64{}, d0, d0+86400, d0+2*86400)
	for d, x := range st.days {
		x.UserTotals, x.UserOverModels = true, true
		st.days[d] = x
	}
	return st
}

// TestPlanUsageSummedHours: hour seals that have their rows keyed by user
// summed per user (UserOverModels) are read at that level by reads grouped
// by user alone, each hour by its own seal: hours sealed before hour seals
// had them stay at levelUsers in the same read, added or subtracted, and so
// do every hour of reads that keep models or sources apart.
func TestPlanUsageSummedHours(t *testing.T) {
	d0 := time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC).Unix()
	st := daysWithUserTotals(d0)
	summed := func(h int64) bool { return (h-d0)/3600%3 != 0 } // every third hour is old
	for h, x := range st.hours {
		x.UserOverModels = summed(h)
		st.hours[h] = x
	}
	for _, c := range []struct {
		name   string
		g      GroupBy
		f      UsageFilter
		skip   bool
		summed uint8 // the level of the hours that have totals per user
	}{
		{"user", GroupBy{User: true}, UsageFilter{}, true, levelUserOverModels},
		{"user, percentiles", GroupBy{User: true}, UsageFilter{}, false, levelUserOverModels},
		{"user by hour", GroupBy{Bucket: BucketHour, User: true}, UsageFilter{}, false, levelUserOverModels},
		{"model x user", GroupBy{Model: true, User: true}, UsageFilter{}, true, levelUsers},
		{"user by day, one model", GroupBy{Bucket: BucketDay, User: true}, UsageFilter{Model: "m"}, true, levelUsers},
		{"user x source", GroupBy{User: true, Source: true}, UsageFilter{}, true, levelUsers},
		{"user, one batch", GroupBy{User: true}, UsageFilter{BatchID: "b"}, true, levelUsers},
		{"model", GroupBy{Model: true}, UsageFilter{}, true, levelModels},
	} {
		s := UsageSpec{From: time.Unix(d0+5*3600, 0), To: time.Unix(d0+3*86400-3*3600, 0), Group: c.g, Filter: c.f, SkipPercentiles: c.skip}
		p := planUsage(s, st, time.UTC)
		covered(t, p, s.From.Unix(), s.To.Unix())
		hours := 0
		for _, r := range append(slices.Clone(p.rollup), p.minus...) {
			if r.Grain != grainHour {
				continue
			}
			hours++
			want := c.summed
			if !summed(r.Period) && c.summed != levelModels {
				want = levelUsers
			}
			if got := p.level(r); got != want {
				t.Errorf("%s: hour %s read at level %d, want %d", c.name, unixUTC(r.Period), got, want)
			}
			if sql := rollupRowsSQL(s, p, !c.skip); !strings.Contains(sql, fmt.Sprintf("(by_user = %d AND grain = %d ", want, grainHour)) {
				t.Errorf("%s: hour %s read at level %d, but no run of hours at that level in\n%s", c.name, unixUTC(r.Period), want, sql)
			}
		}
		if hours == 0 {
			t.Fatalf("%s: the plan reads no hour seal: %+v", c.name, p)
		}
	}
}

// TestPlanUsageUserOverModels: a read grouped by user that keeps neither
// models nor sources apart reads day rows summed over models too
// (levelUserOverModels) when every day seal it uses has them; a model
// grouping or filter, or one day recorded before migration 0010, keeps
// levelUserTotals; hour rows stay at levelUsers.
func TestPlanUsageUserOverModels(t *testing.T) {
	d0 := time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC).Unix()
	st := daysWithUserTotals(d0)
	spec := func(g GroupBy, f UsageFilter) UsageSpec {
		return UsageSpec{From: time.Unix(d0+5*3600, 0), To: time.Unix(d0+3*86400-3*3600, 0), Group: g, Filter: f, SkipPercentiles: true}
	}
	levels := func(p usagePlan, s UsageSpec, grain uint8) (out string) {
		sql := rollupRowsSQL(s, p, false)
		for _, l := range []uint8{levelModels, levelUsers, levelUserTotals, levelModelTotals, levelUserOverModels} {
			if strings.Contains(sql, fmt.Sprintf("(by_user = %d AND grain = %d ", l, grain)) {
				out += fmt.Sprint(l)
			}
		}
		return out
	}
	for _, c := range []struct {
		name        string
		g           GroupBy
		f           UsageFilter
		days, hours string
	}{
		{"user", GroupBy{User: true}, UsageFilter{}, "4", "1"},
		{"user by day", GroupBy{Bucket: BucketDay, User: true}, UsageFilter{}, "4", "1"},
		{"user by day, one model", GroupBy{Bucket: BucketDay, User: true}, UsageFilter{Model: "m"}, "2", "1"},
		{"model x user", GroupBy{Model: true, User: true}, UsageFilter{}, "2", "1"},
		{"user x source", GroupBy{User: true, Source: true}, UsageFilter{}, "1", "1"},
		{"model", GroupBy{Model: true}, UsageFilter{}, "0", "0"},
	} {
		s := spec(c.g, c.f)
		p := planUsage(s, st, time.UTC)
		covered(t, p, s.From.Unix(), s.To.Unix())
		if len(p.minus) == 0 {
			t.Fatalf("%s: the plan subtracts no hours: %+v", c.name, p)
		}
		if days, hours := levels(p, s, grainDay), levels(p, s, grainHour); days != c.days || hours != c.hours {
			t.Errorf("%s: day rows at level %q, hour rows at %q; want %q, %q", c.name, days, hours, c.days, c.hours)
		}
	}
	// with percentiles no hour is subtracted, and the whole day in the
	// range is still read summed over models
	withPercentiles := spec(GroupBy{User: true}, UsageFilter{})
	withPercentiles.SkipPercentiles = false
	if p := planUsage(withPercentiles, st, time.UTC); len(p.minus) != 0 || levels(p, withPercentiles, grainDay) != "4" {
		t.Errorf("user with percentiles: %d hours subtracted, day rows at level %q; want none, 4", len(p.minus), levels(p, withPercentiles, grainDay))
	}
	old := st.days[d0+86400]
	old.UserOverModels = false
	st.days[d0+86400] = old
	s := spec(GroupBy{User: true}, UsageFilter{})
	if p := planUsage(s, st, time.UTC); p.userOverModels || levels(p, s, grainDay) != "2" {
		t.Errorf("a day without totals over models: userOverModels %v, day rows at level %q; want false, 2", p.userOverModels, levels(p, s, grainDay))
	}
}

// TestPlanUsageEmptyHours: hours sealed without calls have no rows, so a
// day row over them needs nothing subtracted (the plan stays unsigned, and
// its percentiles merge by weighing).
func TestPlanUsageEmptyHours(t *testing.T) {
	d0 := time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC).Unix()
	st := planState(d0, d0+86400, map[int64]uint64{}, d0)
	for h := d0 + 20*3600; h < d0+86400; h += 3600 {
		x := st.hours[h]
		x.Calls = 0
		st.hours[h] = x
	}
	s := UsageSpec{From: time.Unix(d0, 0), To: time.Unix(d0+20*3600, 0), Group: GroupBy{Model: true}}
	p := planUsage(s, st, time.UTC)
	if len(p.rollup) != 1 || p.rollup[0].Grain != grainDay || p.signed() || len(p.perCall) != 0 {
		t.Fatalf("a day whose hours out of the range are empty: %+v, want its day row alone", p)
	}
	if histogramMergeOf(s, p.signed()) != mergeArray {
		t.Fatal("percentiles of an unsigned plan are not weighed in the sums query")
	}
	// an hour out of the range with calls is subtracted (without
	// percentiles: with them the day's hours are read instead)
	x := st.hours[d0+22*3600]
	x.Calls = 5
	st.hours[d0+22*3600] = x
	if p = planUsage(s, st, time.UTC); p.signed() || len(p.rollup) != 20 {
		t.Fatalf("with percentiles a day row is trimmed: %+v", p)
	}
	s.SkipPercentiles = true
	p = planUsage(s, st, time.UTC)
	if len(p.minus) != 1 || p.minus[0].Period != d0+22*3600 {
		t.Fatalf("the out-of-range hour with calls is not subtracted: %+v", p)
	}
}

// TestPlanUsageUnsignedWithPercentiles: a read with percentiles never
// trims a day row at the range's edges (one subtraction would make every
// histogram of the read merge signed); a day bucket of a zone without local
// day seals still moves its other hours where that reads under half the
// rows of reading its hours (Berlin's one hour a day, not New York's five),
// never where every user's groups are read (they could only merge by
// summing pairs per group). Without percentiles edges are trimmed where
// that reads fewer rows.
func TestPlanUsageUnsignedWithPercentiles(t *testing.T) {
	d0 := time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC).Unix()
	st := planState(d0-86400, d0+4*86400, map[int64]uint64{}, d0-86400, d0, d0+86400, d0+2*86400, d0+3*86400)
	ny := loadZone(t, "America/New_York")
	ragged := [2]int64{d0 + 2*3600, d0 + 3*86400 - 3*3600}
	nyDays := [2]int64{d0 + 5*3600, d0 + 3*86400 + 5*3600} // New York's midnights (EST)
	berlin := loadZone(t, "Europe/Berlin")
	berlinDays := [2]int64{d0 - 3600, d0 + 3*86400 - 3600} // Berlin's midnights (CET)
	for _, c := range []struct {
		name   string
		s      UsageSpec
		r      [2]int64
		loc    *time.Location
		signed bool
	}{
		{"model x user with percentiles", UsageSpec{Group: GroupBy{Model: true, User: true}}, ragged, time.UTC, false},
		{"user by day with percentiles", UsageSpec{Group: GroupBy{Bucket: BucketDay, User: true}}, ragged, time.UTC, false},
		{"one user by day with percentiles", UsageSpec{Group: GroupBy{Bucket: BucketDay, Model: true}, Filter: UsageFilter{User: "u"}}, ragged, time.UTC, false},
		{"model with percentiles", UsageSpec{Group: GroupBy{Model: true}}, ragged, time.UTC, false},
		{"model x user", UsageSpec{Group: GroupBy{Model: true, User: true}, SkipPercentiles: true}, ragged, time.UTC, true},
		{"model", UsageSpec{Group: GroupBy{Model: true}, SkipPercentiles: true}, ragged, time.UTC, true},
		{"New York days by model with percentiles", UsageSpec{Group: GroupBy{Bucket: BucketDay, Model: true}, TZ: ny.String()}, nyDays, ny, false},
		{"New York days by model", UsageSpec{Group: GroupBy{Bucket: BucketDay, Model: true}, TZ: ny.String(), SkipPercentiles: true}, nyDays, ny, true},
		{"Berlin days by model with percentiles", UsageSpec{Group: GroupBy{Bucket: BucketDay, Model: true}, TZ: berlin.String()}, berlinDays, berlin, true},
		{"New York days by user with percentiles", UsageSpec{Group: GroupBy{Bucket: BucketDay, User: true}, TZ: ny.String()}, nyDays, ny, false},
	} {
		c.s.From, c.s.To = time.Unix(c.r[0], 0), time.Unix(c.r[1], 0)
		p := planUsage(c.s, st, c.loc)
		covered(t, p, c.r[0], c.r[1])
		if p.signed() != c.signed {
			t.Errorf("%s: signed %v, want %v (%d minus hours)", c.name, p.signed(), c.signed, len(p.minus))
		}
	}
}

// sealedDaysState is n days from d0 sealed over clean hours, as a current
// release seals them (copies keyed by user, totals per user).
func sealedDaysState(d0 int64, n int) *sealState {
	days := make([]int64, n)
	for i := range days {
		days[i] = d0 + int64(i)*86400
	}
	st := planState(d0, d0+int64(n)*86400, map[int64]uint64{}, days...)
	for d, x := range st.days {
		x.UserTotals, x.UserCopy = true, userCopyCurrent
		st.days[d] = x
	}
	for h, x := range st.hours {
		x.UserCopy = userCopyCurrent
		st.hours[h] = x
	}
	return st
}

// withWeeks seals every week of [from, to) whose days st has current.
func withWeeks(st *sealState, from, to int64) *sealState {
	return withSpans(st, utcSpans(grainWeek, from, to, 7, weekSeconds), 11)
}

func TestPlanUsageWeeks(t *testing.T) {
	// 2026-10-29 is a Thursday: the weeks start there and on Nov 5, 12, 19, 26
	d0 := time.Date(2026, 10, 29, 0, 0, 0, 0, time.UTC).Unix()
	if d0%weekSeconds != 0 {
		t.Fatalf("%s does not start a week", unixUTC(d0))
	}
	const days = 35
	st := sealedDaysState(d0, days)
	withWeeks(st, d0, d0+days*86400)
	ny := loadZone(t, "America/New_York")
	withLocalDays(st, ny, d0, d0+days*86400)
	count := func(p usagePlan) (weeks, spans, hours int) {
		for _, r := range p.rollup {
			switch r.Grain {
			case grainWeek:
				weeks++
			case grainHour:
				hours++
			default:
				spans++
			}
		}
		return weeks, spans, hours
	}
	// 29 days from 20:00 on Nov 3: the whole weeks from Nov 5, 12 and 19,
	// the rest (a day and 4 hours before, 6 days and 20 hours after) from
	// days and hours
	from, to := d0+5*86400+20*3600, d0+35*86400+20*3600-86400
	for _, c := range []struct {
		name  string
		s     UsageSpec
		loc   *time.Location
		weeks int
	}{
		{"model x user", UsageSpec{Group: GroupBy{Model: true, User: true}, SkipPercentiles: true}, time.UTC, 3},
		{"user with percentiles", UsageSpec{Group: GroupBy{User: true}}, time.UTC, 3},
		{"model, New York", UsageSpec{Group: GroupBy{Model: true}, TZ: "America/New_York"}, ny, 3},
		{"one user", UsageSpec{Filter: UsageFilter{User: "u"}}, time.UTC, 3},
		{"by day", UsageSpec{Group: GroupBy{Bucket: BucketDay, Model: true}}, time.UTC, 0},
		{"by hour", UsageSpec{Group: GroupBy{Bucket: BucketHour}}, time.UTC, 0},
	} {
		c.s.From, c.s.To = time.Unix(from, 0), time.Unix(to, 0)
		p := planUsage(c.s, st, c.loc)
		covered(t, p, from, to)
		weeks, spans, hours := count(p)
		if weeks != c.weeks {
			t.Errorf("%s: %d weeks, want %d (%d days, %d hours)", c.name, weeks, c.weeks, spans, hours)
		}
		// day rows with hours subtracted at the last day; with percentiles
		// no subtraction: that day's 20 hours
		bound := 8 + 4
		if !mayTrimDays(c.s) {
			bound = 7 + 24
		}
		if c.weeks > 0 && c.loc == time.UTC && spans+hours > bound {
			t.Errorf("%s: %d days and %d hours besides the weeks", c.name, spans, hours)
		}
		if c.s.Filter.User != "" && p.userCopy != userCopyTable {
			t.Errorf("%s: the copy sorted by user is not read", c.name)
		}
		if c.s.Group.User && (!p.userTotals || !strings.Contains(rollupRowsSQL(c.s, p, false), fmt.Sprintf("(by_user = %d AND grain = %d ", levelUserTotals, grainWeek))) {
			t.Errorf("%s: week rows not read at the level summed over sources", c.name)
		}
	}
	// a read without buckets costs the same in any zone (local days are
	// taken only where they are cheaper than UTC days)
	cost := func(p usagePlan) int {
		weeks, spans, hours := count(p)
		return dayRowHours*(weeks+spans) + hours + len(p.minus)
	}
	for _, r := range [][2]int64{{from, to}, {d0 + 7*86400 + 5*3600, d0 + 29*86400 + 5*3600}} {
		utc := planUsage(UsageSpec{From: time.Unix(r[0], 0), To: time.Unix(r[1], 0), Group: GroupBy{Model: true}}, st, time.UTC)
		nyPlan := planUsage(UsageSpec{From: time.Unix(r[0], 0), To: time.Unix(r[1], 0), Group: GroupBy{Model: true}, TZ: ny.String()}, st, ny)
		covered(t, nyPlan, r[0], r[1])
		if cost(nyPlan) > cost(utc) {
			t.Errorf("range %v: New York's plan costs %d hour rows, UTC's %d", r, cost(nyPlan), cost(utc))
		}
	}
	// New York's whole days: its local days, no hours subtracted
	nyDays := planUsage(UsageSpec{From: time.Unix(d0+7*86400+5*3600, 0), To: time.Unix(d0+9*86400+5*3600, 0), TZ: ny.String()}, st, ny)
	if _, spans, hours := count(nyDays); spans != 2 || hours != 0 || nyDays.signed() {
		t.Errorf("two New York days: %+v", nyDays)
	}

	// a day of a week sealed again (its hour was): that week is not read,
	// its other days are; after the week is sealed again it is
	s := UsageSpec{From: time.Unix(from, 0), To: time.Unix(to, 0), Group: GroupBy{User: true}}
	day := d0 + 15*86400
	x := st.days[day]
	x.Version++
	st.days[day] = x
	p := planUsage(s, st, time.UTC)
	covered(t, p, from, to)
	if weeks, _, _ := count(p); weeks != 2 {
		t.Fatalf("a stale week is read: %d weeks", weeks)
	}
	withWeeks(st, d0, d0+days*86400)
	if weeks, _, _ := count(planUsage(s, st, time.UTC)); weeks != 3 {
		t.Fatalf("the week sealed again is not read: %d weeks", weeks)
	}
	// a dirty hour makes its day, and so its week, unreadable
	st.dirty[day+7*3600] = uint64(2 * time.Hour)
	p = planUsage(s, st, time.UTC)
	covered(t, p, from, to)
	if weeks, _, hours := count(p); weeks != 2 || hours < 23 {
		t.Fatalf("a week over a dirty hour: %d weeks, %d hours", weeks, hours)
	}
}

// withLocalWeeks seals the local weeks of loc in [from, to) whose days st
// has current.
func withLocalWeeks(st *sealState, loc *time.Location, from, to int64) *sealState {
	return withSpans(st, localWeeks(loc, from, to), 13)
}

// withSpans seals the spans whose days st has current, at version v, with
// the flags the sealer records (spanSeal).
func withSpans(st *sealState, spans []daySpan, v uint64) *sealState {
	for _, w := range spans {
		if days, ok := st.spanDays(w.days); ok {
			st.setDay(spanSeal(w.grain, w.start, v, days))
		}
	}
	return st
}

func TestPlanUsageLocalWeeks(t *testing.T) {
	ny := loadZone(t, "America/New_York")
	d0 := time.Date(2026, 10, 29, 0, 0, 0, 0, time.UTC).Unix() // a Thursday
	const days = 35
	st := sealedDaysState(d0, days)
	withWeeks(st, d0, d0+days*86400)
	withLocalDays(st, ny, d0, d0+days*86400)
	// New York's weeks: from Oct 29 (169 hours: daylight saving ends on
	// Nov 1), Nov 5, 12 and 19 (168 hours, from 05:00 UTC)
	weeks := localWeeks(ny, d0, d0+days*86400)
	want := []daySpan{{grain: grainLocalWeek169, start: d0 + 4*3600, end: d0 + 7*86400 + 5*3600}}
	for i := int64(1); i <= 3; i++ {
		want = append(want, daySpan{grain: grainLocalWeek168, start: d0 + 7*86400*i + 5*3600, end: d0 + 7*86400*(i+1) + 5*3600})
	}
	if len(weeks) != 4 {
		t.Fatalf("New York's weeks in 35 days from %s: %d, want 4", unixUTC(d0), len(weeks))
	}
	for i, w := range want {
		if weeks[i].grain != w.grain || weeks[i].start != w.start || weeks[i].end != w.end || weeks[i].days[0][0] != w.start || weeks[i].days[6][1] != w.end {
			t.Errorf("week %d: %+v, want %+v", i, weeks[i], w)
		}
	}
	if n := len(localWeeks(time.UTC, d0, d0+days*86400)); n != 0 {
		t.Errorf("UTC has %d local weeks", n)
	}
	// four New York weeks, model x user without percentiles: without local
	// week seals, UTC weeks and days with the hours between them; with
	// them, the four week rows
	from, to := want[0].start, want[3].end
	s := UsageSpec{From: time.Unix(from, 0), To: time.Unix(to, 0), Group: GroupBy{Model: true, User: true}, TZ: ny.String(), SkipPercentiles: true}
	cost := func(p usagePlan) int { return p.cost(p.perCall) }
	before := planUsage(s, st, ny)
	covered(t, before, from, to)
	withLocalWeeks(st, ny, d0, d0+days*86400)
	p := planUsage(s, st, ny)
	covered(t, p, from, to)
	n := map[uint8]int{}
	for _, r := range p.rollup {
		n[r.Grain]++
	}
	if len(p.rollup) != 4 || n[grainLocalWeek169] != 1 || n[grainLocalWeek168] != 3 || len(p.minus) != 0 || len(p.perCall) != 0 {
		t.Fatalf("four New York weeks: %+v", p)
	}
	if cost(p) >= cost(before) {
		t.Errorf("local weeks cost %d hour rows, the plan without them %d", cost(p), cost(before))
	}
	if sql := rollupRowsSQL(s, p, false); !strings.Contains(sql, fmt.Sprintf("(by_user = %d AND grain = %d ", levelUserTotals, grainLocalWeek169)) {
		t.Errorf("local week rows not read at the level summed over sources:\n%s", sql)
	}
	// UTC reads never take them; reads by day neither
	if p := planUsage(UsageSpec{From: time.Unix(from, 0), To: time.Unix(to, 0), Group: GroupBy{Model: true}}, st, time.UTC); slices.ContainsFunc(p.rollup, func(r sealRef) bool { return isLocalWeek(r.Grain) }) {
		t.Error("a UTC read took a New York week")
	}
	if p := planUsage(UsageSpec{From: time.Unix(from, 0), To: time.Unix(to, 0), Group: GroupBy{Bucket: BucketDay}, TZ: ny.String()}, st, ny); slices.ContainsFunc(p.rollup, func(r sealRef) bool { return isLocalWeek(r.Grain) }) {
		t.Error("a read by day took a week")
	}
	// a day of the second week sealed again: that week is not read until it
	// is sealed again too
	k := sealKey{grainLocalDay24, want[1].start + 86400}
	x, ok := st.localDays[k]
	if !ok {
		t.Fatalf("no local day %+v", k)
	}
	x.Version++
	st.localDays[k] = x
	p = planUsage(s, st, ny)
	covered(t, p, from, to)
	for _, r := range p.rollup {
		if r.Grain == grainLocalWeek168 && r.Period == want[1].start {
			t.Fatal("a week summed from a superseded day was read")
		}
	}
	if days, ok := st.spanDays(weeks[1].days[:]); !ok || days[1].Version != x.Version {
		t.Fatalf("the week's days: %v %v", days, ok)
	}
}

// TestUsageSQLNamesTheHistogramsItMerges: a read's rows carry the
// histogram columns exactly when the query above them merges histograms
// (18.16 would read them regardless, and a query merging columns its rows
// lack fails).
func TestUsageSQLNamesTheHistogramsItMerges(t *testing.T) {
	from := time.Date(2026, 11, 2, 5, 0, 0, 0, time.UTC)
	qs := samplePlannedUsage(from, from.Add(50*time.Hour))
	if len(qs) == 0 {
		t.Fatal("no sample reads")
	}
	for _, q := range qs {
		merges := false
		for _, use := range []string{"ARRAY JOIN", "(lb, lc)", "toString(lb)", "sumMap(lb"} {
			merges = merges || strings.Contains(q, use)
		}
		if names := strings.Contains(q, " AS lb"); names != merges {
			t.Errorf("rows name histograms %v, query merges them %v:\n%s", names, merges, q)
		}
	}
}

// TestPlanUsageModelTotals: a read whose group is one hour of one model
// reads hour rows summed per model (levelModelTotals) and takes a sealed
// group's percentile buckets from its row, when every hour seal it uses has
// them; any other read, or an hour recorded before migration 0007, keeps
// the levels it had and weighs the histograms of its rows.
func TestPlanUsageModelTotals(t *testing.T) {
	d0 := time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC).Unix()
	st := planState(d0, d0+2*86400, map[int64]uint64{}, d0)
	for h, x := range st.hours {
		x.ModelTotals = true
		st.hours[h] = x
	}
	// from 05:30 on the first day to 21:00 on the second: per-call rows at
	// the start, sealed hours after
	spec := func(g GroupBy, f UsageFilter, tz string) UsageSpec {
		return UsageSpec{From: time.Unix(d0+5*3600+1800, 0), To: time.Unix(d0+2*86400-3*3600, 0), Group: g, Filter: f, TZ: tz}
	}
	for _, c := range []struct {
		name   string
		g      GroupBy
		f      UsageFilter
		tz     string
		totals bool
	}{
		{"hour x model", GroupBy{Bucket: BucketHour, Model: true}, UsageFilter{}, "", true},
		{"hour x model, New York", GroupBy{Bucket: BucketHour, Model: true}, UsageFilter{}, "America/New_York", true},
		{"hours of one model", GroupBy{Bucket: BucketHour}, UsageFilter{Model: "m"}, "", true},
		{"hour", GroupBy{Bucket: BucketHour}, UsageFilter{}, "", false},
		{"hour x model x source", GroupBy{Bucket: BucketHour, Model: true, Source: true}, UsageFilter{}, "", false},
		{"hour x model, one source", GroupBy{Bucket: BucketHour, Model: true}, UsageFilter{Source: "online"}, "", false},
		{"hour x model, one user", GroupBy{Bucket: BucketHour, Model: true}, UsageFilter{User: "u"}, "", false},
		{"hour x model x user", GroupBy{Bucket: BucketHour, Model: true, User: true}, UsageFilter{}, "", false},
		{"day x model", GroupBy{Bucket: BucketDay, Model: true}, UsageFilter{}, "", false},
		{"hour x model, India (every hour per call)", GroupBy{Bucket: BucketHour, Model: true}, UsageFilter{}, "Asia/Kolkata", false},
	} {
		s := spec(c.g, c.f, c.tz)
		loc := time.UTC
		if c.tz != "" {
			loc = loadZone(t, c.tz)
		}
		p := planUsage(s, st, loc)
		covered(t, p, s.From.Unix(), s.To.Unix())
		sql := usageRollupSQL(s, p)
		atLevel := strings.Contains(sql, fmt.Sprintf("(by_user = %d AND grain = %d ", levelModelTotals, grainHour))
		weighsSealed := strings.Contains(sql, "sealed_lq") && strings.Contains(sql, "latency_q AS lq")
		if p.modelTotals != c.totals || atLevel != c.totals || weighsSealed != c.totals {
			t.Errorf("%s: model totals %v, hour rows at level %d %v, sealed buckets read %v; want %v", c.name, p.modelTotals, levelModelTotals, atLevel, weighsSealed, c.totals)
		}
	}
	// without percentiles the rows are read at that level, no buckets
	s := spec(GroupBy{Bucket: BucketHour, Model: true}, UsageFilter{}, "")
	s.SkipPercentiles = true
	if sql := usageRollupSQL(s, planUsage(s, st, time.UTC)); !strings.Contains(sql, fmt.Sprintf("by_user = %d", levelModelTotals)) || strings.Contains(sql, "lq") {
		t.Errorf("hour x model without percentiles:\n%s", sql)
	}
	// an hour recorded before migration 0007 makes the whole read keep
	// levelModels and weigh histograms
	old := st.hours[d0+30*3600]
	old.ModelTotals = false
	st.hours[d0+30*3600] = old
	s = spec(GroupBy{Bucket: BucketHour, Model: true}, UsageFilter{}, "")
	p := planUsage(s, st, time.UTC)
	if sql := usageRollupSQL(s, p); p.modelTotals || strings.Contains(sql, "lq") || !strings.Contains(sql, fmt.Sprintf("(by_user = %d AND grain = %d ", levelModels, grainHour)) {
		t.Errorf("an hour without model totals: totals %v\n%s", p.modelTotals, sql)
	}
}

// TestPlanUsageModelCopy: reads without a user key or filter read
// usage_rollup_by_model when every seal they use (added or subtracted) has
// its copy there, at the levels they would read in usage_rollup; a seal
// recorded before migration 0008 sends the whole read back to usage_rollup,
// and reads keyed or filtered by user never read the copy.
func TestPlanUsageModelCopy(t *testing.T) {
	d0 := time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC).Unix()
	st := planState(d0, d0+3*86400, map[int64]uint64{}, d0, d0+86400, d0+2*86400)
	copies := func(on bool) {
		for h, x := range st.hours {
			x.ModelCopy, x.ModelTotals = on, true
			st.hours[h] = x
		}
		for d, x := range st.days {
			x.ModelCopy = on
			st.days[d] = x
		}
	}
	copies(true)
	// from 05:30 on the first day to the end of the third: per-call rows at
	// the start, hours, then sealed days
	spec := func(g GroupBy, f UsageFilter, skip bool) UsageSpec {
		return UsageSpec{From: time.Unix(d0+5*3600+1800, 0), To: time.Unix(d0+3*86400, 0), Group: g, Filter: f, SkipPercentiles: skip}
	}
	nyc := loadZone(t, "America/New_York")
	for _, c := range []struct {
		name string
		s    UsageSpec
		loc  *time.Location
		copy bool
	}{
		{"model", spec(GroupBy{Model: true}, UsageFilter{}, false), time.UTC, true},
		{"day", spec(GroupBy{Bucket: BucketDay}, UsageFilter{}, false), time.UTC, true},
		{"day x source, one model", spec(GroupBy{Bucket: BucketDay, Source: true}, UsageFilter{Model: "m"}, true), time.UTC, true},
		{"hour x model (rows per model)", spec(GroupBy{Bucket: BucketHour, Model: true}, UsageFilter{}, false), time.UTC, true},
		{"day, New York (hours subtracted)", spec(GroupBy{Bucket: BucketDay}, UsageFilter{}, true), nyc, true},
		{"user", spec(GroupBy{User: true}, UsageFilter{}, true), time.UTC, false},
		{"day x model, one user", spec(GroupBy{Bucket: BucketDay, Model: true}, UsageFilter{User: "u"}, false), time.UTC, false},
		{"model, one batch", spec(GroupBy{Model: true}, UsageFilter{BatchID: "b"}, false), time.UTC, false},
	} {
		p := planUsage(c.s, st, c.loc)
		covered(t, p, c.s.From.Unix(), c.s.To.Unix())
		sql := usageRollupSQL(c.s, p)
		readsCopy := strings.Contains(sql, "{db}.usage_rollup_by_model\n")
		readsRollup := strings.Contains(sql, "{db}.usage_rollup\n")
		if p.modelCopy != c.copy || readsCopy != c.copy || readsRollup == c.copy && p.userCopy == "" {
			t.Errorf("%s: copy %v, reads usage_rollup_by_model %v, usage_rollup %v; want the copy %v\n%s", c.name, p.modelCopy, readsCopy, readsRollup, c.copy, sql)
		}
		if c.name == "day, New York (hours subtracted)" && !p.signed() {
			t.Errorf("%s: the plan was meant to subtract hours", c.name)
		}
	}
	// one seal without its copy (recorded before 0008), hour or day: the
	// whole read goes to usage_rollup
	for _, which := range []string{"hour", "day"} {
		copies(true)
		if which == "hour" {
			x := st.hours[d0+7*3600]
			x.ModelCopy = false
			st.hours[d0+7*3600] = x
		} else {
			x := st.days[d0+2*86400]
			x.ModelCopy = false
			st.days[d0+2*86400] = x
		}
		s := spec(GroupBy{Model: true}, UsageFilter{}, false)
		p := planUsage(s, st, time.UTC)
		if sql := usageRollupSQL(s, p); p.modelCopy || strings.Contains(sql, "usage_rollup_by_model") {
			t.Errorf("an %s without its copy: copy %v\n%s", which, p.modelCopy, sql)
		}
	}
}

// TestTopGroups: a Limit keeps the groups with the most calls over all
// their buckets, ties by key; the read of their percentiles is narrowed to
// those groups (the keys grouped by, quoted), and no other.
func TestTopGroups(t *testing.T) {
	day := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	rows := []UsageRow{
		{Bucket: day, Model: "m1", UserID: "o'brien", Calls: 5},
		{Bucket: day.AddDate(0, 0, 1), Model: "m1", UserID: "o'brien", Calls: 6}, // 11 over two days
		{Bucket: day, Model: "m2", UserID: "ann", Calls: 11},                     // ties with it: m1 < m2
		{Bucket: day, Model: "m1", UserID: "bob", Calls: 10},
		{Bucket: day, Model: "m3", UserID: "ann", Calls: 1},
	}
	kept, omitted := topGroups(rows, 2)
	want := map[usageKey]bool{{model: "m1", user: "o'brien"}: true, {model: "m2", user: "ann"}: true}
	if omitted != 2 || !maps.Equal(kept, want) {
		t.Fatalf("top 2: %v, %d omitted; want %v, 2", kept, omitted, want)
	}
	if kept, omitted := topGroups(rows, 10); omitted != 0 || len(kept) != 4 {
		t.Fatalf("top 10 of 4: %v, %d omitted", kept, omitted)
	}
	f := withGroups(UsageFilter{Source: "batch"}, GroupBy{Bucket: BucketDay, Model: true, User: true}, want)
	got := strings.Join(usageFilters(f, "model", "user_id", "source", "batch_id"), " AND ")
	if w := `source = 'batch' AND (model, user_id) IN (('m1', 'o\'brien'), ('m2', 'ann')) AND user_id IN ('ann', 'o\'brien')`; got != w {
		t.Fatalf("filters %s\nwant    %s", got, w)
	}
	users := withGroups(UsageFilter{}, GroupBy{User: true}, map[usageKey]bool{{user: "ann"}: true, {user: "bob"}: true})
	if got, w := strings.Join(usageFilters(users, "model", "user_id", "source", "batch_id"), " AND "), `user_id IN ('ann', 'bob')`; got != w {
		t.Fatalf("filters of users alone %s\nwant    %s", got, w)
	}
	long := map[usageKey]bool{}
	for i := range 400 {
		long[usageKey{model: strings.Repeat("m", 256), user: fmt.Sprintf("%0256d", i)}] = true
	}
	if !namesFit(want) || namesFit(long) {
		t.Fatalf("names fit: two short groups %v, 400 of 512 bytes %v; want true, false", namesFit(want), namesFit(long))
	}
	f = withGroups(UsageFilter{}, GroupBy{User: true}, map[usageKey]bool{{user: "ann"}: true, {user: "bob"}: true})
	if got := strings.Join(usageFilters(f, "c_model", "c_user", "c_source", "c_batch"), " AND "); got != `c_user IN ('ann', 'bob')` {
		t.Fatalf("grouped by user alone: %s", got)
	}
}

// withFourWeeks seals the four weeks of [from, to) (UTC, and of each zone)
// whose days st has current, as the sealer records them (rows per user
// alone only). Every seal of st gets its rows per user alone (and local
// days their totals per user, as the sealer writes them).
func withFourWeeks(st *sealState, from, to int64, zones ...*time.Location) *sealState {
	for _, m := range []map[int64]Seal{st.hours, st.days} {
		for k, x := range m {
			x.UserOverModels = true
			m[k] = x
		}
	}
	for k, x := range st.localDays {
		x.UserOverModels, x.UserTotals = true, true
		st.localDays[k] = x
	}
	spans := fourWeekSpans(nil, from, to)
	for _, loc := range zones {
		spans = append(spans, fourWeekSpans(loc, from, to)...)
	}
	return withSpans(st, spans, 17)
}

// fourWeeksState is n days from d0 sealed with their local days in loc,
// weeks and four weeks (UTC and loc's), as the sealer seals them.
func fourWeeksState(d0 int64, n int, loc *time.Location) *sealState {
	st := sealedDaysState(d0, n)
	end := d0 + int64(n)*86400
	withLocalDays(st, loc, d0, end)
	withWeeks(st, d0, end)
	return withFourWeeks(st, d0, end, loc)
}

// TestPlanUsageFourWeeks: a read grouped by user alone over a month reads
// one four-week row (UTC, or of its listed zone) and the days and hours
// around it, at the level of rows per user alone; other reads never read
// four weeks, nor does one whose other seals lack rows per user alone; a
// stale four weeks (a day sealed again) is not read.
func TestPlanUsageFourWeeks(t *testing.T) {
	ny := loadZone(t, "America/New_York")
	d0 := time.Date(2026, 10, 20, 0, 0, 0, 0, time.UTC).Unix()
	const days = 40
	st := fourWeeksState(d0, days, ny)

	// New York's four weeks: those over Nov 1 (daylight saving ends) have
	// 673 hours, the others 672 from 04:00 or 05:00 UTC; none is a UTC one.
	// Its 30 days from Oct 25 read the four weeks from there (673 hours).
	for _, w := range fourWeekSpans(ny, d0, d0+days*86400) {
		overNov1 := w.start < time.Date(2026, 11, 1, 6, 0, 0, 0, time.UTC).Unix() && w.end > time.Date(2026, 11, 1, 6, 0, 0, 0, time.UTC).Unix()
		if want := map[bool]uint8{true: grainLocalFourWeeks673, false: grainLocalFourWeeks672}[overNov1]; w.grain != want || w.days[0][0] != w.start || w.days[27][1] != w.end || w.end-w.start != grainHours(w.grain)*3600 {
			t.Errorf("New York four weeks %+v: grain %d, want %d", w, w.grain, want)
		}
	}
	if n := len(fourWeekSpans(time.UTC, d0, d0+days*86400)); n != 0 {
		t.Errorf("UTC as a zone has %d four weeks of its own", n)
	}
	if n := len(fourWeekSpans(nil, d0, d0+days*86400)); n != days-fourWeeksDays+1 {
		t.Errorf("%d UTC four weeks in %d days, want %d", n, days, days-fourWeeksDays+1)
	}

	fourWeeks := func(p usagePlan) (out []sealRef) {
		for _, r := range p.rollup {
			if isFourWeeks(r.Grain) {
				out = append(out, r)
			}
		}
		return out
	}
	// 30 days from 13:00 UTC
	from, to := d0+5*86400+13*3600, d0+35*86400+13*3600
	for _, c := range []struct {
		name string
		s    UsageSpec
		want uint8 // grain of the one four weeks read; 0: none
	}{
		{"user", UsageSpec{Group: GroupBy{User: true}}, grainFourWeeks},
		{"user without percentiles", UsageSpec{Group: GroupBy{User: true}, SkipPercentiles: true}, grainFourWeeks},
		{"user in New York", UsageSpec{Group: GroupBy{User: true}, TZ: ny.String()}, grainLocalFourWeeks673},
		{"user, top 10", UsageSpec{Group: GroupBy{User: true}, Filter: UsageFilter{only: &groupSet{by: GroupBy{User: true}, groups: []usageKey{{user: "u"}}}}}, grainFourWeeks},
		{"model x user", UsageSpec{Group: GroupBy{Model: true, User: true}}, 0},
		{"user x source", UsageSpec{Group: GroupBy{User: true, Source: true}}, 0},
		{"user, one model", UsageSpec{Group: GroupBy{User: true}, Filter: UsageFilter{Model: "m"}}, 0},
		{"one user", UsageSpec{Group: GroupBy{User: true}, Filter: UsageFilter{User: "u"}}, 0},
		{"user by day", UsageSpec{Group: GroupBy{User: true, Bucket: BucketDay}}, 0},
		{"model", UsageSpec{Group: GroupBy{Model: true}}, 0},
		{"totals", UsageSpec{}, 0},
	} {
		s := c.s
		s.From, s.To = time.Unix(from, 0), time.Unix(to, 0)
		loc := time.UTC
		if s.TZ != "" {
			loc = ny
			// New York's 30 days from its midnight
			s.From, s.To = time.Unix(d0+5*86400+4*3600, 0), time.Unix(d0+35*86400+5*3600, 0)
		}
		p := planUsage(s, st, loc)
		covered(t, p, s.From.Unix(), s.To.Unix())
		got := fourWeeks(p)
		switch {
		case c.want == 0 && len(got) != 0:
			t.Errorf("%s: reads four weeks %+v", c.name, got)
		case c.want != 0 && (len(got) != 1 || got[0].Grain != c.want):
			t.Errorf("%s: four weeks read %+v, want one of grain %d", c.name, got, c.want)
		case c.want != 0 && (!p.userOverModels || p.level(got[0]) != levelUserOverModels):
			t.Errorf("%s: the four weeks are read at level %d (userOverModels %v)", c.name, p.level(got[0]), p.userOverModels)
		case c.want != 0:
			without := planUsageOf(s, st, loc, false)
			if p.cost(p.perCall) >= without.cost(without.perCall) {
				t.Errorf("%s: with four weeks the plan costs %d, without %d", c.name, p.cost(p.perCall), without.cost(without.perCall))
			}
		}
	}

	s := UsageSpec{From: time.Unix(from, 0), To: time.Unix(to, 0), Group: GroupBy{User: true}}
	// a day read beside the four weeks without rows per user alone: the
	// read is at another level, where four weeks have no rows
	edge := st.days[d0+6*86400]
	old := edge
	edge.UserOverModels = false
	st.days[edge.Period] = edge
	p := planUsage(s, st, time.UTC)
	covered(t, p, from, to)
	if got := fourWeeks(p); len(got) != 0 || p.userOverModels {
		t.Errorf("a day without rows per user alone: four weeks %+v, userOverModels %v", got, p.userOverModels)
	}
	st.days[edge.Period] = old

	// a day sealed again: the four weeks over it are stale and not read
	day := d0 + 20*86400
	x := st.days[day]
	x.Version++
	st.days[day] = x
	p = planUsage(s, st, time.UTC)
	covered(t, p, from, to)
	for _, r := range fourWeeks(p) {
		if r.Period <= day && day < r.Period+fourWeeksDays*86400 {
			t.Errorf("four weeks from %s read over a day sealed again", unixUTC(r.Period))
		}
	}
	withFourWeeks(st, d0, d0+days*86400)
	if got := fourWeeks(planUsage(s, st, time.UTC)); len(got) != 1 {
		t.Errorf("four weeks sealed again: %+v read, want one", got)
	}
}

// TestPlanUsageFourWeeksRandomRanges: over random ranges of a sealed
// history with stale days and dirty hours, every read grouped by user alone
// counts each second once, reads only current four weeks and reads them at
// the level of rows per user alone, and costs no more than its plan
// without them.
func TestPlanUsageFourWeeksRandomRanges(t *testing.T) {
	ny := loadZone(t, "America/New_York")
	d0 := time.Date(2026, 9, 10, 0, 0, 0, 0, time.UTC).Unix()
	const days = 70
	st := fourWeeksState(d0, days, ny)
	// days sealed again after their four weeks, and hours with late calls
	for _, d := range []int64{50, 53} {
		x := st.days[d0+d*86400]
		x.Version++
		st.days[x.Period] = x
	}
	st.dirty[d0+64*86400+7*3600] = uint64(3 * time.Hour)
	rng := uint64(7)
	next := func(n int64) int64 { // xorshift: the same ranges every run
		rng ^= rng << 13
		rng ^= rng >> 7
		rng ^= rng << 17
		return int64(rng % uint64(n))
	}
	read := 0
	for i := range 300 {
		from := d0 + next(days*24)*3600 + next(2)*1800
		to := min(from+(1+next(50*24))*3600, d0+days*86400)
		s := UsageSpec{From: time.Unix(from, 0), To: time.Unix(to, 0), Group: GroupBy{User: true}, SkipPercentiles: i%2 == 0}
		loc := time.UTC
		if i%3 == 0 {
			s.TZ, loc = ny.String(), ny
		}
		p := planUsage(s, st, loc)
		covered(t, p, from, to)
		without := planUsageOf(s, st, loc, false)
		for _, r := range p.rollup {
			if !isFourWeeks(r.Grain) {
				continue
			}
			read++
			var days [][2]int64
			for _, w := range slices.Concat(fourWeekSpans(nil, r.Period, r.Period+fourWeeksDays*86400+7200), fourWeekSpans(ny, r.Period, r.Period+fourWeeksDays*86400+7200)) {
				if w.start == r.Period && w.grain == r.Grain {
					days = w.days
				}
			}
			if x, ok := st.currentSpan(r.Grain, r.Period, days); !ok || x.Version != r.Version {
				t.Fatalf("range %d: four weeks %+v read but not current", i, r)
			}
			if p.level(r) != levelUserOverModels {
				t.Fatalf("range %d: four weeks read at level %d", i, p.level(r))
			}
		}
		if c, w := p.cost(p.perCall), without.cost(without.perCall); c > w {
			t.Fatalf("range %d [%s, %s): costs %d with four weeks, %d without", i, unixUTC(from), unixUTC(to), c, w)
		}
	}
	if read < 30 {
		t.Fatalf("only %d four weeks read over 300 ranges", read)
	}
}

// TestRankOnlyReadSumsCallsAlone: the read that ranks a Limit's groups sums
// their calls and no other column of the rows (18.16 then reads none of
// them), signed or not, with per-call rows or not.
func TestRankOnlyReadSumsCallsAlone(t *testing.T) {
	h, unsigned, signed := mergePlans()
	for _, p := range []usagePlan{unsigned, signed} {
		for _, g := range []GroupBy{{Model: true, User: true}, {User: true}, {Bucket: BucketDay, Model: true}} {
			s := UsageSpec{From: time.Unix(h, 0), To: time.Unix(h+3600, 0), Group: g, SkipPercentiles: true}
			full := usageRollupSQL(s, p)
			s.rankOnly = true
			ranked := usageRollupSQL(s, p)
			for _, col := range []string{"sum(e)", "sum(i)", "sum(o)", "sum(tot)", "sum(c)", "sum(tn)"} {
				if !strings.Contains(full, col) {
					t.Fatalf("%s: the full read lacks %s", g, col)
				}
				if strings.Contains(ranked, col) {
					t.Errorf("%s signed %v: the ranking read sums %s", g, p.signed(), col)
				}
			}
			if !strings.Contains(ranked, "toUInt64(sum(n)) AS calls") {
				t.Errorf("%s: the ranking read sums no calls", g)
			}
		}
	}
}

// loadZone is the IANA zone name; the test fails without the time zone database.
func loadZone(t *testing.T, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

// TestPlanUsageDaySoFar: a UTC day sealed over its first hours (the day so
// far) is read as one row per group for those hours, from midnight or from
// the range's first hour inside it (the hours before subtracted, without
// percentiles), never when one of its hours is dirty or sealed again since,
// and never where whole days are needed (weeks, day buckets).
func TestPlanUsageDaySoFar(t *testing.T) {
	d0 := time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC).Unix() // a Monday
	today := d0 + 3*86400
	const sealedHours = 15
	daySoFar := func(dirty map[int64]uint64) *sealState {
		st := planState(d0, today+sealedHours*3600, dirty, d0, d0+86400, d0+2*86400)
		hours, _ := st.cleanHours(today, today+12*3600)
		st.setDay(spanSeal(grainDay, today, 9, hours))
		return st
	}
	st := daySoFar(map[int64]uint64{})
	from, to := d0, today+86400 // to tomorrow's midnight, as the dashboard asks
	grains := func(p usagePlan) (days, hours int) {
		for _, r := range p.rollup {
			if r.Grain == grainDay {
				days++
			} else {
				hours++
			}
		}
		return days, hours
	}
	for _, s := range []UsageSpec{
		{Group: GroupBy{Model: true, User: true}},
		{Group: GroupBy{User: true}},
		{Group: GroupBy{Model: true}, SkipPercentiles: true},
	} {
		s.From, s.To = time.Unix(from, 0), time.Unix(to, 0)
		p := planUsage(s, st, time.UTC)
		coveredIn(t, st, p, from, to)
		days, hours := grains(p)
		// three whole days, the day so far (12 hours), hours 12..14 sealed,
		// the rest of today per call
		if days != 4 || hours != 3 || p.signed() || len(p.perCall) != 1 || p.perCall[0] != [2]int64{today + sealedHours*3600, to} {
			t.Errorf("%s: %d days, %d hours, minus %v, per call %v; want 4 days (the last the day so far), 3 hours",
				s.Group, days, hours, p.minus, p.perCall)
		}
		if !slices.Contains(p.rollup, st.days[today].ref()) {
			t.Errorf("%s: the day so far is not read: %+v", s.Group, p.rollup)
		}
	}

	// a range starting inside today: its hours before are subtracted
	// (without percentiles) or the hours read instead (with them)
	s := UsageSpec{From: time.Unix(today+3*3600, 0), To: time.Unix(to, 0), Group: GroupBy{Model: true}, SkipPercentiles: true}
	p := planUsage(s, st, time.UTC)
	coveredIn(t, st, p, s.From.Unix(), to)
	if days, _ := grains(p); days != 1 || len(p.minus) != 3 {
		t.Errorf("from 03:00 without percentiles: %d days, minus %v; want the day so far less hours 0..2", days, p.minus)
	}
	s.SkipPercentiles = false
	p = planUsage(s, st, time.UTC)
	coveredIn(t, st, p, s.From.Unix(), to)
	if days, hours := grains(p); days != 0 || hours != sealedHours-3 || p.signed() {
		t.Errorf("from 03:00 with percentiles: %d days, %d hours, minus %v; want hours 3..14", days, hours, p.minus)
	}
	// a range ending inside the day so far: its later hours are subtracted
	s = UsageSpec{From: time.Unix(from, 0), To: time.Unix(today+10*3600, 0), Group: GroupBy{Model: true}, SkipPercentiles: true}
	p = planUsage(s, st, time.UTC)
	coveredIn(t, st, p, from, s.To.Unix())
	if !slices.Contains(p.rollup, st.days[today].ref()) || len(p.minus) != 2 {
		t.Errorf("to 10:00: rollup %+v, minus %v; want the day so far less hours 10 and 11", p.rollup, p.minus)
	}

	// a dirty hour, or an hour sealed again after the day so far was,
	// keeps it out of every read
	for name, st := range map[string]*sealState{
		"dirty": daySoFar(map[int64]uint64{today + 4*3600: uint64(time.Hour) + 1000}),
		"sealed again": func() *sealState {
			st := daySoFar(map[int64]uint64{})
			x := st.hours[today+4*3600]
			x.Version += 1000
			st.hours[today+4*3600] = x
			return st
		}(),
	} {
		s := UsageSpec{From: time.Unix(from, 0), To: time.Unix(to, 0), Group: GroupBy{Model: true, User: true}}
		p := planUsage(s, st, time.UTC)
		coveredIn(t, st, p, from, to)
		if slices.Contains(p.rollup, st.days[today].ref()) {
			t.Errorf("%s: the day so far is read: %+v", name, p.rollup)
		}
	}

	// day buckets and weeks take whole days only
	for _, g := range []GroupBy{{Bucket: BucketDay, Model: true}, {Bucket: BucketHour}} {
		s := UsageSpec{From: time.Unix(from, 0), To: time.Unix(to, 0), Group: g}
		p := planUsage(s, st, time.UTC)
		coveredIn(t, st, p, from, to)
		if slices.Contains(p.rollup, st.days[today].ref()) {
			t.Errorf("%s: the day so far is read as a bucket", g)
		}
	}
	if parts, ok := st.spanDays(utcDays(today-3*86400, 7)); ok {
		t.Fatalf("a week over the day so far: %+v", parts)
	}
	if st.wholeDay(today) || !st.wholeDay(d0) {
		t.Fatal("wholeDay: the day so far counted as a whole day, or a whole day not")
	}

	// a zone's day so far: New York's day starts at 05:00 UTC (EST); its
	// first 8 hours sealed as one are read by a New York read of today
	ny := loadZone(t, "America/New_York")
	st = withLocalDays(planState(d0, today+sealedHours*3600, map[int64]uint64{}, d0, d0+86400, d0+2*86400), ny, d0, today+sealedHours*3600)
	nyToday := today + 5*3600
	hours, _ := st.cleanHours(nyToday, nyToday+8*3600)
	nySoFar := spanSeal(grainLocalDay24, nyToday, 9, hours)
	st.setDay(nySoFar)
	s = UsageSpec{From: time.Unix(d0+5*3600, 0), To: time.Unix(nyToday+86400, 0), Group: GroupBy{Model: true, User: true}, TZ: ny.String()}
	p = planUsage(s, st, ny)
	coveredIn(t, st, p, s.From.Unix(), s.To.Unix())
	if !slices.Contains(p.rollup, nySoFar.ref()) {
		t.Fatalf("New York's day so far is not read: %+v", p.rollup)
	}
	// its hours after those 8 are hour rows, the rest per call
	if n := len(p.perCall); n != 1 || p.perCall[0] != [2]int64{today + sealedHours*3600, s.To.Unix()} {
		t.Fatalf("per call %v", p.perCall)
	}
	x := st.hours[nyToday+2*3600]
	x.Version += 1000
	st.hours[nyToday+2*3600] = x
	if p = planUsage(s, st, ny); slices.Contains(p.rollup, nySoFar.ref()) {
		t.Fatal("New York's day so far is read though an hour of it was sealed again")
	}
}
