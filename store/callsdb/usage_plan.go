package callsdb

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// usagePlan splits a usage read into rollup rows of clean seals and
// per-call rows of everything else (partial hours at the edges, hours not
// sealed yet, dirty hours, hours whose zone offset is not whole hours when
// the result is bucketed). Each second of the range is counted exactly once:
// from per-call rows, from an hour seal, or from a day seal whose hours
// outside the range (or in another bucket) are subtracted again (minus).
type usagePlan struct {
	byUser bool // rollup level: keyed by user and batch
	// userCopy: the read is filtered by one user, or narrowed to a
	// Limit's groups of models and users (fewUsers), and every seal read
	// has its copy sorted by user in this table (usage_rollup_user_copy, or
	// usage_rollup_by_user when every one was recorded before migration
	// 0009), which holds only those users' rows in a few index ranges; ""
	// when the seals have no copy in one table
	userCopy string
	// modelCopy: the read has no user key or filter (its rows are summed
	// over users) and every seal read has its copy in usage_rollup_by_model,
	// whose small granules hold only those rows
	modelCopy bool
	// userTotals: the read keeps users apart but not sources or batches,
	// and every day and week seal it reads has its rows keyed by user
	// summed over them (levelUserTotals): span rows are read at that level,
	// about half the rows of levelUsers; hour rows stay at levelUsers
	userTotals bool
	// userOverModels: userTotals, and the read keeps no models apart (no
	// model grouping or filter) and every day and week seal it reads has
	// its totals per user summed over models (levelUserOverModels): span
	// rows and those of the hours in summedHours are read at that level,
	// one per user
	userOverModels bool
	// summedHours: with userOverModels, the hour seals read (added or
	// subtracted) that have their rows summed per user too
	// (Seal.UserOverModels; hours sealed without them are read at
	// levelUsers)
	summedHours map[int64]bool
	// modelTotals: each group is one hour of one model (hour buckets keyed
	// or filtered by model, no user, source or batch) and every seal read
	// has its rows summed per model (levelModelTotals): hour rows are read
	// at that level, and a sealed group's percentiles are the buckets
	// weighed when it was sealed
	modelTotals bool
	rollup      []sealRef // seals whose rows are added
	// minus: hour seals whose rows are subtracted from their UTC day's row
	// (in the bucket of the day's noon): a day row stands for the hours of
	// its day that are in the range and in the noon's bucket once these are
	// taken out, and reads far fewer rows than those hours
	minus   []sealRef
	perCall [][2]int64 // [from, to) Unix seconds, ascending, disjoint
}

// dayRowHours is what reading a day or week row costs in hour rows (a
// day's rows keyed by user are about 1.6 times an hour's; a week's, once
// every model and user has calls every day, about as many as a day's).
const dayRowHours = 2

// planUsage plans s over the seals and dirty marks in st. A read grouped
// by user alone may read four weeks (rows per user alone only): when
// another seal of its plan has no rows per user alone, the read is at
// another level, and it is planned again without them.
func planUsage(s UsageSpec, st *sealState, loc *time.Location) usagePlan {
	fourWeeks := s.Group.User && !s.Group.Model && !s.Group.Source && s.Group.Bucket == BucketNone &&
		s.Filter.Model == "" && s.Filter.User == "" && s.Filter.Source == "" && s.Filter.BatchID == "" && !s.Filter.only.fewUsers()
	p := planUsageOf(s, st, loc, fourWeeks)
	if fourWeeks && !p.userOverModels && slices.ContainsFunc(p.rollup, func(r sealRef) bool { return isFourWeeks(r.Grain) }) {
		p = planUsageOf(s, st, loc, false)
	}
	return p
}

// planUsageOf is planUsage with or without four weeks.
func planUsageOf(s UsageSpec, st *sealState, loc *time.Location, fourWeeks bool) usagePlan {
	from, to := s.From.Unix(), s.To.Unix()
	p := usagePlan{byUser: s.Group.User || s.Filter.User != "" || s.Filter.BatchID != ""}
	addCalls := func(a, b int64) {
		if a >= b {
			return
		}
		if n := len(p.perCall); n > 0 && p.perCall[n-1][1] == a {
			p.perCall[n-1][1] = b
			return
		}
		p.perCall = append(p.perCall, [2]int64{a, b})
	}
	first, last := ceilTo(from, 3600), floorTo(to, 3600)
	if first >= last {
		addCalls(from, to)
		return p
	}
	addCalls(from, first)
	if s.Group.Bucket == BucketNone {
		planUnbucketed(&p, st, loc, first, last, mayTrimDays(s), fourWeeks, addCalls)
	} else {
		planBucketed(&p, s, st, loc, first, last, addCalls)
	}
	addCalls(last, to)
	var userCopy uint8 // the copy every seal read has; 0 when they differ
	if (s.Filter.User != "" || s.Filter.only.fewUsers()) && len(p.rollup) > 0 {
		x, _ := st.current(p.rollup[0].Grain, p.rollup[0].Period)
		userCopy = x.UserCopy
	}
	p.modelCopy = !p.byUser && len(p.rollup) > 0
	read := slices.Concat(p.rollup, p.minus) // every seal read, added or subtracted
	for _, r := range read {
		x, _ := st.current(r.Grain, r.Period)
		if x.UserCopy != userCopy {
			userCopy = 0
		}
		p.modelCopy = p.modelCopy && x.ModelCopy
	}
	p.userCopy = userCopyTableOf(userCopy)
	p.userTotals = p.byUser && p.userCopy == "" && !s.Group.Source && s.Filter.Source == "" && s.Filter.BatchID == ""
	p.userOverModels = p.userTotals && !s.Group.Model && s.Filter.Model == ""
	for _, r := range read {
		x, _ := st.current(r.Grain, r.Period)
		if r.Grain != grainHour {
			// four weeks have rows per user alone only, and are planned
			// only where every other seal has them too
			p.userTotals = p.userTotals && (x.UserTotals || isFourWeeks(r.Grain))
			p.userOverModels = p.userOverModels && x.UserOverModels
		} else if p.userOverModels && x.UserOverModels {
			if p.summedHours == nil {
				p.summedHours = map[int64]bool{}
			}
			p.summedHours[r.Period] = true
		}
	}
	p.userOverModels = p.userOverModels && p.userTotals
	if !p.userOverModels {
		p.summedHours = nil
	}
	p.modelTotals = !p.byUser && s.Group.Bucket == BucketHour && (s.Group.Model || s.Filter.Model != "") &&
		!s.Group.Source && s.Filter.Source == "" && len(p.rollup) > 0
	for _, r := range p.rollup {
		if x, _ := st.current(r.Grain, r.Period); r.Grain != grainHour || !x.ModelTotals {
			p.modelTotals = false
		}
	}
	return p
}

// planUnbucketed plans [first, last) (whole hours) of a read without time
// buckets, where any tiling of the range counts every second once: the
// cheapest path over the range's hour boundaries whose steps are four
// weeks (with fourWeeks: UTC, or of loc), a week row (UTC, or a local week
// of loc), a UTC or local day row, a UTC or local day so far's row (its
// first hours), a UTC day row whose hours outside the range are subtracted
// (subtract), an hour row, or an hour read per call (not clean). Costs are
// in hour rows: a four-week, week or day row dayRowHours, a subtracted hour
// one (none when it holds no calls, as it has no rows).
func planUnbucketed(p *usagePlan, st *sealState, loc *time.Location, first, last int64, subtract, fourWeeks bool, addCalls func(a, b int64)) {
	type step struct {
		from  int64
		cost  int
		ref   sealRef
		minus []int64
		calls bool // the hour at from, read per call
	}
	n := int((last - first) / 3600)
	idx := func(t int64) int { return int((t - first) / 3600) }
	best := make([]int, n+1)
	via := make([]step, n+1)
	for i := 1; i <= n; i++ {
		best[i] = -1
	}
	relax := func(to int64, s step) {
		j := idx(to)
		if c := best[idx(s.from)] + s.cost; best[j] < 0 || c < best[j] {
			best[j], via[j] = c, s
		}
	}
	locals := map[int64][][2]int64{} // local days by start
	for _, w := range localDays(loc, first, last) {
		locals[w[0]] = append(locals[w[0]], w)
	}
	localWeekAt := map[int64]daySpan{}
	for _, w := range localWeeks(loc, first, last) {
		localWeekAt[w.start] = w
	}
	fourWeeksAt := map[int64][]daySpan{}
	if fourWeeks {
		for _, w := range slices.Concat(fourWeekSpans(nil, first, last), fourWeekSpans(loc, first, last)) {
			fourWeeksAt[w.start] = append(fourWeeksAt[w.start], w)
		}
	}
	for t := first; t < last; t += 3600 {
		if best[idx(t)] < 0 {
			continue
		}
		for _, w := range fourWeeksAt[t] {
			if x, ok := st.currentSpan(w.grain, w.start, w.days); ok {
				relax(w.end, step{from: t, cost: dayRowHours, ref: x.ref()})
			}
		}
		if t%weekSeconds == 0 && t+weekSeconds <= last {
			if x, ok := st.currentSpan(grainWeek, t, utcDays(t, 7)); ok {
				relax(t+weekSeconds, step{from: t, cost: dayRowHours, ref: x.ref()})
			}
		}
		// day d's row for [t, end): from its midnight, or from the range's
		// first hour inside it, to its end (of the day, or of the day so
		// far its seal holds) or the range's; hours of it outside [t, end)
		// are subtracted
		if d := floorTo(t, 86400); t == d || t == first {
			if x, hours, ok := st.currentDay(grainDay, d); ok && d+int64(len(hours))*3600 > t {
				end := min(d+int64(len(hours))*3600, last)
				var minus []int64
				for _, x := range hours {
					if (x.Period < t || x.Period >= end) && x.Calls > 0 {
						minus = append(minus, x.Period)
					}
				}
				if subtract || len(minus) == 0 {
					relax(end, step{from: t, cost: dayRowHours + len(minus), ref: x.ref(), minus: minus})
				}
			}
		}
		if w, ok := localWeekAt[t]; ok {
			if x, ok := st.currentSpan(w.grain, w.start, w.days); ok {
				relax(w.end, step{from: t, cost: dayRowHours, ref: x.ref()})
			}
		}
		// a local day's row for the day, or for its first hours (a day so
		// far)
		for _, w := range locals[t] {
			g, _ := localDayGrain((w[1] - w[0]) / 3600)
			if x, hours, ok := st.currentDay(g, w[0]); ok {
				relax(w[0]+int64(len(hours))*3600, step{from: t, cost: dayRowHours, ref: x.ref()})
			}
		}
		if st.clean(t) {
			relax(t+3600, step{from: t, cost: 1, ref: st.hours[t].ref()})
		} else {
			relax(t+3600, step{from: t, cost: 1, calls: true})
		}
	}
	var path []step
	for j := n; j > 0; j = idx(via[j].from) {
		path = append(path, via[j])
	}
	for i := len(path) - 1; i >= 0; i-- {
		s := path[i]
		switch {
		case s.calls:
			addCalls(s.from, s.from+3600)
		default:
			p.rollup = append(p.rollup, s.ref)
			for _, h := range s.minus {
				p.minus = append(p.minus, st.hours[h].ref())
			}
		}
	}
}

// signedReadFactor is what a row of a signed plan costs against a row of
// an unsigned one when percentiles are read: the signed plan's histograms
// are merged by sumMap or as text, not weighed in the sums query (at 10 M
// calls, 30 days by day and by day and model in New York: 139 and 204 ms
// signed against 54 and 91 ms unsigned in UTC, reading 1.4 times fewer
// rows).
const signedReadFactor = 2

// planBucketed plans [first, last) (whole hours) of a read bucketed by hour
// or day in loc: every row must fall in one bucket. With percentiles, a
// plan that subtracts hours from day rows is taken only when it reads
// fewer than 1/signedReadFactor of the rows of the plan that does not.
func planBucketed(p *usagePlan, s UsageSpec, st *sealState, loc *time.Location, first, last int64, addCalls func(a, b int64)) {
	if s.SkipPercentiles || !maySubtract(s) {
		tileBuckets(p, s, st, loc, first, last, maySubtract(s), addCalls)
		return
	}
	type tiling struct {
		plan  usagePlan
		calls [][2]int64
	}
	tile := func(subtract bool) tiling {
		var t tiling
		tileBuckets(&t.plan, s, st, loc, first, last, subtract, func(a, b int64) { t.calls = append(t.calls, [2]int64{a, b}) })
		return t
	}
	chosen := tile(true)
	if chosen.plan.signed() {
		if unsigned := tile(false); signedReadFactor*chosen.plan.cost(chosen.calls) >= unsigned.plan.cost(unsigned.calls) {
			chosen = unsigned
		}
	}
	p.rollup = append(p.rollup, chosen.plan.rollup...)
	p.minus = append(p.minus, chosen.plan.minus...)
	for _, r := range chosen.calls {
		addCalls(r[0], r[1])
	}
}

// cost is what reading a plan's rollup rows and the per-call hours calls
// costs, in hour rows (dayRowHours a day or week row).
func (p usagePlan) cost(calls [][2]int64) int {
	n := len(p.minus)
	for _, r := range p.rollup {
		if r.Grain == grainHour {
			n++
		} else {
			n += dayRowHours
		}
	}
	for _, r := range calls {
		n += int((r[1] - r[0] + 3599) / 3600)
	}
	return n
}

// tileBuckets is planBucketed with or without subtracting hours from day
// rows.
func tileBuckets(p *usagePlan, s UsageSpec, st *sealState, loc *time.Location, first, last int64, subtract bool, addCalls func(a, b int64)) {
	hourUsable := func(h int64) bool {
		return st.clean(h) && !splitsHour(s.Group.Bucket, loc, h)
	}
	// sameBucket reports whether hour h falls in the bucket of its UTC
	// day's noon (where a day row is counted)
	sameBucket := func(h int64) bool {
		switch s.Group.Bucket {
		case BucketDay:
			noon := floorTo(h, 86400) + 43200
			y, m, d := unixUTC(h).In(loc).Date()
			ny, nm, nd := unixUTC(noon).In(loc).Date()
			return y == ny && m == nm && d == nd
		}
		return false
	}
	// Whole local days of the read's zone with a current local day seal
	// (Sealer.Zones) are read from it: a local day is one bucket of a day
	// grouping, so no hours are subtracted or added. The UTC days below plan
	// only the hours these do not cover.
	covered := map[int64]bool{}
	if s.Group.Bucket != BucketHour {
		for _, w := range localDays(loc, first, last) {
			g, _ := localDayGrain((w[1] - w[0]) / 3600)
			hours, clean := st.cleanHours(w[0], w[1])
			if !clean || !st.dayCurrent(g, w[0], hours) {
				continue
			}
			x, _ := st.current(g, w[0])
			p.rollup = append(p.rollup, x.ref())
			for h := w[0]; h < w[1]; h += 3600 {
				covered[h] = true
			}
		}
	}
	// dayPlan: day d's hours in [first, last) read as its day row, minus
	// the hours the row holds that are out of the range or of its bucket,
	// plus (as hour rows) those in the range in another bucket; ok when
	// that reads fewer rows than the hours themselves. Hours sealed without
	// calls have no rows to subtract or add (a range ending now in a day
	// whose later hours are sealed empty stays unsigned).
	dayPlan := func(d int64) (minus, plus []int64, ok bool) {
		if s.Group.Bucket == BucketHour {
			return nil, nil, false
		}
		hours, clean := st.cleanHours(d, d+86400)
		if !clean || !st.dayCurrent(grainDay, d, hours) {
			return nil, nil, false
		}
		in := 0
		for h := d; h < d+86400; h += 3600 {
			if splitsHour(s.Group.Bucket, loc, h) {
				return nil, nil, false
			}
			inRange := h >= first && h < last && !covered[h]
			if inRange {
				in++
			}
			switch {
			case inRange && sameBucket(h):
			case st.hours[h].Calls == 0: // no rows: nothing to take out of the day row or add elsewhere
			case inRange:
				minus, plus = append(minus, h), append(plus, h)
			default:
				minus = append(minus, h)
			}
		}
		edge := slices.ContainsFunc(minus, func(h int64) bool { return h < first || h >= last })
		if len(minus) > 0 && !subtract || edge && !mayTrimDays(s) {
			return nil, nil, false
		}
		return minus, plus, dayRowHours+len(minus)+len(plus) < in
	}
	for d := floorTo(first, 86400); d < last; d += 86400 {
		if minus, plus, ok := dayPlan(d); ok {
			p.rollup = append(p.rollup, st.days[d].ref())
			for _, h := range minus {
				p.minus = append(p.minus, st.hours[h].ref())
			}
			for _, h := range plus {
				p.rollup = append(p.rollup, st.hours[h].ref())
			}
			continue
		}
		for h := max(d, first); h < min(d+86400, last); h += 3600 {
			if covered[h] {
				continue
			}
			if hourUsable(h) {
				p.rollup = append(p.rollup, st.hours[h].ref())
			} else {
				addCalls(h, h+3600)
			}
		}
	}
}

// level is the rollup level (by_user) the plan reads the rows of seal r at.
func (p usagePlan) level(r sealRef) uint8 {
	span := r.Grain != grainHour
	switch {
	case p.modelTotals && !span:
		return levelModelTotals
	case !p.byUser:
		return levelModels
	case p.userOverModels && (span || p.summedHours[r.Period]):
		return levelUserOverModels
	case p.userTotals && span:
		return levelUserTotals
	}
	return levelUsers
}

// splitsHour reports whether a bucket boundary of the zone falls strictly
// inside UTC hour h: then the hour's rollup rows cannot be assigned to one
// bucket. Hour buckets split every hour of a zone whose offset is not whole
// hours (India, Nepal, ...); day buckets only the hour holding local
// midnight there.
func splitsHour(b Bucket, loc *time.Location, h int64) bool {
	t := unixUTC(h).In(loc)
	if _, off := t.Zone(); off%3600 == 0 {
		_, endOff := unixUTC(h + 3599).In(loc).Zone()
		if endOff%3600 == 0 {
			return false // boundaries of both kinds fall on whole UTC hours
		}
	}
	if b == BucketHour {
		return true
	}
	y, m, d := t.Date()
	next := time.Date(y, m, d+1, 0, 0, 0, 0, loc).Unix()
	start := time.Date(y, m, d, 0, 0, 0, 0, loc).Unix()
	return (start > h && start < h+3600) || (next > h && next < h+3600)
}

// perCallWhere is the time condition of the plan's per-call rows.
func (p usagePlan) perCallWhere() string {
	parts := make([]string, len(p.perCall))
	for i, r := range p.perCall {
		parts[i] = "(" + timeRangeSQL("start_time", r[0], r[1]) + ")"
	}
	return "(" + strings.Join(parts, " OR ") + ")"
}

// usageFilters renders the filters over the given column names.
func usageFilters(f UsageFilter, model, user, source, batch string) []string {
	var where []string
	for _, c := range []struct{ col, v string }{{model, f.Model}, {user, f.User}, {source, f.Source}, {batch, f.BatchID}} {
		if c.v != "" {
			where = append(where, c.col+" = "+SQLString(c.v))
		}
	}
	if f.only != nil {
		where = append(where, f.only.sql(model, user, source))
		if f.only.fewUsers() {
			// the users alone: a condition the user copy's index can use
			users := make([]string, 0, len(f.only.groups))
			for _, k := range f.only.groups {
				users = append(users, SQLString(k.user))
			}
			slices.Sort(users)
			where = append(where, user+" IN ("+strings.Join(slices.Compact(users), ", ")+")")
		}
	}
	return where
}

// fewUsers reports whether g names groups of users and models: a Limit's
// busiest groups of model × user, whose rows are read from the copy sorted
// by user, a few users' index ranges, instead of every row of the range
// (at 100 M calls the top 100 of 24,000 groups: 0.56 → 0.11–0.15 s). Not
// users alone: their rows in usage_rollup are one per user and span
// (levelUserOverModels), the copy's one per model, source and batch.
func (g *groupSet) fewUsers() bool { return g != nil && g.by.User && g.by.Model }

// sql is the condition of g over the given column names: col IN (...) for
// one key, (col, col) IN ((...), ...) for several.
func (g *groupSet) sql(model, user, source string) string {
	var cols []string
	var keys []func(usageKey) string
	for _, c := range []struct {
		on  bool
		col string
		key func(usageKey) string
	}{
		{g.by.Model, model, func(k usageKey) string { return k.model }},
		{g.by.User, user, func(k usageKey) string { return k.user }},
		{g.by.Source, source, func(k usageKey) string { return k.source }},
	} {
		if c.on {
			cols, keys = append(cols, c.col), append(keys, c.key)
		}
	}
	values := make([]string, len(g.groups))
	for i, k := range g.groups {
		v := make([]string, len(keys))
		for j, key := range keys {
			v[j] = SQLString(key(k))
		}
		values[i] = strings.Join(v, ", ")
		if len(keys) > 1 {
			values[i] = "(" + values[i] + ")"
		}
	}
	lhs := strings.Join(cols, ", ")
	if len(cols) > 1 {
		lhs = "(" + lhs + ")"
	}
	return lhs + " IN (" + strings.Join(values, ", ") + ")"
}

// usageKeys are the outer SELECT's group keys over the time column t and the
// key columns, and the ORDER BY list.
func usageKeys(s UsageSpec, t, model, user, source string) (keys, order []string) {
	tz := ""
	if s.TZ != "" && s.TZ != "UTC" {
		tz = ", " + SQLString(s.TZ)
	}
	bucket := "toDateTime(0, 'UTC')"
	switch s.Group.Bucket {
	case BucketHour:
		bucket = "toStartOfHour(" + t + tz + ")"
	case BucketDay:
		bucket = "toStartOfDay(" + t + tz + ")"
	}
	keys = []string{bucket + " AS bucket"}
	order = []string{"bucket"}
	add := func(on bool, col, alias string) {
		if on {
			keys = append(keys, col+" AS "+alias)
		} else {
			keys = append(keys, "'' AS "+alias)
		}
		order = append(order, alias)
	}
	add(s.Group.Model, model, "model_key")
	add(s.Group.User, user, "user_key")
	if s.Group.Source {
		add(true, source, "source_key")
	}
	return keys, order
}

// usageRollupSQL is the usage of a plan with rollup rows: the rows of its
// seals and its per-call rows (rollupRowsSQL) summed per group. Columns:
// bucket, model_key, user_key, [source_key], calls, errors, input/output/total
// tokens, cost, then the histogram columns of its histogramMerge
// (histogramColumnsSQL).
func usageRollupSQL(s UsageSpec, p usagePlan) string {
	keys, order := usageKeys(s, "t", "m", "u", "src")
	having := ""
	if p.signed() { // groups left at zero calls (all subtracted again) are dropped
		having = "\nHAVING sum(n) != 0"
	}
	settings := ""
	if singleThreaded(s, p) {
		settings = "\nSETTINGS max_threads = 1"
	}
	return fmt.Sprintf(`SELECT
    %s,
    %s
FROM
(
    %s
)
GROUP BY %s%s
ORDER BY %s%s`, strings.Join(keys, ",\n    "), strings.Join(rollupSumsSQL(s, p), ",\n    "), rollupRowsSQL(s, p, !s.SkipPercentiles), strings.Join(order, ", "), having, strings.Join(order, ", "), settings)
}

// rollupSumsSQL are the columns of usageRollupSQL after the group keys: the
// sums, then the histogram columns (histogramColumnsSQL). A rankOnly read
// sums the calls alone: 18.16 then reads no other column of the rows.
func rollupSumsSQL(s UsageSpec, p usagePlan) []string {
	if s.rankOnly {
		return []string{"toUInt64(sum(n)) AS calls", "toUInt64(0) AS errors", "toInt64(0) AS input_tokens", "toInt64(0) AS output_tokens",
			"toInt64(0) AS total_tokens", "toFloat64(0) AS cost", "toUInt64(0) AS ttft_calls"}
	}
	return []string{"toUInt64(sum(n)) AS calls", "toUInt64(sum(e)) AS errors", "toInt64(sum(i)) AS input_tokens", "toInt64(sum(o)) AS output_tokens",
		"toInt64(sum(tot)) AS total_tokens", "toFloat64(sum(c)) AS cost", histogramColumnsSQL(s, p)}
}

// singleThreaded reports whether a read weighs the percentiles of every
// model and user's groups: it runs on one thread. Each thread of a
// parallel aggregation holds a quantile state for every group, so two
// threads hold two: 30 days by model x user at 100 M calls (24,000 groups)
// took 1.7 GiB of server memory on two threads, 0.91 GiB on one, and
// 2.4-3.0 s against 3.8-4.7 s. Every user's groups alone (2,000) stay under
// 0.4 GiB on two threads and keep them, and so do a Limit's groups (its
// second read holds a state for those alone).
func singleThreaded(s UsageSpec, p usagePlan) bool {
	return s.Group.User && s.Group.Model && s.Filter.only == nil && histogramMergeOf(s, p.signed()) == mergeArray
}

// maySubtract reports whether a plan for s may subtract hours from day
// rows: not where it reads the percentiles of every user's groups. Signed
// counts cannot be weighed in the sums query (mergeArray), and unrolling
// every group's (bucket, count) pairs to sum them first took 81 s, and a
// query killed after 2 minutes at 3 GiB, at 100 M calls; reading a partial
// day's hours instead keeps the sums unsigned.
func maySubtract(s UsageSpec) bool {
	return s.SkipPercentiles || !s.Group.User || s.Filter.User != "" || s.Filter.BatchID != ""
}

// mayTrimDays reports whether a day row may stand for the part of its day
// inside the range, its other hours subtracted: only without percentiles.
// One subtraction makes a whole read's sums signed, and its histograms are
// then merged by sumMap or as text instead of being weighed in the sums
// query (at 100 M calls 300-500 ms instead of 100-280 ms for 30 days by day
// or model); the edge day's hours cost less than that.
func mayTrimDays(s UsageSpec) bool { return s.SkipPercentiles }

// signed reports whether the plan subtracts rows (its sums are signed).
func (p usagePlan) signed() bool { return len(p.minus) > 0 }

// rollupRowsSQL is the rows a plan sums, as one UNION ALL: its seals' rollup
// rows (a day row counted at its day's noon), the rows it subtracts again
// (signed), and its per-call rows collapsed by id, each call a one-element
// histogram. Columns: t, m, u, src, n (calls), e (errors), i, o, tot
// (tokens), c (cost), lb/lc (latency buckets and counts), tn (TTFT calls),
// tb/tc (TTFT buckets and counts); counts are Int64 when the plan is signed.
// Without histograms there are no lb, lc, tb, tc: 18.16 reads the columns
// a UNION ALL branch names whether or not the query above uses them, and
// the histograms are most of a rollup row's bytes.
func rollupRowsSQL(s UsageSpec, p usagePlan, histograms bool) string {
	// usage_rollup leads its key with the level: each run of seals names
	// its own (day rows may be read at another level than hour rows)
	table, level := "usage_rollup", p.level
	switch {
	case p.userCopy != "":
		table, level = p.userCopy, nil // one level: levelUsers
	case p.modelCopy:
		table = modelCopyTable // levelModels and levelModelTotals
	}
	where := func(refs []sealRef) string {
		return strings.Join(append([]string{
			"(" + strings.Join(sealRuns(refs, level), " OR ") + ")",
			sealRefsSQL(refs),
		}, usageFilters(s.Filter, "model", "user_id", "source", "batch_id")...), "\n      AND ")
	}
	// Subtracted rows make the sums signed: every branch then counts in
	// Int64 (UNION ALL needs one type).
	signed := p.signed()
	count, emptyCounts := "toUInt64", "emptyArrayUInt64"
	arr := func(col string) string { return col }
	if signed {
		count, emptyCounts = "toInt64", "emptyArrayInt64"
		arr = func(col string) string { return "arrayMap(x -> toInt64(x), " + col + ")" }
	}
	cnt := func(col string) string { return count + "(" + col + ")" }
	hist := func(cols string) string { // cols when histograms are read
		if !histograms {
			return ""
		}
		return cols
	}
	// with modelTotals a sealed group's percentiles are its row's weighed
	// buckets (lq, tq) and its histograms are not read; per-call rows have
	// none and are weighed as usual
	sealedHist := hist(`,
        latency_buckets AS lb, ` + arr("latency_counts") + ` AS lc, ttft_buckets AS tb, ` + arr("ttft_counts") + ` AS tc`)
	perCallQ := ""
	if histograms && p.modelTotals {
		sealedHist = `,
        emptyArrayUInt16() AS lb, emptyArrayUInt64() AS lc, emptyArrayUInt16() AS tb, emptyArrayUInt64() AS tc, latency_q AS lq, ttft_q AS tq`
		perCallQ = `, emptyArrayUInt16() AS lq, emptyArrayUInt16() AS tq`
	}
	// a day row counts in the bucket of its day's noon (planUsage); a local
	// day's row twelve hours after its start, inside it whatever its length
	// (DateTime arithmetic drops the column's zone: toDateTime puts UTC back,
	// which the UTC buckets' toStartOfDay(t) reads)
	branches := []string{`SELECT toDateTime(period + if(grain >= ` + fmt.Sprint(grainDay) + `, 43200, 0), 'UTC') AS t, model AS m, user_id AS u, source AS src,
        ` + cnt("calls") + ` AS n, ` + cnt("errors") + ` AS e, input_tokens AS i, output_tokens AS o, total_tokens AS tot, cost AS c,
        ` + cnt("ttft_calls") + ` AS tn` + sealedHist + `
    FROM {db}.` + table + `
    WHERE ` + where(p.rollup)}
	if signed {
		branches = append(branches, `SELECT toDateTime(period - toUInt32(period) % 86400 + 43200, 'UTC') AS t, model AS m, user_id AS u, source AS src,
        -toInt64(calls) AS n, -toInt64(errors) AS e, -input_tokens AS i, -output_tokens AS o, -total_tokens AS tot, -cost AS c,
        -toInt64(ttft_calls) AS tn`+hist(`,
        latency_buckets AS lb, arrayMap(x -> -toInt64(x), latency_counts) AS lc, ttft_buckets AS tb, arrayMap(x -> -toInt64(x), ttft_counts) AS tc`)+`
    FROM {db}.`+table+`
    WHERE `+where(p.minus))
	}
	if len(p.perCall) > 0 {
		outer := ""
		if w := usageFilters(s.Filter, "c_model", "c_user", "c_source", "c_batch"); len(w) > 0 {
			outer = "\n    WHERE " + strings.Join(w, " AND ")
		}
		one := cnt("1")
		branches = append(branches, fmt.Sprintf(`SELECT c_start AS t, c_model AS m, c_user AS u, c_source AS src,
        %[2]s AS n, %[3]s AS e, c_in AS i, c_out AS o, c_total AS tot, c_cost AS c,
        %[4]s AS tn%[5]s
    FROM
    (
    %[1]s
    )%[6]s`, collapsedCallsSQL(p.perCallWhere()), one, cnt("c_error"), cnt("c_has_ttft"), hist(fmt.Sprintf(`,
        [%[1]s] AS lb, [%[3]s] AS lc, if(c_has_ttft = 1, [%[2]s], emptyArrayUInt16()) AS tb, if(c_has_ttft = 1, [%[3]s], %[4]s()) AS tc`,
			histogramBucketSQL("c_latency"), histogramBucketSQL("c_ttft"), one, emptyCounts)+perCallQ), outer))
	}
	return strings.Join(branches, "\n    UNION ALL\n    ")
}

// sealRuns are the runs of consecutive periods of refs of one grain read at
// one level, for the primary key (a range over the gaps between them would
// read every hour of a month), each at the level level gives its seals
// unless level is nil; the tuple IN of sealRefsSQL picks the exact seals.
func sealRuns(refs []sealRef, level func(sealRef) uint8) []string {
	var runs []string
	for g := grainHour; g <= grainLocalFourWeeks673; g++ {
		step := int64(86400)
		switch {
		case g == grainHour:
			step = 3600
		case g == grainWeek || isLocalWeek(g):
			step = weekSeconds
		}
		byLevel := map[uint8][]int64{}
		for _, r := range refs {
			if r.Grain == g {
				l := uint8(0)
				if level != nil {
					l = level(r)
				}
				byLevel[l] = append(byLevel[l], r.Period)
			}
		}
		for _, l := range slices.Sorted(maps.Keys(byLevel)) {
			periods := byLevel[l]
			slices.Sort(periods)
			for _, run := range consecutiveRuns(periods, step) {
				at := ""
				if level != nil {
					at = fmt.Sprintf("by_user = %d AND ", l)
				}
				runs = append(runs, fmt.Sprintf("(%sgrain = %d AND %s)", at, g, timeRangeSQL("period", run[0], run[1]+1)))
			}
		}
	}
	return runs
}

// consecutiveRuns are the first and last of each run of sorted periods
// that follow each other step apart.
func consecutiveRuns(periods []int64, step int64) [][2]int64 {
	var out [][2]int64
	for i := 0; i < len(periods); {
		j := i
		for j+1 < len(periods) && periods[j+1] == periods[j]+step {
			j++
		}
		out = append(out, [2]int64{periods[i], periods[j]})
		i = j + 1
	}
	return out
}

// histogramMerge is how a read with percentiles adds up the histograms of
// each group's rows; histogramMergeOf picks it by the shape of the read.
type histogramMerge int

const (
	mergeNone histogramMerge = iota // percentiles skipped
	// mergeArray: the plan's rows only add up (no hours subtracted from a
	// day row). The sums query itself weighs each group's rows' (bucket,
	// count) pairs with quantilesExactWeightedArray, which keeps a hash map
	// per group and returns only the three buckets: no ARRAY JOIN, no
	// histograms sent back and merged in Go, no second query. On 18.16 it
	// is the fastest of these for every shape (over 1 M calls: model x user
	// 0.8 s against 1.2-1.6 s weighted after ARRAY JOIN, per model 0.13 s
	// against 0.16 s by sumMap, day x model as fast as the text on the
	// server, without the text). Counts that can be negative cannot weigh,
	// so signed plans use one of the others.
	mergeArray
	// mergeText: each group sums few rows (one model's hour or day, one
	// user's or one batch's rows). Every row's bucket and count arrays come
	// back as text and histogramMerger adds them in Go over a dense array:
	// tens of nanoseconds a bucket, where sumMap on 18.16 costs about a
	// microsecond (an ordered map of generic values) and so does decoding
	// arrays into Go slices in clickhouse-go.
	mergeText
	// mergeSumMap: few groups of many rows (a model's month, a day over
	// every model): the server's sumMap sends one merged histogram per
	// group and is as fast as the alternatives here.
	mergeSumMap
)

// histogramMergeOf is how a read of s merges histograms, given whether its
// plan is signed (maySubtract and mayTrimDays say where it can be).
func histogramMergeOf(s UsageSpec, signed bool) histogramMerge {
	switch {
	case s.SkipPercentiles:
		return mergeNone
	case !signed:
		return mergeArray
	case s.Filter.User != "" || s.Filter.BatchID != "":
		return mergeText
	case s.Group.Bucket != BucketNone && (s.Group.Model || s.Filter.Model != ""):
		return mergeText
	}
	return mergeSumMap
}

// histogramColumnsSQL is the TTFT call count and the histogram columns of
// usageRollupSQL: with mergeArray, the three quantile buckets of latency and
// TTFT (weighedBucketsSQL); with mergeText, each group's rows' bucket and count arrays,
// "[b,...][c,...]" per row, for histogramMerger (signed rows carry negative
// counts); with mergeSumMap, merged by sumMap, which drops buckets whose
// signed counts cancel out; else none.
func histogramColumnsSQL(s UsageSpec, p usagePlan) string {
	const ttftCalls = "toUInt64(sum(tn)) AS ttft_calls"
	signed := p.signed()
	// weighed is the p50/p95/p99 buckets of pairs b, c, or with modelTotals
	// those weighed by the seal of a sealed group (q; its b and c are empty)
	weighed := func(b, c, q string) string {
		if !p.modelTotals {
			return weighedBucketsSQL(b, c)
		}
		return "if(notEmpty(anyIf(" + q + ", notEmpty(" + q + ")) AS sealed_" + q + "), sealed_" + q + ", " + weighedBucketsSQL(b, c) + ")"
	}
	switch histogramMergeOf(s, signed) {
	case mergeArray:
		return weighed("lb", "lc", "lq") + " AS latency_q,\n    " + ttftCalls + ",\n    " + weighed("tb", "tc", "tq") + " AS ttft_q"
	case mergeText:
		return "arrayStringConcat(groupArrayIf(concat(toString(lb), toString(lc)), notEmpty(lb)), '') AS latency_hist,\n    " + ttftCalls + ",\n    arrayStringConcat(groupArrayIf(concat(toString(tb), toString(tc)), notEmpty(tb)), '') AS ttft_hist"
	case mergeSumMap:
		counts := func(col string) string { return col }
		if signed {
			counts = func(col string) string { return "arrayMap(x -> toUInt64(x), " + col + ")" }
		}
		return "(sumMap(lb, lc) AS lat).1 AS latency_buckets,\n    " + counts("lat.2") + " AS latency_counts,\n    " + ttftCalls + ",\n    (sumMap(tb, tc) AS ttf).1 AS ttft_buckets,\n    " + counts("ttf.2") + " AS ttft_counts"
	}
	return ttftCalls
}

// samplePlannedUsage is usage SQL of plans that mix rollup and per-call
// rows, for AllQueries: every grouping with filters and a zone.
func samplePlannedUsage(from, to time.Time) []string {
	h := from.Truncate(time.Hour).Unix()
	var out []string
	for i, g := range append(AllGroupings(), AllSourceGroupings()...) {
		s := UsageSpec{From: from, To: to, Group: g}
		if i%2 == 1 {
			s.TZ, s.Filter = "Asia/Kolkata", UsageFilter{Model: "model-1", User: "o'brien", Source: "batch", BatchID: "b-1"}
			s.SkipPercentiles = i%4 == 1
			s.rankOnly = i%8 == 5 // a Limit's ranking read
		} else if g.Keyed() {
			s.Filter = withGroups(s.Filter, g, sampleGroups) // the percentiles of a Limit's groups
		}
		p := usagePlan{byUser: g.User || i%2 == 1, modelCopy: !g.User && i%4 == 2,
			rollup: []sealRef{{Grain: grainHour, Period: h, Version: 5}, {Grain: grainDay, Period: h - h%86400, Version: 6},
				{Grain: grainWeek, Period: h - h%weekSeconds - weekSeconds, Version: 4}},
			perCall: [][2]int64{{h + 3600, h + 7200}, {h + 3*3600, h + 4*3600}}}
		if i%4 == 1 {
			p.userCopy = []string{userCopyTable, legacyUserCopyTable}[i/4%2]
		}
		if i%3 == 0 { // a day row with hours subtracted: signed sums
			p.minus = []sealRef{{Grain: grainHour, Period: h - h%86400, Version: 8}}
		}
		out = append(out, usageRollupSQL(s, p))
	}
	// a Limit's groups of models and users, read from the copy sorted by user
	i := 0
	for _, g := range append(AllGroupings(), AllSourceGroupings()...) {
		s := UsageSpec{From: from, To: to, Group: g, TZ: []string{"", "America/New_York"}[i%2]}
		if s.Filter = withGroups(s.Filter, g, sampleGroups); !s.Filter.only.fewUsers() {
			continue
		}
		i++
		p := usagePlan{byUser: true, userCopy: []string{userCopyTable, legacyUserCopyTable}[i/2%2],
			rollup:  []sealRef{{Grain: grainHour, Period: h, Version: 5}, {Grain: grainWeek, Period: h - h%weekSeconds - weekSeconds, Version: 4}},
			perCall: [][2]int64{{h + 3600, h + 7200}}}
		if i%3 == 0 {
			p.minus = []sealRef{{Grain: grainHour, Period: h - h%86400, Version: 8}}
		}
		out = append(out, usageRollupSQL(s, p))
	}
	// users alone over four weeks (UTC and New York's), with and without
	// percentiles and a Limit's groups
	for i, s := range []UsageSpec{
		{From: from, To: to, Group: GroupBy{User: true}},
		{From: from, To: to, Group: GroupBy{User: true}, TZ: "America/New_York", SkipPercentiles: true},
		{From: from, To: to, Group: GroupBy{User: true}, Filter: withGroups(UsageFilter{}, GroupBy{User: true}, sampleGroups)},
	} {
		p := usagePlan{byUser: true, userTotals: true, userOverModels: true, summedHours: map[int64]bool{h: true},
			rollup:  []sealRef{{Grain: grainHour, Period: h, Version: 5}, {Grain: []uint8{grainFourWeeks, grainLocalFourWeeks673, grainFourWeeks}[i], Period: h - h%86400 - fourWeeksDays*86400, Version: 9}},
			perCall: [][2]int64{{h + 3600, h + 7200}}}
		out = append(out, usageRollupSQL(s, p))
	}
	// hours read per model with the buckets their seals weighed
	for i, s := range []UsageSpec{
		{From: from, To: to, Group: GroupBy{Bucket: BucketHour, Model: true}},
		{From: from, To: to, Group: GroupBy{Bucket: BucketHour}, Filter: UsageFilter{Model: "model-1"}, TZ: "America/New_York"},
		{From: from, To: to, Group: GroupBy{Bucket: BucketHour, Model: true}, SkipPercentiles: true},
	} {
		p := usagePlan{modelTotals: true, modelCopy: i != 1, rollup: []sealRef{{Grain: grainHour, Period: h, Version: 5}, {Grain: grainHour, Period: h + 7200, Version: 7}},
			perCall: [][2]int64{{h + 3600, h + 7200}}}
		out = append(out, usageRollupSQL(s, p))
	}
	return out
}
