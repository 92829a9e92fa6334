package callsdb

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// The export side: SQL reading normalized calls back out of {db}.calls for
// `callpipe export`. Every statement here is listed by exportQueries, which
// readQueries includes, so the chDB check runs it on the modern engine.

// ExportFilter selects the calls of an export: start_time in [From, To)
// (whole seconds, UTC), and when set, one model and one user.
type ExportFilter struct {
	From, To time.Time
	Model    string
	User     string
}

// ExportColumns are the columns an export page reads, in ExportRow order.
var ExportColumns = []string{
	"id", "trace_id", "session_id",
	"start_time", "start_ms", "end_time", "end_ms", "first_token_time", "first_token_ms",
	"latency_ms", "ttft_ms",
	"endpoint", "kind", "model", "instance",
	"user_id", "user_source", "api_key_hash", "api_key_prefix",
	"stream", "status", "error", "finish_reason",
	"input_text", "output_text", "input", "output", "model_parameters",
	"input_tokens", "output_tokens", "total_tokens", "usage_source", "cost_usd",
	"metadata", "tags", "source", "batch_id",
	"truncated", "version",
	"capture_mode", "capture_mask_set",
}

// ExportRow is one deduplicated row of {db}.calls as ClickHouse returns it.
type ExportRow struct {
	ID, TraceID, SessionID                       string
	StartTime                                    time.Time
	StartMS                                      uint16
	EndTime                                      time.Time
	EndMS                                        uint16
	FirstTokenTime                               *time.Time
	FirstTokenMS                                 *uint16
	LatencyMS                                    int64
	TTFTMS                                       *int64
	Endpoint, Kind, Model, Instance              string
	UserID, UserSource, APIKeyHash, APIKeyPrefix string
	Stream                                       uint8
	Status                                       int32
	Error, FinishReason                          string
	InputText, OutputText, Input, Output         string
	ModelParameters                              string
	InputTokens, OutputTokens, TotalTokens       int64
	UsageSource                                  string
	CostUSD                                      *float64
	Metadata                                     string
	Tags                                         []string
	Source, BatchID                              string
	Truncated                                    uint8
	Version                                      uint64
	CaptureMode, CaptureMaskSet                  string
}

func (r *ExportRow) dest() []any {
	return []any{
		&r.ID, &r.TraceID, &r.SessionID,
		&r.StartTime, &r.StartMS, &r.EndTime, &r.EndMS, &r.FirstTokenTime, &r.FirstTokenMS,
		&r.LatencyMS, &r.TTFTMS,
		&r.Endpoint, &r.Kind, &r.Model, &r.Instance,
		&r.UserID, &r.UserSource, &r.APIKeyHash, &r.APIKeyPrefix,
		&r.Stream, &r.Status, &r.Error, &r.FinishReason,
		&r.InputText, &r.OutputText, &r.Input, &r.Output, &r.ModelParameters,
		&r.InputTokens, &r.OutputTokens, &r.TotalTokens, &r.UsageSource, &r.CostUSD,
		&r.Metadata, &r.Tags, &r.Source, &r.BatchID,
		&r.Truncated, &r.Version,
		&r.CaptureMode, &r.CaptureMaskSet,
	}
}

func (f ExportFilter) where(from, to time.Time) string {
	w := fmt.Sprintf("start_time >= toDateTime(%d, 'UTC') AND start_time < toDateTime(%d, 'UTC')", from.Unix(), to.Unix())
	if f.Model != "" {
		w += " AND model = " + SQLString(f.Model)
	}
	if f.User != "" {
		w += " AND user_id = " + SQLString(f.User)
	}
	return w
}

// ExportHoursQuery lists the hours of the range that hold calls, with their
// stored row count (copies not yet merged included: an upper bound, used for
// progress and to skip empty hours).
func ExportHoursQuery(f ExportFilter) string {
	return `SELECT toStartOfHour(start_time) AS hour, toUInt64(count()) AS stored
FROM {db}.calls
WHERE ` + f.where(f.From, f.To) + `
GROUP BY hour
ORDER BY hour`
}

// ExportCursor is an export position: the hour of a call's start and its
// id. Exports run in (hour, id) order, the table's sort key.
type ExportCursor struct {
	Hour time.Time
	ID   string
}

// ExportPageQuery reads up to limit calls of the window [from, to) after the
// cursor (nil: from the window's start), in (hour, id) order. Windows are
// whole hours (clipped to the range) so that they match the leading sort
// key toStartOfHour(start_time). FINAL collapses the copies of a call
// (redelivery, replay) to the one with the highest version, as the
// ReplacingMergeTree eventually does; the filter columns never differ between
// copies of a call, so filtering before or after the collapse is the same.
func ExportPageQuery(f ExportFilter, from, to time.Time, after *ExportCursor, limit int) string {
	w := f.where(from, to)
	if after != nil {
		h := after.Hour.Unix()
		w += fmt.Sprintf(" AND (toStartOfHour(start_time) > toDateTime(%d, 'UTC') OR (toStartOfHour(start_time) = toDateTime(%d, 'UTC') AND id > %s))",
			h, h, SQLString(after.ID))
	}
	return fmt.Sprintf(`SELECT %s
FROM {db}.calls FINAL
WHERE %s
ORDER BY toStartOfHour(start_time), id
LIMIT %d`, strings.Join(ExportColumns, ", "), w, limit)
}

// ExportQuery is the whole export as one statement (recorded in the export
// manifest): the pages of ExportPageQuery, window after window, return
// exactly its rows in its order.
func ExportQuery(f ExportFilter) string {
	return fmt.Sprintf(`SELECT %s
FROM {db}.calls FINAL
WHERE %s
ORDER BY toStartOfHour(start_time), id`, strings.Join(ExportColumns, ", "), f.where(f.From, f.To))
}

// exportQueries is every export statement with sample arguments, for readQueries.
func exportQueries(sampleFrom, sampleTo time.Time) []string {
	f := ExportFilter{From: sampleFrom, To: sampleTo, Model: "model-1", User: `us'er\1`}
	return []string{
		ExportHoursQuery(ExportFilter{From: sampleFrom, To: sampleTo}),
		ExportHoursQuery(f),
		ExportPageQuery(f, sampleFrom, sampleFrom.Add(time.Hour), nil, 1000),
		ExportPageQuery(ExportFilter{From: sampleFrom, To: sampleTo}, sampleFrom, sampleTo,
			&ExportCursor{Hour: sampleFrom.Truncate(time.Hour), ID: "chdb-0000100"}, 1000),
		ExportQuery(f),
	}
}

// ExportHour is one hour of the range that holds calls.
type ExportHour struct {
	Hour   time.Time
	Stored uint64 // stored rows, copies included
}

// ExportHours runs ExportHoursQuery.
func ExportHours(ctx context.Context, conn driver.Conn, db string, f ExportFilter) ([]ExportHour, error) {
	rows, err := conn.Query(ctx, WithDB(ExportHoursQuery(f), db))
	if err != nil {
		return nil, fmt.Errorf("clickhouse export hours: %w", err)
	}
	defer rows.Close()
	var out []ExportHour
	for rows.Next() {
		var h ExportHour
		if err := rows.Scan(&h.Hour, &h.Stored); err != nil {
			return nil, fmt.Errorf("clickhouse export hours: %w", err)
		}
		h.Hour = h.Hour.UTC()
		out = append(out, h)
	}
	return out, rows.Err()
}

// ExportPage runs ExportPageQuery and appends the rows to buf[:0].
func ExportPage(ctx context.Context, conn driver.Conn, db string, f ExportFilter, from, to time.Time, after *ExportCursor, limit int, buf []ExportRow) ([]ExportRow, error) {
	rows, err := conn.Query(ctx, WithDB(ExportPageQuery(f, from, to, after, limit), db))
	if err != nil {
		return nil, fmt.Errorf("clickhouse export page [%s, %s) after %v: %w", from.Format(time.RFC3339), to.Format(time.RFC3339), after, err)
	}
	defer rows.Close()
	out := buf[:0]
	for rows.Next() {
		var r ExportRow
		if err := rows.Scan(r.dest()...); err != nil {
			return nil, fmt.Errorf("clickhouse export page: %w", err)
		}
		r.StartTime, r.EndTime = r.StartTime.UTC(), r.EndTime.UTC()
		if r.FirstTokenTime != nil {
			t := r.FirstTokenTime.UTC()
			r.FirstTokenTime = &t
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("clickhouse export page: %w", err)
	}
	return out, nil
}
