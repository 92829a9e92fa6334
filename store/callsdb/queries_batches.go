package callsdb

import (
	"context"
	"fmt"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// BatchSpec lists the batch jobs (calls with source batch, by batch_id) that
// have calls starting in [From, To), the latest-ending first, at most Limit.
type BatchSpec struct {
	From, To time.Time
	Limit    int
}

// BatchSummary is one batch job over the calls of the range: counts, tokens,
// cost, and its span from the first call's start to the last call's end.
type BatchSummary struct {
	BatchID      string    `json:"batch_id"` // "" for batch calls sent without an id
	Calls        uint64    `json:"calls"`
	Errors       uint64    `json:"errors"`
	InputTokens  int64     `json:"input_tokens"`
	OutputTokens int64     `json:"output_tokens"`
	TotalTokens  int64     `json:"total_tokens"`
	CostUSD      *float64  `json:"cost_usd,omitempty"` // nil when no call of the batch has a price
	FirstStart   time.Time `json:"first_start"`
	LastEnd      time.Time `json:"last_end"`
	DurationMS   int64     `json:"duration_ms"`
	Models       []string  `json:"models"`
}

// BatchesQuery is the batch list of s. Only calls whose newest copy is a
// batch call count; the inner IN keeps the collapse to the ids that have a
// batch copy, so online traffic in the range costs one column read.
func BatchesQuery(s BatchSpec) string {
	rng := timeRangeSQL("start_time", s.From.Unix(), s.To.Unix())
	return fmt.Sprintf(`SELECT c_batch, toUInt64(count()) AS calls, toUInt64(sum(c_error)) AS errors,
    toInt64(sum(c_in)) AS input_tokens, toInt64(sum(c_out)) AS output_tokens, toInt64(sum(c_total)) AS total_tokens,
    toFloat64(sum(c_cost)) AS cost, toUInt64(sum(c_has_cost)) AS priced,
    min(c_start_ms) AS first_start, max(c_end_ms) AS last_end, groupUniqArray(c_model) AS models
FROM
(
    SELECT
        id,
        argMax(source, version) AS c_source,
        argMax(batch_id, version) AS c_batch,
        argMax(model, version) AS c_model,
        argMax(toInt64(toUInt32(start_time)) * 1000 + start_ms, version) AS c_start_ms,
        argMax(toInt64(toUInt32(end_time)) * 1000 + end_ms, version) AS c_end_ms,
        argMax(toUInt8(`+isErrorSQL+`), version) AS c_error,
        argMax(greatest(input_tokens, 0), version) AS c_in,
        argMax(greatest(output_tokens, 0), version) AS c_out,
        argMax(greatest(total_tokens, 0), version) AS c_total,
        argMax(toUInt8(isNotNull(cost_usd)), version) AS c_has_cost,
        argMax(ifNull(cost_usd, 0.), version) AS c_cost
    FROM {db}.calls
    WHERE %[1]s
      AND id IN (SELECT id FROM {db}.calls WHERE %[1]s AND source = 'batch')
    GROUP BY id
)
WHERE c_source = 'batch'
GROUP BY c_batch
ORDER BY last_end DESC, c_batch
LIMIT %[2]d`, rng, s.Limit)
}

// Batches returns the batch list of s.
func Batches(ctx context.Context, conn driver.Conn, db string, s BatchSpec) ([]BatchSummary, error) {
	if s.Limit <= 0 {
		return nil, fmt.Errorf("clickhouse batches: limit must be positive, got %d", s.Limit)
	}
	out := []BatchSummary{}
	err := eachRow(ctx, conn, WithDB(BatchesQuery(s), db), func(rows driver.Rows) error {
		var b BatchSummary
		var cost float64
		var priced uint64
		var first, last int64
		if err := rows.Scan(&b.BatchID, &b.Calls, &b.Errors, &b.InputTokens, &b.OutputTokens, &b.TotalTokens,
			&cost, &priced, &first, &last, &b.Models); err != nil {
			return err
		}
		if priced > 0 {
			b.CostUSD = &cost
		}
		b.FirstStart, b.LastEnd = time.UnixMilli(first).UTC(), time.UnixMilli(last).UTC()
		b.DurationMS = max(last-first, 0)
		out = append(out, b)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("clickhouse batches: %w", err)
	}
	return out, nil
}
