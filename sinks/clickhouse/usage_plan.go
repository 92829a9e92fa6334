package clickhouse

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// usagePlan splits a usage read into rollup rows of clean seals and
// per-call rows of everything else (partial hours at the edges, hours not
// sealed yet, dirty hours, hours whose zone offset is not whole hours when
// the result is bucketed). Each second of the range is read from exactly
// one of the two.
type usagePlan struct {
	byUser bool // rollup level: keyed by user and batch
	// userCopy: the read is filtered by one user and every seal read has
	// its copy sorted by user (usage_rollup_by_user), which holds only that
	// user's rows in a few index ranges
	userCopy bool
	rollup   []sealRef  // seals whose rows are read
	perCall  [][2]int64 // [from, to) Unix seconds, ascending, disjoint
}

// planUsage plans s over the seals and dirty marks in st.
func planUsage(s UsageSpec, st *sealState, loc *time.Location) usagePlan {
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
	bucketed := s.Group.Bucket != BucketNone
	hourUsable := func(h int64) bool {
		return st.clean(h) && (!bucketed || !splitsHour(s.Group.Bucket, loc, h))
	}
	// whole UTC days can come from day rows when the buckets do not split them
	dayUsable := func(d int64) ([]Seal, bool) {
		if d < first || d+86400 > last {
			return nil, false
		}
		switch s.Group.Bucket {
		case BucketHour:
			return nil, false
		case BucketDay:
			for h := d; h < d+86400; h += 3600 {
				if _, off := unixUTC(h).In(loc).Zone(); off != 0 {
					return nil, false
				}
			}
		}
		hours, ok := st.cleanDay(d)
		if !ok || !st.dayCurrent(d, hours) {
			return nil, false
		}
		return hours, true
	}
	for h := first; h < last; {
		if h%86400 == 0 {
			if _, ok := dayUsable(h); ok {
				p.rollup = append(p.rollup, st.days[h].ref())
				h += 86400
				continue
			}
		}
		if hourUsable(h) {
			p.rollup = append(p.rollup, st.hours[h].ref())
		} else {
			addCalls(h, h+3600)
		}
		h += 3600
	}
	addCalls(last, to)
	p.userCopy = s.Filter.User != "" && len(p.rollup) > 0
	for _, r := range p.rollup {
		if x, _ := st.current(r.Grain, r.Period); !x.UserCopy {
			p.userCopy = false
		}
	}
	return p
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
	return where
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

// usageRollupSQL is the SQL of a plan with rollup rows: the rows of its
// seals and its per-call rows (collapsed by id, each call a one-element
// histogram) in one UNION ALL, summed per group; latency and TTFT come back
// as merged histograms. Columns: bucket, model_key, user_key, [source_key],
// calls, errors, input/output/total tokens, cost, latency buckets and
// counts, ttft calls, ttft buckets and counts.
func usageRollupSQL(s UsageSpec, p usagePlan) string {
	keys, order := usageKeys(s, "t", "m", "u", "src")
	byUser := 0
	if p.byUser {
		byUser = 1
	}
	// each grain's runs of consecutive periods, for the primary key (a
	// range over the gaps between them would read every hour of a month);
	// the tuple IN picks the exact seals
	var runs []string
	for _, g := range []uint8{grainHour, grainDay} {
		step := int64(3600)
		if g == grainDay {
			step = 86400
		}
		var periods []int64
		for _, r := range p.rollup {
			if r.Grain == g {
				periods = append(periods, r.Period)
			}
		}
		slices.Sort(periods)
		for i := 0; i < len(periods); {
			j := i
			for j+1 < len(periods) && periods[j+1] == periods[j]+step {
				j++
			}
			runs = append(runs, fmt.Sprintf("(grain = %d AND %s)", g, timeRangeSQL("period", periods[i], periods[j]+1)))
			i = j + 1
		}
	}
	table, level := "usage_rollup", []string{fmt.Sprintf("by_user = %d", byUser)}
	if p.userCopy {
		table, level = "usage_rollup_by_user", nil
	}
	rollupWhere := append(append(level,
		"("+strings.Join(runs, " OR ")+")",
		sealRefsSQL(p.rollup),
	), usageFilters(s.Filter, "model", "user_id", "source", "batch_id")...)
	branches := []string{`SELECT period AS t, model AS m, user_id AS u, source AS src,
        calls AS n, errors AS e, input_tokens AS i, output_tokens AS o, total_tokens AS tot, cost AS c,
        latency_buckets AS lb, latency_counts AS lc, ttft_calls AS tn, ttft_buckets AS tb, ttft_counts AS tc
    FROM {db}.` + table + `
    WHERE ` + strings.Join(rollupWhere, "\n      AND ")}
	if len(p.perCall) > 0 {
		outer := ""
		if w := usageFilters(s.Filter, "c_model", "c_user", "c_source", "c_batch"); len(w) > 0 {
			outer = "\n    WHERE " + strings.Join(w, " AND ")
		}
		branches = append(branches, fmt.Sprintf(`SELECT c_start AS t, c_model AS m, c_user AS u, c_source AS src,
        toUInt64(1) AS n, toUInt64(c_error) AS e, c_in AS i, c_out AS o, c_total AS tot, c_cost AS c,
        [%s] AS lb, [toUInt64(1)] AS lc, toUInt64(c_has_ttft) AS tn,
        if(c_has_ttft = 1, [%s], emptyArrayUInt16()) AS tb, if(c_has_ttft = 1, [toUInt64(1)], emptyArrayUInt64()) AS tc
    FROM
    (
    %s
    )%s`, histogramBucketSQL("c_latency"), histogramBucketSQL("c_ttft"), collapsedCallsSQL(p.perCallWhere()), outer))
	}
	return fmt.Sprintf(`SELECT
    %s,
    toUInt64(sum(n)) AS calls,
    toUInt64(sum(e)) AS errors,
    toInt64(sum(i)) AS input_tokens,
    toInt64(sum(o)) AS output_tokens,
    toInt64(sum(tot)) AS total_tokens,
    toFloat64(sum(c)) AS cost,
    %s
FROM
(
    %s
)
GROUP BY %s
ORDER BY %s`, strings.Join(keys, ",\n    "), histogramColumnsSQL(s.SkipPercentiles), strings.Join(branches, "\n    UNION ALL\n    "), strings.Join(order, ", "), strings.Join(order, ", "))
}

// histogramColumnsSQL is the latency and TTFT columns of usageRollupSQL:
// merged histograms, or empty ones when percentiles are skipped.
func histogramColumnsSQL(skip bool) string {
	if skip {
		return "emptyArrayUInt16() AS latency_buckets,\n    emptyArrayUInt64() AS latency_counts,\n    toUInt64(sum(tn)) AS ttft_calls,\n    emptyArrayUInt16() AS ttft_buckets,\n    emptyArrayUInt64() AS ttft_counts"
	}
	return "(sumMap(lb, lc) AS lat).1 AS latency_buckets,\n    lat.2 AS latency_counts,\n    toUInt64(sum(tn)) AS ttft_calls,\n    (sumMap(tb, tc) AS ttf).1 AS ttft_buckets,\n    ttf.2 AS ttft_counts"
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
		}
		p := usagePlan{byUser: g.User || i%2 == 1, userCopy: i%4 == 1,
			rollup:  []sealRef{{Grain: grainHour, Period: h, Version: 5}, {Grain: grainDay, Period: h - h%86400, Version: 6}},
			perCall: [][2]int64{{h + 3600, h + 7200}, {h + 3*3600, h + 4*3600}}}
		out = append(out, usageRollupSQL(s, p))
	}
	return out
}
