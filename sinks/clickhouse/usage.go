package clickhouse

import (
	"context"
	"fmt"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// UsageRow is one group of the usage overview. Empty Model/UserID and a zero
// Bucket mean "not grouped by it".
type UsageRow struct {
	Bucket       time.Time // start of the hour or day (UTC)
	Model        string
	UserID       string
	Calls        uint64
	Errors       uint64 // status >= 400 or an error message
	InputTokens  int64
	OutputTokens int64
	TotalTokens  int64
	CostUSD      float64
	LatencyMS    Quantiles
	TTFTCalls    uint64    // calls with a time to first token
	TTFTMS       Quantiles // over TTFTCalls; zero when there are none
}

// Quantiles are exact p50/p95/p99 (ClickHouse quantileExact: the element at
// index floor(level*n) of the sorted values).
type Quantiles struct{ P50, P95, P99 float64 }

// Usage returns exact usage for calls that started in [from, to) (whole
// seconds, UTC), grouped as g says, ordered by bucket, model, user. Each call
// counts once however often it was delivered or inserted.
func Usage(ctx context.Context, conn driver.Conn, db string, from, to time.Time, g GroupBy) ([]UsageRow, error) {
	if !to.After(from) {
		return nil, fmt.Errorf("clickhouse usage: empty range [%s, %s)", from, to)
	}
	rows, err := conn.Query(ctx, WithDB(UsageQuery(from, to, g), db))
	if err != nil {
		return nil, fmt.Errorf("clickhouse usage %s: %w", g, err)
	}
	defer rows.Close()
	var out []UsageRow
	for rows.Next() {
		var r UsageRow
		var lat, ttft []float64
		if err := rows.Scan(&r.Bucket, &r.Model, &r.UserID, &r.Calls, &r.Errors, &r.InputTokens, &r.OutputTokens,
			&r.TotalTokens, &r.CostUSD, &lat, &r.TTFTCalls, &ttft); err != nil {
			return nil, fmt.Errorf("clickhouse usage %s: %w", g, err)
		}
		r.Bucket = r.Bucket.UTC()
		if g.Bucket == BucketNone {
			r.Bucket = time.Time{}
		}
		r.LatencyMS = quantiles(lat)
		if r.TTFTCalls > 0 {
			r.TTFTMS = quantiles(ttft)
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

func quantiles(v []float64) Quantiles {
	if len(v) != 3 {
		return Quantiles{}
	}
	return Quantiles{P50: v[0], P95: v[1], P99: v[2]}
}

// CallCounts returns the number of distinct call ids in {db}.calls and the
// number of stored rows (which exceeds it while redelivered copies are not
// merged yet).
func CallCounts(ctx context.Context, conn driver.Conn, db string) (distinct, rows uint64, err error) {
	if err = conn.QueryRow(ctx, WithDB(QueryCallsDistinct, db)).Scan(&distinct); err != nil {
		return 0, 0, fmt.Errorf("clickhouse count calls: %w", err)
	}
	if err = conn.QueryRow(ctx, WithDB(QueryCallsRows, db)).Scan(&rows); err != nil {
		return 0, 0, fmt.Errorf("clickhouse count rows: %w", err)
	}
	return distinct, rows, nil
}
