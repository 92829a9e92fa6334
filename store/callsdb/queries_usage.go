package callsdb

import (
	"fmt"
	"strings"
	"time"
)

// The read side: SQL behind the usage overview, the call list, call details
// and traces. Every statement here must be listed by readQueries so that the
// chDB check runs it. ClickHouse 18.16 has no server-side parameters, so
// values are rendered as literals with quote (strings) or as integers.

// Bucket is the time grain of a usage row.
type Bucket string

// Time grains of Usage.
const (
	BucketNone Bucket = ""
	BucketHour Bucket = "hour"
	BucketDay  Bucket = "day"
)

// GroupBy says how Usage groups calls: by time bucket, model, user and/or
// source (online or batch).
type GroupBy struct {
	Bucket Bucket
	Model  bool
	User   bool
	Source bool
}

// AllGroupings is every GroupBy of bucket, model and user (the groupings the
// rollup ledgers serve; AllSourceGroupings adds source).
func AllGroupings() []GroupBy {
	var out []GroupBy
	for _, b := range []Bucket{BucketNone, BucketHour, BucketDay} {
		for _, m := range []bool{false, true} {
			for _, u := range []bool{false, true} {
				out = append(out, GroupBy{Bucket: b, Model: m, User: u})
			}
		}
	}
	return out
}

// AllSourceGroupings is every GroupBy that includes source.
func AllSourceGroupings() []GroupBy {
	var out []GroupBy
	for _, g := range AllGroupings() {
		g.Source = true
		out = append(out, g)
	}
	return out
}

// Dimensions are the grouping's columns besides the time bucket, in the
// order model, user, source.
func (g GroupBy) Dimensions() []string {
	var dims []string
	if g.Model {
		dims = append(dims, "model")
	}
	if g.User {
		dims = append(dims, "user")
	}
	if g.Source {
		dims = append(dims, "source")
	}
	return dims
}

func (g GroupBy) String() string {
	bucket := string(g.Bucket)
	if g.Bucket == BucketNone {
		bucket = "all"
	}
	return strings.Join(append([]string{bucket}, g.Dimensions()...), "x")
}

// UsageFilter narrows Usage to calls whose newest stored copy matches every
// non-empty field.
type UsageFilter struct {
	Model, User, Source, BatchID string
	// only: the read of a Limit's groups (nil: every group)
	only *groupSet
}

// groupSet narrows a read to groups: the keys of by (model, user, source,
// those the read groups by, whose columns every row read keeps) are one of
// groups' (sorted; time and the other keys are not theirs).
type groupSet struct {
	by     GroupBy
	groups []usageKey
}

// UsageSpec is one usage request: calls that started in [From, To) (whole
// seconds), grouped by Group, filtered by Filter, with hour and day buckets
// in the IANA zone TZ ("" means UTC).
type UsageSpec struct {
	From, To time.Time
	Group    GroupBy
	Filter   UsageFilter
	TZ       string
	// SkipPercentiles leaves latency and TTFT percentiles out (zero): they
	// are what a read of the rollups spends most on (merging histograms per
	// group), and overviews that show counts and tokens do not need them.
	SkipPercentiles bool
	// Limit keeps the Limit groups with the most calls (ties by key), a
	// group being the model, user and source the spec groups by, each with
	// all its time buckets; 0 keeps every group. Only the groups kept have
	// their percentiles read: the top users of a month with their latency
	// cost a read of their rows, not of every user's.
	Limit int
	// rankOnly reads each group's calls alone, the other sums left zero:
	// what picking a Limit's groups needs when their rows are read again
	// with their percentiles (most of a read's bytes are the other sums).
	rankOnly bool
}

// Keyed reports whether g groups by a key other than time (what a Limit
// picks groups by).
func (g GroupBy) Keyed() bool { return g.Model || g.User || g.Source }

// UsageQuery is the exact per-call SQL of Usage for the half-open range
// [from, to), UTC buckets, no filter.
func UsageQuery(from, to time.Time, g GroupBy) string {
	return UsageSQL(UsageSpec{From: from, To: to, Group: g})
}

// UsageSQL is the exact per-call SQL of s over all of [From, To): what
// UsageOf runs when no clean seal covers part of the range.
func UsageSQL(s UsageSpec) string {
	return usageExactSQL(s, timeRangeSQL("start_time", s.From.Unix(), s.To.Unix()))
}

// usageExactSQL aggregates the per-call rows of calls matching where. The
// inner query collapses them by id — the copy with the highest version wins,
// like ReplacingMergeTree — so a call stored several times (redelivery,
// replay, retried insert) counts once whether or not ClickHouse has merged
// the copies yet. Filters apply to that newest copy (a replay that
// re-attributes a call moves it), so they sit in the outer query. Quantiles
// are exact (quantilesExact). Columns: bucket, model_key, user_key,
// [source_key when grouped by source], calls, errors, input/output/total
// tokens, cost, latency quantiles, ttft calls, ttft quantiles.
func usageExactSQL(s UsageSpec, where string) string {
	keys, order := usageKeys(s, "c_start", "c_model", "c_user", "c_source")
	outerWhere := ""
	if w := usageFilters(s.Filter, "c_model", "c_user", "c_source", "c_batch"); len(w) > 0 {
		outerWhere = "\nWHERE " + strings.Join(w, " AND ")
	}
	return fmt.Sprintf(`SELECT
    %[1]s,
    toUInt64(count()) AS calls,
    toUInt64(sum(c_error)) AS errors,
    toInt64(sum(c_in)) AS input_tokens,
    toInt64(sum(c_out)) AS output_tokens,
    toInt64(sum(c_total)) AS total_tokens,
    toFloat64(sum(c_cost)) AS cost,
    %[5]s
FROM
(
    %[2]s
)%[3]s
GROUP BY %[4]s
ORDER BY %[4]s`, strings.Join(keys, ",\n    "), collapsedCallsSQL(where), outerWhere, strings.Join(order, ", "), exactPercentilesSQL(s.SkipPercentiles))
}

// exactPercentilesSQL is the latency and TTFT columns of usageExactSQL:
// exact quantiles, or empty arrays when skipped.
func exactPercentilesSQL(skip bool) string {
	q, qIf := "quantilesExact(0.5, 0.95, 0.99)(c_latency)", "quantilesExactIf(0.5, 0.95, 0.99)(c_ttft, c_has_ttft)"
	if skip {
		q, qIf = "emptyArrayFloat64()", "emptyArrayFloat64()"
	}
	return "arrayMap(x -> toFloat64(x), " + q + ") AS latency_q,\n    toUInt64(countIf(c_has_ttft)) AS ttft_calls,\n    arrayMap(x -> toFloat64(x), " + qIf + ") AS ttft_q"
}

// Call list, details and traces read {db}.calls, newest copy per id.

// callDetailColumns are the columns CallDetail scans into a StoredCall, in order.
const callDetailColumns = `id, trace_id, session_id, start_time, start_ms, end_time, end_ms,
    first_token_time, first_token_ms, latency_ms, ttft_ms,
    endpoint, kind, model, instance, user_id, user_source, api_key_hash, api_key_prefix,
    stream, status, error, finish_reason, input_text, output_text, input, output, model_parameters,
    input_tokens, output_tokens, total_tokens, usage_source, cost_usd, metadata, tags, source, batch_id, truncated`

// CallQuery is the newest stored copy of call id.
func CallQuery(id string) string {
	return `SELECT ` + callDetailColumns + `
FROM {db}.calls
WHERE id = ` + SQLString(id) + `
ORDER BY version DESC
LIMIT 1`
}

// TraceQuery is the newest copy of every call whose trace_id or session_id
// is id, at most limit of them (earliest first).
func TraceQuery(id string, limit int) string {
	return fmt.Sprintf(`SELECT %s
FROM
(
    SELECT %s, version
    FROM {db}.calls
    WHERE trace_id = %s OR session_id = %s
    ORDER BY version DESC
    LIMIT 1 BY id
)
ORDER BY start_time, start_ms, id
LIMIT %d`, callDetailColumns, callDetailColumns, SQLString(id), SQLString(id), limit)
}

// sampleGroups are two groups of a Limit, for the sample statements.
var sampleGroups = map[usageKey]bool{{model: "model-1", user: "o'brien", source: "batch"}: true, {model: "model-2", user: "u-2", source: "online"}: true}

// readQueries is every read statement with sample arguments, for AllQueries:
// each grouping on each table, filters, a time zone, the call list pages,
// a call and a trace.
func readQueries(sampleFrom, sampleTo time.Time) []string {
	var q []string
	for _, g := range AllGroupings() {
		q = append(q, UsageQuery(sampleFrom, sampleTo, g))
		q = append(q, UsageSQL(UsageSpec{From: sampleFrom, To: sampleTo, Group: g, TZ: "Asia/Kolkata",
			Filter: UsageFilter{Model: "model-1", User: "o'brien"}}))
	}
	for _, g := range AllSourceGroupings() {
		q = append(q, UsageSQL(UsageSpec{From: sampleFrom, To: sampleTo, Group: g, TZ: "America/New_York",
			Filter: UsageFilter{Source: "batch", BatchID: "b-1"}}))
		// the percentiles of a Limit's groups
		q = append(q, UsageSQL(UsageSpec{From: sampleFrom, To: sampleTo, Group: g, Filter: withGroups(UsageFilter{}, g, sampleGroups)}))
	}
	q = append(q, callListQueries(sampleFrom, sampleTo)...) // the call list owns queries_calls.go
	q = append(q,
		CallQuery("chdb-0000001"),
		TraceQuery("t-1", 1000),
		BatchesQuery(BatchSpec{From: sampleFrom, To: sampleTo, Limit: 100}),
		UnresolvedQuery(sampleFrom, sampleTo, 1000),
		RangeCallsQuery(sampleFrom, sampleTo, 1000),
	)
	q = append(q, rollupQueries(sampleFrom)...)
	q = append(q, samplePlannedUsage(sampleFrom, sampleTo)...)
	return append(q, exportQueries(sampleFrom, sampleTo)...) // export owns queries_export.go
}
