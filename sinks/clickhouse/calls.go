package clickhouse

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// CallSummary is one call of the call list (its newest stored copy).
type CallSummary struct {
	ID           string    `json:"id"`
	TraceID      string    `json:"trace_id"`
	SessionID    string    `json:"session_id,omitempty"`
	StartTime    time.Time `json:"start_time"`
	LatencyMS    int64     `json:"latency_ms"`
	TTFTMS       *int64    `json:"ttft_ms,omitempty"`
	Kind         string    `json:"kind"`
	Model        string    `json:"model"`
	Instance     string    `json:"instance,omitempty"`
	UserID       string    `json:"user_id"`
	Status       int       `json:"status"`
	IsError      bool      `json:"is_error"`
	Error        string    `json:"error,omitempty"`
	InputTokens  int64     `json:"input_tokens"`
	OutputTokens int64     `json:"output_tokens"`
	TotalTokens  int64     `json:"total_tokens"`
	CostUSD      *float64  `json:"cost_usd,omitempty"`
	Source       string    `json:"source"`
	BatchID      string    `json:"batch_id,omitempty"`
	Preview      string    `json:"input_preview,omitempty"` // first 240 bytes of the input text
}

// CallList returns one page of calls (newest first) and the cursor of the
// next page (nil on the last page).
func CallList(ctx context.Context, conn driver.Conn, db string, s CallListSpec) ([]CallSummary, *CallCursor, error) {
	if s.Limit <= 0 {
		return nil, nil, errors.New("clickhouse call list: limit must be positive")
	}
	rows, err := conn.Query(ctx, WithDB(CallListQuery(s), db))
	if err != nil {
		return nil, nil, fmt.Errorf("clickhouse call list: %w", err)
	}
	defer rows.Close()
	out := []CallSummary{}
	for rows.Next() {
		var c CallSummary
		var ts int64
		var status int32
		var hasTTFT, isErr, hasCost uint8
		var ttft int64
		var cost float64
		if err := rows.Scan(&c.ID, &c.TraceID, &c.SessionID, &ts, &c.LatencyMS, &hasTTFT, &ttft, &c.Kind, &c.Model, &c.Instance,
			&c.UserID, &status, &isErr, &c.Error, &c.InputTokens, &c.OutputTokens, &c.TotalTokens, &hasCost, &cost,
			&c.Source, &c.BatchID, &c.Preview); err != nil {
			return nil, nil, fmt.Errorf("clickhouse call list: %w", err)
		}
		c.StartTime = time.UnixMilli(ts).UTC()
		c.Status, c.IsError = int(status), isErr == 1
		if hasTTFT == 1 {
			c.TTFTMS = &ttft
		}
		if hasCost == 1 {
			c.CostUSD = &cost
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("clickhouse call list: %w", err)
	}
	var next *CallCursor
	if len(out) > s.Limit {
		out = out[:s.Limit]
		last := out[len(out)-1]
		next = &CallCursor{StartMS: last.StartTime.UnixMilli(), ID: last.ID}
	}
	return out, next, nil
}
