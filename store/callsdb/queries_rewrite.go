package callsdb

import (
	"context"
	"fmt"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/callpipe/callpipe/schema"
)

// maxCallsPerHour bounds the calls one hour's read holds in memory.
const maxCallsPerHour = 200_000

// UnresolvedQuery is the newest copy of every call that started in
// [from, to) whose newest copy has user_source unresolved (its API key could
// not be looked up), earliest first, at most limit.
func UnresolvedQuery(from, to time.Time, limit int) string {
	return newestCallsQuery(from, to, "user_source = "+SQLString(schema.UserUnresolved), limit)
}

// RangeCallsQuery is the newest copy of every call that started in
// [from, to), earliest first, at most limit.
func RangeCallsQuery(from, to time.Time, limit int) string {
	return newestCallsQuery(from, to, "", limit)
}

// newestCallsQuery is the newest copy of every call that started in
// [from, to) and whose newest copy matches cond ("" : every call), earliest
// first, at most limit. With cond, only ids with a matching copy are
// collapsed.
func newestCallsQuery(from, to time.Time, cond string, limit int) string {
	rng := timeRangeSQL("start_time", from.Unix(), to.Unix())
	inner, outer := "", ""
	if cond != "" {
		inner = fmt.Sprintf("\n      AND id IN (SELECT id FROM {db}.calls WHERE %s AND %s)", rng, cond)
		outer = "\nWHERE " + cond
	}
	return fmt.Sprintf(`SELECT %[1]s
FROM
(
    SELECT %[1]s, version
    FROM {db}.calls
    WHERE %[2]s%[3]s
    ORDER BY version DESC
    LIMIT 1 BY id
)%[4]s
ORDER BY start_time, start_ms, id
LIMIT %[5]d`, callDetailColumns, rng, inner, outer, limit)
}

// UnresolvedCalls returns the calls of [from, to) whose user is still
// unresolved, hour by hour (earliest first) to keep each read small.
func UnresolvedCalls(ctx context.Context, conn driver.Conn, db string, from, to time.Time) ([]StoredCall, error) {
	var out []StoredCall
	err := eachHour(ctx, conn, db, from, to, UnresolvedQuery, func(calls []StoredCall) error {
		out = append(out, calls...)
		return nil
	})
	return out, err
}

// RangeCalls calls fn with the newest copy of every call of [from, to), one
// hour at a time, earliest first.
func RangeCalls(ctx context.Context, conn driver.Conn, db string, from, to time.Time, fn func([]StoredCall) error) error {
	return eachHour(ctx, conn, db, from, to, RangeCallsQuery, fn)
}

func eachHour(ctx context.Context, conn driver.Conn, db string, from, to time.Time,
	query func(from, to time.Time, limit int) string, fn func([]StoredCall) error) error {
	for h := from; h.Before(to); h = h.Truncate(time.Hour).Add(time.Hour) {
		end := h.Truncate(time.Hour).Add(time.Hour)
		if end.After(to) {
			end = to
		}
		calls, err := queryCalls(ctx, conn, WithDB(query(h, end, maxCallsPerHour+1), db))
		if err != nil {
			return fmt.Errorf("clickhouse calls of %s: %w", h.Format(time.RFC3339), err)
		}
		if len(calls) > maxCallsPerHour {
			return fmt.Errorf("clickhouse calls of %s: more than %d in one hour", h.Format(time.RFC3339), maxCallsPerHour)
		}
		if err := fn(calls); err != nil {
			return err
		}
	}
	return nil
}
