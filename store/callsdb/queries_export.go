package callsdb

import (
	"context"
	"fmt"
	"slices"
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

// ExportColumns are the columns an export page reads, in ExportRow order:
// the stored columns but inserted_at (a copy's arrival, not the call's).
var ExportColumns = slices.DeleteFunc(slices.Clone(CallColumns), func(c string) bool { return c == "inserted_at" })

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
	var out []ExportHour
	err := eachRow(ctx, conn, WithDB(ExportHoursQuery(f), db), func(rows driver.Rows) error {
		var h ExportHour
		if err := rows.Scan(&h.Hour, &h.Stored); err != nil {
			return err
		}
		h.Hour = h.Hour.UTC()
		out = append(out, h)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("clickhouse export hours: %w", err)
	}
	return out, nil
}

// ExportPage runs ExportPageQuery and appends the rows to buf[:0].
func ExportPage(ctx context.Context, conn driver.Conn, db string, f ExportFilter, from, to time.Time, after *ExportCursor, limit int, buf []ExportRow) ([]ExportRow, error) {
	out := buf[:0]
	err := eachRow(ctx, conn, WithDB(ExportPageQuery(f, from, to, after, limit), db), func(rows driver.Rows) error {
		var r ExportRow
		if err := rows.Scan(r.dest()...); err != nil {
			return err
		}
		r.StartTime, r.EndTime = r.StartTime.UTC(), r.EndTime.UTC()
		if r.FirstTokenTime != nil {
			t := r.FirstTokenTime.UTC()
			r.FirstTokenTime = &t
		}
		out = append(out, r)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("clickhouse export page [%s, %s) after %v: %w", from.Format(time.RFC3339), to.Format(time.RFC3339), after, err)
	}
	return out, nil
}
