package clickhouse

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

func (g GroupBy) String() string {
	parts := []string{string(g.Bucket)}
	if g.Bucket == BucketNone {
		parts[0] = "all"
	}
	if g.Model {
		parts = append(parts, "model")
	}
	if g.User {
		parts = append(parts, "user")
	}
	if g.Source {
		parts = append(parts, "source")
	}
	return strings.Join(parts, "x")
}

// UsageFilter narrows Usage to calls whose newest stored copy matches every
// non-empty field.
type UsageFilter struct {
	Model, User, Source, BatchID string
}

// UsageSpec is one usage request: calls that started in [From, To) (whole
// seconds), grouped by Group, filtered by Filter, with hour and day buckets
// in the IANA zone TZ ("" means UTC).
type UsageSpec struct {
	From, To time.Time
	Group    GroupBy
	Filter   UsageFilter
	TZ       string
}

// needsCalls reports whether s needs columns the rollup ledgers lack
// (source, batch_id): then it reads the wide calls table, still deduplicated
// by id the same way.
func (s UsageSpec) needsCalls() bool {
	return s.Group.Source || s.Filter.Source != "" || s.Filter.BatchID != ""
}

// source picks the table whose sort key serves s: hour x model from
// usage_hour_model, anything else from usage_day_model_user, and calls when
// source or batch_id is involved. Every one holds every call, so each gives
// the same numbers.
func (s UsageSpec) source() (table, prefilter string) {
	f, t := s.From.Unix(), s.To.Unix()
	switch {
	case s.needsCalls():
		return "calls", "1"
	case s.Group.Bucket == BucketHour && !s.Group.User:
		return "usage_hour_model", fmt.Sprintf("hour >= toStartOfHour(toDateTime(%d, 'UTC')) AND hour <= toStartOfHour(toDateTime(%d, 'UTC'))", f, t)
	}
	return "usage_day_model_user", fmt.Sprintf("day >= toDate(toDateTime(%d, 'UTC')) AND day <= toDate(toDateTime(%d, 'UTC'))", f, t)
}

func (g GroupBy) source() (table, dayFilter string) {
	return UsageSpec{Group: g}.source()
}

// UsageQuery is the SQL of Usage for the half-open range [from, to), UTC
// buckets, no filter.
func UsageQuery(from, to time.Time, g GroupBy) string {
	return UsageSQL(UsageSpec{From: from, To: to, Group: g})
}

// UsageSQL is the SQL of UsageSpec. The inner query collapses the per-call
// ledger by id — the copy with the highest version wins, like
// ReplacingMergeTree — so a call stored several times (redelivery, replay,
// retried insert) counts once whether or not ClickHouse has merged the
// copies yet. Filters apply to that newest copy (a replay that re-attributes
// a call moves it), so they sit in the outer query. Quantiles are exact
// (quantilesExact) over the deduplicated calls. Columns: bucket, model_key,
// user_key, [source_key when grouped by source], calls, errors,
// input/output/total tokens, cost, latency quantiles, ttft calls, ttft
// quantiles.
func UsageSQL(s UsageSpec) string {
	table, prefilter := s.source()
	f, t := s.From.Unix(), s.To.Unix()
	g := s.Group
	tz := ""
	if s.TZ != "" && s.TZ != "UTC" {
		tz = ", " + SQLString(s.TZ)
	}
	bucket := "toDateTime(0, 'UTC')"
	switch g.Bucket {
	case BucketHour:
		bucket = "toStartOfHour(c_start" + tz + ")"
	case BucketDay:
		bucket = "toStartOfDay(c_start" + tz + ")"
	}
	keys := []string{bucket + " AS bucket"}
	order := []string{"bucket"}
	add := func(on bool, col, alias string) {
		if on {
			keys = append(keys, col+" AS "+alias)
		} else {
			keys = append(keys, "'' AS "+alias)
		}
		order = append(order, alias)
	}
	add(g.Model, "c_model", "model_key")
	add(g.User, "c_user", "user_key")
	if g.Source {
		add(true, "c_source", "source_key")
	}
	isError, cost, extra := "is_error", "cost", ""
	if table == "calls" {
		isError, cost = "toUInt8((status >= 400) OR (error != ''))", "ifNull(cost_usd, 0.)"
		extra = `,
        argMax(source, version) AS c_source,
        argMax(batch_id, version) AS c_batch`
	}
	var where []string
	for _, c := range []struct{ col, v string }{
		{"c_model", s.Filter.Model}, {"c_user", s.Filter.User}, {"c_source", s.Filter.Source}, {"c_batch", s.Filter.BatchID},
	} {
		if c.v != "" {
			where = append(where, c.col+" = "+SQLString(c.v))
		}
	}
	outerWhere := ""
	if len(where) > 0 {
		outerWhere = "\nWHERE " + strings.Join(where, " AND ")
	}
	return fmt.Sprintf(`SELECT
    %[1]s,
    toUInt64(count()) AS calls,
    toUInt64(sum(c_error)) AS errors,
    toInt64(sum(c_in)) AS input_tokens,
    toInt64(sum(c_out)) AS output_tokens,
    toInt64(sum(c_total)) AS total_tokens,
    toFloat64(sum(c_cost)) AS cost,
    arrayMap(x -> toFloat64(x), quantilesExact(0.5, 0.95, 0.99)(c_latency)) AS latency_q,
    toUInt64(countIf(c_has_ttft)) AS ttft_calls,
    arrayMap(x -> toFloat64(x), quantilesExactIf(0.5, 0.95, 0.99)(c_ttft, c_has_ttft)) AS ttft_q
FROM
(
    SELECT
        id,
        argMax(start_time, version) AS c_start,
        argMax(model, version) AS c_model,
        argMax(user_id, version) AS c_user,
        argMax(%[2]s, version) AS c_error,
        argMax(input_tokens, version) AS c_in,
        argMax(output_tokens, version) AS c_out,
        argMax(total_tokens, version) AS c_total,
        argMax(%[3]s, version) AS c_cost,
        argMax(latency_ms, version) AS c_latency,
        argMax(ifNull(ttft_ms, 0), version) AS c_ttft,
        argMax(toUInt8(isNotNull(ttft_ms)), version) AS c_has_ttft%[4]s
    FROM {db}.%[5]s
    WHERE %[6]s
      AND start_time >= toDateTime(%[7]d, 'UTC') AND start_time < toDateTime(%[8]d, 'UTC')
    GROUP BY id
)%[9]s
GROUP BY %[10]s
ORDER BY %[10]s`, strings.Join(keys, ",\n    "), isError, cost, extra, table, prefilter, f, t, outerWhere, strings.Join(order, ", "))
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
	}
	for _, st := range []CallStatus{"", "ok", "error", "500"} {
		q = append(q, CallListQuery(CallListSpec{From: sampleFrom, To: sampleTo, User: "user-01", Model: "model-1", Status: st, Limit: 50}))
	}
	q = append(q,
		CallListQuery(CallListSpec{From: sampleFrom, To: sampleTo, Limit: 10, After: &CallCursor{StartMS: sampleTo.UnixMilli() - 1, ID: "x"}}),
		CallQuery("chdb-0000001"),
		TraceQuery("t-1", 1000),
	)
	return append(q, exportQueries(sampleFrom, sampleTo)...) // export owns queries_export.go
}
