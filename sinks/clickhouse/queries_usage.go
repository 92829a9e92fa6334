package clickhouse

import (
	"fmt"
	"strings"
	"time"
)

// The read side: SQL behind the usage overview and the call list. Every
// statement here must be listed by readQueries so that the chDB check runs it.

// Bucket is the time grain of a usage row.
type Bucket string

// Time grains of Usage.
const (
	BucketNone Bucket = ""
	BucketHour Bucket = "hour"
	BucketDay  Bucket = "day"
)

// GroupBy says how Usage groups calls: by time bucket, model and/or user.
type GroupBy struct {
	Bucket Bucket
	Model  bool
	User   bool
}

// AllGroupings is every GroupBy Usage accepts.
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
	return strings.Join(parts, "x")
}

// usageSource picks the rollup whose sort key serves g: hour x model from
// usage_hour_model, anything with a user or by day from usage_day_model_user.
// Both ledgers hold every call, so either gives the same numbers.
func (g GroupBy) source() (table, dayFilter string) {
	if g.Bucket == BucketHour && !g.User {
		return "usage_hour_model", "hour >= toStartOfHour(toDateTime(%[1]d, 'UTC')) AND hour <= toStartOfHour(toDateTime(%[2]d, 'UTC'))"
	}
	return "usage_day_model_user", "day >= toDate(toDateTime(%[1]d, 'UTC')) AND day <= toDate(toDateTime(%[2]d, 'UTC'))"
}

// UsageQuery is the SQL of Usage for the half-open range [from, to) (whole
// seconds). The inner query collapses the per-call ledger by id — the copy
// with the highest version wins, like ReplacingMergeTree — so a call stored
// several times (redelivery, replay, retried insert) counts once whether or
// not ClickHouse has merged the copies yet. Quantiles are exact
// (quantilesExact) over the deduplicated calls.
func UsageQuery(from, to time.Time, g GroupBy) string {
	table, dayFilter := g.source()
	f, t := from.Unix(), to.Unix()
	bucket := "toDateTime(0, 'UTC')"
	switch g.Bucket {
	case BucketHour:
		bucket = "toStartOfHour(c_start)"
	case BucketDay:
		bucket = "toStartOfDay(c_start)"
	}
	model, user := "''", "''"
	if g.Model {
		model = "c_model"
	}
	if g.User {
		user = "c_user"
	}
	return fmt.Sprintf(`SELECT
    %[1]s AS bucket,
    %[2]s AS model_key,
    %[3]s AS user_key,
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
        argMax(is_error, version) AS c_error,
        argMax(input_tokens, version) AS c_in,
        argMax(output_tokens, version) AS c_out,
        argMax(total_tokens, version) AS c_total,
        argMax(cost, version) AS c_cost,
        argMax(latency_ms, version) AS c_latency,
        argMax(ifNull(ttft_ms, 0), version) AS c_ttft,
        argMax(toUInt8(isNotNull(ttft_ms)), version) AS c_has_ttft
    FROM {db}.%[4]s
    WHERE %[5]s
      AND start_time >= toDateTime(%[6]d, 'UTC') AND start_time < toDateTime(%[7]d, 'UTC')
    GROUP BY id
)
GROUP BY bucket, model_key, user_key
ORDER BY bucket, model_key, user_key`, bucket, model, user, table, fmt.Sprintf(dayFilter, f, t), f, t)
}

// readQueries is every read statement with sample arguments, for AllQueries.
func readQueries(sampleFrom, sampleTo time.Time) []string {
	var q []string
	for _, g := range AllGroupings() {
		q = append(q, UsageQuery(sampleFrom, sampleTo, g))
	}
	return q
}
