package callsdb

import (
	"fmt"
	"strings"
	"time"
)

// SQL of the sealed rollups (see rollup.go for the protocol and
// schema/clickhouse/README.md for the design). Like every statement of the
// package it is listed by AllQueries, so the chDB check runs it on 26.x.

// Grains of usage_rollup and usage_seals. A day of a configured zone
// (Sealer.Zones) that is not a UTC day is sealed as a local day: the whole
// UTC hours from its midnight to the next, 23, 24 or 25 of them (daylight
// saving). Each length has a grain of its own, so two zones whose days start
// at the same hour but differ in length never share a record. A week is
// summed from its seven UTC day seals, for reads without time buckets; a
// local week (seven days of a configured zone from a local Thursday, when
// they are not a UTC week) from its seven day seals, local or UTC, with a
// grain per length (167, 168 or 169 hours) as local days have. Four weeks
// (28 days from any midnight, UTC or of a configured zone, with a grain per
// length from 671 to 673 hours) are summed from their 28 day seals at
// levelUserOverModels only: a read grouped by user alone weighs one row per
// user for most of a month instead of four week rows and the days around
// them.
const (
	grainHour              uint8 = 1
	grainDay               uint8 = 2 // a UTC day
	grainLocalDay23        uint8 = 3
	grainLocalDay24        uint8 = 4
	grainLocalDay25        uint8 = 5
	grainWeek              uint8 = 6 // seven UTC days from a Thursday: Unix time rounded down to weekSeconds
	grainLocalWeek167      uint8 = 7
	grainLocalWeek168      uint8 = 8
	grainLocalWeek169      uint8 = 9
	grainFourWeeks         uint8 = 10 // 28 UTC days from a UTC midnight
	grainLocalFourWeeks671 uint8 = 11
	grainLocalFourWeeks672 uint8 = 12
	grainLocalFourWeeks673 uint8 = 13
)

// fourWeeksDays is the number of days of a four-week span.
const fourWeeksDays = 28

// weekSeconds is the length of a week seal (Unix time 0 is a Thursday).
const weekSeconds = 7 * 86400

// localDayGrain is the grain of a local day of n hours.
func localDayGrain(n int64) (uint8, bool) {
	if n < 23 || n > 25 {
		return 0, false
	}
	return uint8(n - 20), true
}

// localWeekGrain is the grain of a local week of n hours.
func localWeekGrain(n int64) (uint8, bool) {
	if n < 167 || n > 169 {
		return 0, false
	}
	return uint8(n - 160), true
}

// dayHours is how many hours a whole day of grain spans (24 for a UTC
// day, 23 to 25 for a local day), 0 for any other grain.
func dayHours(grain uint8) int {
	switch {
	case grain == grainDay:
		return 24
	case grain >= grainLocalDay23 && grain <= grainLocalDay25:
		return int(grain) + 20
	}
	return 0
}

// isLocalWeek reports whether grain is a local week's.
func isLocalWeek(grain uint8) bool { return grain >= grainLocalWeek167 && grain <= grainLocalWeek169 }

// localFourWeeksGrain is the grain of a zone's four weeks of n hours.
func localFourWeeksGrain(n int64) (uint8, bool) {
	if n < fourWeeksDays*24-1 || n > fourWeeksDays*24+1 {
		return 0, false
	}
	return uint8(n - 660), true
}

// isFourWeeks reports whether grain is four weeks', UTC or local: seals
// whose rows exist at levelUserOverModels only.
func isFourWeeks(grain uint8) bool {
	return grain >= grainFourWeeks && grain <= grainLocalFourWeeks673
}

// isErrorSQL is what a stored call's error is, wherever calls are counted or
// filtered by it: a status of 400 or more, or an error message (the same as
// the per-call rollup rows' is_error, migration 0002).
const isErrorSQL = "(status >= 400) OR (error != '')"

// collapsedCallsSQL is the per-call rows of calls matching where, one row
// per id: the copy with the highest version, as ReplacingMergeTree keeps,
// read with FINAL, which merges the copies of each sorting key
// (toStartOfHour(start_time), id) as they are read. Copies of a call share
// its start_time and id, so neither a time condition nor a condition on the
// id (a seal's slice) ever splits them, whether it is applied before or after
// the merge. (Three to five times faster than GROUP BY id with an argMax per
// column, which hashed every id string and kept thirteen states per call.)
func collapsedCallsSQL(where string) string {
	return `SELECT
        id,
        start_time AS c_start,
        model AS c_model,
        user_id AS c_user,
        source AS c_source,
        batch_id AS c_batch,
        toUInt8(` + isErrorSQL + `) AS c_error,
        input_tokens AS c_in,
        output_tokens AS c_out,
        total_tokens AS c_total,
        ifNull(cost_usd, 0.) AS c_cost,
        latency_ms AS c_latency,
        ifNull(ttft_ms, 0) AS c_ttft,
        toUInt8(isNotNull(ttft_ms)) AS c_has_ttft
    FROM {db}.calls FINAL
    WHERE ` + where
}

// timeRangeSQL is col in [from, to) (Unix seconds, UTC).
func timeRangeSQL(col string, from, to int64) string {
	return fmt.Sprintf("%s >= toDateTime(%d, 'UTC') AND %s < toDateTime(%d, 'UTC')", col, from, col, to)
}

// rollupColumns are the columns of usage_rollup in insert order.
const rollupColumns = `grain, by_user, period, model, user_id, source, batch_id, version,
    calls, errors, input_tokens, output_tokens, total_tokens, cost,
    latency_buckets, latency_counts, ttft_calls, ttft_buckets, ttft_counts`

// sealHoursSQL computes the rollup rows keyed by user (by_user = 1) of the
// hours of refs, each at its version, from their per-call rows collapsed by
// id. slices > 1 computes only the calls whose id hashes to slice (copies
// of a call share the id, so slices never split a call); the rows of all
// slices sum to the hours.
func sealHoursSQL(refs []sealRef, slice, slices int) string {
	where := callHoursWhere(refs)
	if slices > 1 {
		where += fmt.Sprintf(" AND cityHash64(id) %% %d = %d", slices, slice)
	}
	hours, versions := make([]string, len(refs)), make([]string, len(refs))
	for i, r := range refs {
		hours[i], versions[i] = fmt.Sprintf("toUInt32(%d)", r.Period), fmt.Sprintf("toUInt64(%d)", r.Version)
	}
	return fmt.Sprintf(`INSERT INTO {db}.usage_rollup (%s)
SELECT
    toUInt8(%d), toUInt8(1), toStartOfHour(c_start) AS c_hour, c_model, c_user, c_source, c_batch,
    transform(toUInt32(c_hour), [%s], [%s], toUInt64(0)),
    toUInt64(count()), toUInt64(sum(c_error)), toInt64(sum(c_in)), toInt64(sum(c_out)), toInt64(sum(c_total)), toFloat64(sum(c_cost)),
    (sumMap([%s], [toUInt64(1)]) AS lat).1, lat.2,
    toUInt64(sum(c_has_ttft)),
    (sumMap(if(c_has_ttft = 1, [%s], emptyArrayUInt16()), if(c_has_ttft = 1, [toUInt64(1)], emptyArrayUInt64())) AS ttf).1, ttf.2
FROM
(
    %s
)
GROUP BY c_hour, c_model, c_user, c_source, c_batch`, rollupColumns, grainHour, strings.Join(hours, ", "), strings.Join(versions, ", "),
		histogramBucketSQL("c_latency"), histogramBucketSQL("c_ttft"), collapsedCallsSQL(where))
}

// callHoursWhere is "start_time in one of these hours", over runs of
// consecutive hours.
func callHoursWhere(refs []sealRef) string {
	hours := make([]int64, len(refs))
	for i, r := range refs {
		hours[i] = r.Period
	}
	var parts []string
	for _, run := range consecutiveRuns(hours, 3600) {
		parts = append(parts, "("+timeRangeSQL("start_time", run[0], run[1]+3600)+")")
	}
	return "(" + strings.Join(parts, " OR ") + ")"
}

// sealRowsWhere is "the rows of these seals": their periods' ranges for
// the primary key, then the exact (grain, period, version) tuples.
func sealRowsWhere(refs []sealRef) string {
	return "(" + strings.Join(sealRuns(refs, nil), " OR ") + ") AND " + sealRefsSQL(refs)
}

// The copies of usage_rollup's rows a seal writes besides them, each for the
// reads it serves (usagePlan): the rows keyed by user sorted by user first,
// and the rows without users, both in small granules. legacyUserCopyTable
// holds the rows keyed by user of seals recorded with user_copy = 1 (by
// migrations 0004 to 0008), read until they are sealed again.
const (
	userCopyTable       = "usage_rollup_user_copy"
	legacyUserCopyTable = "usage_rollup_by_user"
	modelCopyTable      = "usage_rollup_by_model"
)

// The usage_seals.user_copy of a seal: where its rows keyed by user are
// copied (0: nowhere, recorded before migration 0004).
const (
	userCopyLegacy  uint8 = 1 // legacyUserCopyTable
	userCopyCurrent uint8 = 2 // userCopyTable
)

// userCopyTableOf is the table of a usage_seals.user_copy value, "" for
// none.
func userCopyTableOf(userCopy uint8) string {
	switch userCopy {
	case userCopyCurrent:
		return userCopyTable
	case userCopyLegacy:
		return legacyUserCopyTable
	}
	return ""
}

// userRollupColumns are the columns of the user copies (usage_rollup's
// by_user = 1 rows, sorted by user first).
const userRollupColumns = `grain, period, model, user_id, source, batch_id, version,
    calls, errors, input_tokens, output_tokens, total_tokens, cost,
    latency_buckets, latency_counts, ttft_calls, ttft_buckets, ttft_counts`

// sealUserCopySQL copies the by_user = 1 rows of seals into
// usage_rollup_user_copy, after they are written and before the seals are
// recorded.
func sealUserCopySQL(refs []sealRef) string {
	return fmt.Sprintf(`INSERT INTO {db}.%s (%s)
SELECT %s
FROM {db}.usage_rollup
WHERE by_user = 1 AND %s`, userCopyTable, userRollupColumns, userRollupColumns, sealRowsWhere(refs))
}

// sealModelCopySQL copies the rows of seals summed over users (levelModels)
// and per model (levelModelTotals) into usage_rollup_by_model, after they
// are written and before the seals are recorded.
func sealModelCopySQL(refs []sealRef) string {
	return fmt.Sprintf(`INSERT INTO {db}.%[1]s (%[2]s, latency_q, ttft_q)
SELECT %[2]s, latency_q, ttft_q
FROM {db}.usage_rollup
WHERE by_user IN (%[3]d, %[4]d) AND %[5]s`, modelCopyTable, rollupColumns, levelModels, levelModelTotals, sealRowsWhere(refs))
}

// Levels of usage_rollup rows (its by_user column).
const (
	levelModels     uint8 = 0 // summed over users and batches: per model and source
	levelUsers      uint8 = 1 // per model, user, source and batch
	levelUserTotals uint8 = 2 // day and week seals only (0006): levelUsers summed over sources and batches
	// hour seals only (0007): levelModels summed over sources, one row per
	// model, with its percentile buckets weighed (latency_q, ttft_q)
	levelModelTotals uint8 = 3
	// levelUsers summed over models, sources and batches, one row per user
	// (day and week seals since 0010, hour seals since they are sealed
	// with it: Seal.UserOverModels)
	levelUserOverModels uint8 = 4
)

// summedRollupSQL is the columns of rollup rows summed from rollup rows
// (every column after the key, in rollupColumns' order): sums of the
// counters, the histograms added bucket by bucket.
const summedRollupSQL = `toUInt64(sum(calls)), toUInt64(sum(errors)), toInt64(sum(input_tokens)), toInt64(sum(output_tokens)), toInt64(sum(total_tokens)), toFloat64(sum(cost)),
    (sumMap(latency_buckets, latency_counts) AS lat).1, lat.2,
    toUInt64(sum(ttft_calls)),
    (sumMap(ttft_buckets, ttft_counts) AS ttf).1, ttf.2`

// sealSummedSQL writes the rows at level of seals refs: levelModels (hour
// seals), their levelUsers rows summed over users and batches;
// levelUserTotals (spans), their levelUsers rows summed over sources and
// batches; levelUserOverModels, their levelUserTotals rows summed over
// models (spans, which have them) or their levelUsers rows summed over
// models, sources and batches (hours). refs are all hours or all spans.
func sealSummedSQL(refs []sealRef, level uint8) string {
	from, model, user, source, keys := levelUsers, "model", "''", "source", "model, source"
	switch level {
	case levelUserTotals:
		user, source, keys = "user_id", "''", "model, user_id"
	case levelUserOverModels:
		model, user, source, keys = "''", "user_id", "''", "user_id"
		if refs[0].Grain != grainHour {
			from = levelUserTotals
		}
	}
	return fmt.Sprintf(`INSERT INTO {db}.usage_rollup (%s)
SELECT
    grain, toUInt8(%d), period, %s, %s, %s, '', version,
    %s
FROM {db}.usage_rollup
WHERE by_user = %d AND %s
GROUP BY grain, period, version, %s`, rollupColumns, level, model, user, source, summedRollupSQL, from, sealRowsWhere(refs), keys)
}

// sealModelTotalsSQL writes the levelModelTotals rows of hour seals refs:
// their levelModels rows summed over sources, and the buckets holding
// p50/p95/p99 of each row's histograms, weighed as a read weighs them
// (histogramColumnsSQL, mergeArray), so that a read whose group is one such
// row takes them as they are.
func sealModelTotalsSQL(refs []sealRef) string {
	return fmt.Sprintf(`INSERT INTO {db}.usage_rollup (%s, latency_q, ttft_q)
SELECT
    grain, toUInt8(%d), period, model, '', '', '', version,
    %s,
    %s, %s
FROM {db}.usage_rollup
WHERE by_user = %d AND %s
GROUP BY grain, period, version, model`, rollupColumns, levelModelTotals, summedRollupSQL,
		weighedBucketsSQL("latency_buckets", "latency_counts"), weighedBucketsSQL("ttft_buckets", "ttft_counts"), levelModels, sealRowsWhere(refs))
}

// sealSpanSQL writes the rows (levels 0 and 1) of a span seal at version v
// starting at start: a UTC or local day summed from the hour seals it lists
// (its hours in order), or a week from its seven day seals.
func sealSpanSQL(grain uint8, start int64, v uint64, parts []sealRef) string {
	return fmt.Sprintf(`INSERT INTO {db}.usage_rollup (%s)
SELECT
    toUInt8(%d), by_user, toDateTime(%d, 'UTC'), model, user_id, source, batch_id, toUInt64(%d),
    %s
FROM {db}.usage_rollup
WHERE by_user IN (%d, %d) AND %s
GROUP BY by_user, model, user_id, source, batch_id`, rollupColumns, grain, start, v, summedRollupSQL,
		levelModels, levelUsers, sealRowsWhere(parts))
}

// sealFourWeeksSQL writes the rows of four weeks (grain, start) at version
// v: the levelUserOverModels rows of its 28 day seals (parts), summed per
// user. No other level and no copy: only reads grouped by user alone read
// them (usagePlan.userOverModels).
func sealFourWeeksSQL(grain uint8, start int64, v uint64, parts []sealRef) string {
	return fmt.Sprintf(`INSERT INTO {db}.usage_rollup (%s)
SELECT
    toUInt8(%d), toUInt8(%d), toDateTime(%d, 'UTC'), '', user_id, '', '', toUInt64(%d),
    %s
FROM {db}.usage_rollup
WHERE by_user = %d AND %s
GROUP BY user_id`, rollupColumns, grain, levelUserOverModels, start, v, summedRollupSQL, levelUserOverModels, sealRowsWhere(parts))
}

// sealRef names the rows of one seal.
type sealRef struct {
	Grain   uint8
	Period  int64 // Unix seconds
	Version uint64
}

// sealRefsSQL is "these seals' rows": a tuple IN over (grain, period,
// version). The version is an expression (version + 0), not the key column:
// 18.16 checks a tuple IN naming key columns against every index range the
// other conditions leave, and with version (the last key column) in it that
// cost more than reading the rows (30 days of 9 users' rows from the copy
// sorted by user, 40,000 rows: 42 ms against 14 ms). The runs of sealRuns
// narrow the index; this picks the exact seals among the rows they read.
func sealRefsSQL(refs []sealRef) string {
	var b strings.Builder
	b.WriteString("(grain, toUInt32(period), version + 0) IN (")
	for i, r := range refs {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "(%d, %d, %d)", r.Grain, r.Period, r.Version)
	}
	if len(refs) == 1 { // (x) would be a scalar, not a one-tuple set
		b.WriteString(", (0, 0, 0)")
	}
	b.WriteString(")")
	return b.String()
}

// InsertSeal records seals (batch insert), after their rows are written.
const InsertSeal = `INSERT INTO {db}.usage_seals (grain, period, version, calls, hour_versions, sealed_at, user_copy, user_totals, model_totals, model_copy, user_over_models)`

// InsertDirtyHours marks hours for re-sealing (batch insert).
const InsertDirtyHours = `INSERT INTO {db}.usage_dirty_hours (hour, marked_at, reason)`

// sealsQuery is the newest seal of every period in [from, to).
func sealsQuery(from, to int64) string {
	return `SELECT grain, toInt64(toUInt32(period)) AS p, max(version) AS v, argMax(calls, version), argMax(hour_versions, version), argMax(user_copy, version), argMax(user_totals, version), argMax(model_totals, version), argMax(model_copy, version), argMax(user_over_models, version)
FROM {db}.usage_seals
WHERE ` + timeRangeSQL("period", from, to) + `
GROUP BY grain, period
ORDER BY grain, p`
}

// dirtyQuery is the newest mark of every dirty hour in [from, to).
func dirtyQuery(from, to int64) string {
	return `SELECT toInt64(toUInt32(hour)) AS h, max(marked_at)
FROM {db}.usage_dirty_hours
WHERE ` + timeRangeSQL("hour", from, to) + `
GROUP BY hour
ORDER BY h`
}

// sealCallRowsQuery counts the stored rows (copies included) of each of
// the hours of refs that has any, to size the statements of their seals.
func sealCallRowsQuery(refs []sealRef) string {
	return `SELECT toInt64(toUInt32(toStartOfHour(start_time))) AS h, toUInt64(count()) FROM {db}.calls WHERE ` + callHoursWhere(refs) + ` GROUP BY h`
}

// sealCallsQuery sums the calls of each hour seal of refs that has rows
// (for their records).
func sealCallsQuery(refs []sealRef) string {
	return `SELECT toInt64(toUInt32(period)), version, toUInt64(sum(calls)) FROM {db}.usage_rollup WHERE by_user = 0 AND ` + sealRowsWhere(refs) + ` GROUP BY period, version`
}

// callHoursQuery lists the hours in [from, to) holding stored calls.
func callHoursQuery(from, to int64) string {
	return `SELECT DISTINCT toInt64(toUInt32(toStartOfHour(start_time))) AS h FROM {db}.calls WHERE ` + timeRangeSQL("start_time", from, to) + ` ORDER BY h`
}

// QueryFirstCall is the start of the oldest stored call (0 when none).
const QueryFirstCall = `SELECT toInt64(toUInt32(min(start_time))), toUInt64(count()) FROM {db}.calls`

// rollupVersionsQuery lists the seal versions stored for the periods in
// [from, to) (superseded and abandoned ones included) in rollupTables, for
// clean-up.
func rollupVersionsQuery(from, to int64) string {
	where := timeRangeSQL("period", from, to)
	branches := make([]string, len(rollupTables))
	for i, t := range rollupTables {
		branches[i] = "SELECT grain, period, version FROM {db}." + t + " WHERE " + where
	}
	return `SELECT DISTINCT grain, toInt64(toUInt32(period)) AS p, version FROM
(
    ` + strings.Join(branches, "\n    UNION ALL\n    ") + `
)
ORDER BY grain, p, version`
}

// rollupTables are usage_rollup and the copies of its rows seals write or
// wrote: keyed by user first (usage_rollup_user_copy, and
// usage_rollup_by_user before migration 0009) and without users
// (usage_rollup_by_model).
var rollupTables = []string{"usage_rollup", userCopyTable, legacyUserCopyTable, modelCopyTable}

// deleteRollupVersionsStatements delete the rows of superseded seals and
// their copies.
func deleteRollupVersionsStatements(topo Topology, refs []sealRef) []string {
	var out []string
	for _, t := range rollupTables {
		out = append(out, "ALTER TABLE {db}."+topo.LocalTable(t)+topo.onCluster()+" DELETE WHERE "+sealRefsSQL(refs))
	}
	return out
}

// rollupQueries are sample statements of the rollups for AllQueries.
func rollupQueries(sampleFrom time.Time) []string {
	h := sampleFrom.Truncate(time.Hour).Unix()
	day := sampleFrom.Truncate(24 * time.Hour).Unix()
	hours := make([]sealRef, 24)
	for i := range hours {
		hours[i] = sealRef{Grain: grainHour, Period: day + int64(i)*3600, Version: uint64(1000 + i)}
	}
	gappy := []sealRef{hours[0], hours[1], hours[2], hours[7]} // two runs of hours
	week := day - day%weekSeconds
	days := make([]sealRef, 7)
	for i := range days {
		days[i] = sealRef{Grain: grainDay, Period: week + int64(i)*86400, Version: uint64(2000 + i)}
	}
	fourWeeks := make([]sealRef, fourWeeksDays)      // UTC days
	localFourWeeks := make([]sealRef, fourWeeksDays) // local days and a UTC one
	for i := range fourWeeks {
		d := day - int64(fourWeeksDays-i)*86400
		fourWeeks[i] = sealRef{Grain: grainDay, Period: d, Version: uint64(3000 + i)}
		localFourWeeks[i] = sealRef{Grain: grainLocalDay24, Period: d + 5*3600, Version: uint64(4000 + i)}
	}
	localFourWeeks[3] = sealRef{Grain: grainDay, Period: day - (fourWeeksDays-3)*86400, Version: 4100}
	out := []string{
		sealHoursSQL(hours[:1], 0, 1), sealHoursSQL(hours[:1], 1, 3), sealHoursSQL(gappy, 0, 1), sealSummedSQL(gappy, levelModels), sealSummedSQL(gappy, levelUserOverModels), sealModelTotalsSQL(gappy),
		sealSummedSQL([]sealRef{{Grain: grainDay, Period: day, Version: 9}, {Grain: grainLocalDay23, Period: day, Version: 11}}, levelUserTotals),
		sealSummedSQL([]sealRef{{Grain: grainWeek, Period: week, Version: 12}}, levelUserOverModels),
		sealSpanSQL(grainDay, day, 9, hours), sealSpanSQL(grainLocalDay23, day, 11, hours[:23]), sealSpanSQL(grainWeek, week, 12, days),
		sealFourWeeksSQL(grainFourWeeks, day-fourWeeksDays*86400, 14, fourWeeks), sealFourWeeksSQL(grainLocalFourWeeks671, day-fourWeeksDays*86400+5*3600, 15, localFourWeeks),
		sealUserCopySQL(gappy), sealUserCopySQL([]sealRef{{Grain: grainDay, Period: day, Version: 9}, {Grain: grainLocalDay23, Period: day, Version: 11}}),
		sealModelCopySQL(gappy), sealModelCopySQL([]sealRef{{Grain: grainWeek, Period: week, Version: 12}}),
		sealsQuery(h, h+86400), dirtyQuery(h, h+86400), sealCallRowsQuery(gappy), sealCallsQuery(gappy),
		callHoursQuery(h, h+86400), QueryFirstCall, rollupVersionsQuery(h, h+86400),
	}
	return append(out, deleteRollupVersionsStatements(Topology{}, hours[:2])...)
}
