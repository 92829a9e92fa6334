package clickhouse

import (
	"context"
	"fmt"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/callpipe/callpipe/schema"
)

// maxUnresolvedPerHour bounds the calls UnresolvedCalls reads for one hour.
const maxUnresolvedPerHour = 200_000

// UnresolvedQuery is the newest copy of every call that started in
// [from, to) whose newest copy has user_source unresolved (its API key could
// not be looked up), earliest first, at most limit.
func UnresolvedQuery(from, to time.Time, limit int) string {
	rng := timeRangeSQL("start_time", from.Unix(), to.Unix())
	return fmt.Sprintf(`SELECT %[1]s
FROM
(
    SELECT %[1]s, version
    FROM {db}.calls
    WHERE %[2]s
      AND id IN (SELECT id FROM {db}.calls WHERE %[2]s AND user_source = %[3]s)
    ORDER BY version DESC
    LIMIT 1 BY id
)
WHERE user_source = %[3]s
ORDER BY start_time, start_ms, id
LIMIT %[4]d`, callDetailColumns, rng, SQLString(schema.UserUnresolved), limit)
}

// UnresolvedCalls returns the calls of [from, to) whose user is still
// unresolved, hour by hour (earliest first) to keep each read small.
func UnresolvedCalls(ctx context.Context, conn driver.Conn, db string, from, to time.Time) ([]StoredCall, error) {
	var out []StoredCall
	for h := from; h.Before(to); h = h.Truncate(time.Hour).Add(time.Hour) {
		end := h.Truncate(time.Hour).Add(time.Hour)
		if end.After(to) {
			end = to
		}
		calls, err := queryCalls(ctx, conn, WithDB(UnresolvedQuery(h, end, maxUnresolvedPerHour+1), db))
		if err != nil {
			return nil, fmt.Errorf("clickhouse unresolved calls %s: %w", h.Format(time.RFC3339), err)
		}
		if len(calls) > maxUnresolvedPerHour {
			return nil, fmt.Errorf("clickhouse unresolved calls %s: more than %d in one hour", h.Format(time.RFC3339), maxUnresolvedPerHour)
		}
		out = append(out, calls...)
	}
	return out, nil
}
